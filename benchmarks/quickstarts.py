"""The recipes' quickstarts as a user runs them: what each costs and what it reaches, in one record.

    .venv/bin/python benchmarks/quickstarts.py                       # DPO, SFT, DPO after SFT, and the comparison
    .venv/bin/python benchmarks/quickstarts.py --runs dpo,sft,dpo_after_sft,on_policy
    .venv/bin/python benchmarks/quickstarts.py --runs kto --json-out benchmarks/results/quickstart_kto.json

Each quickstart runs its recipe's README command (defaults, `display=plain`) in its own process at
`--threads` torch threads (default 1), so its CPU-seconds and peak RSS (`os.wait4`) are its own:
model load, data, reference, steps, evals and checkpoints included. From its `metrics.jsonl` the
record keeps the held-out metrics at step 0 and at the end and the last step's training metrics.
`run_inspect_evals` then scores on the held-out preference pairs (the test half of the
`cookbook/preference` task) DPO after SFT beside DPO from the base model (with both DPO runs), and
the KTO checkpoint beside the starting model (with `kto`): both scores and the paired-bootstrap 95%
interval of the difference (`COMPARISONS`).

The record goes to benchmarks/results/quickstarts.json (`--json-out`); any run that fails fails
the invocation (exit 1, after writing what it has).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_record import REPO, RESULTS_DIR, finish_record, start_record  # noqa: E402

PYTHON = sys.executable
# name -> (module, options beyond log_path); `{out}` is the --out folder.
RUNS = {
    "dpo": ("cookbook.recipes.preference.train", []),
    "sft": ("cookbook.recipes.sft.train", []),
    "dpo_after_sft": ("cookbook.recipes.preference.train", ["model_name={out}/sft/final"]),
    "on_policy": ("cookbook.recipes.preference.on_policy", []),
    "kto": ("cookbook.recipes.preference.kto", []),
    "reward_model": ("cookbook.recipes.reward_model.train", []),
    "rl": ("cookbook.recipes.rl.train", []),
}


def run_one(name: str, out: Path, threads: int, timeout: float, extra_options: list[str]) -> dict:
    module, extra = RUNS[name]
    log_path = out / name
    options = [f"log_path={log_path}", "behavior_if_log_dir_exists=delete", "display=plain",
               *(option.format(out=out) for option in extra), *extra_options]
    command = [PYTHON, "-m", module, *options]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                child.kill()
                pid, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.5)
    returncode = os.waitstatus_to_exitcode(status)
    row = {"name": name, "command": " ".join(["python", "-m", module, *options]), "returncode": returncode,
           "wall_s": time.perf_counter() - started, "cpu_s": usage.ru_utime + usage.ru_stime,
           "peak_rss_gib": usage.ru_maxrss / 2**20, "log": str(out / f"{name}.log")}
    metrics_file = log_path / "metrics.jsonl"
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()] \
        if metrics_file.exists() else []
    evals = [r for r in records if any(k.startswith("test/") for k in r)]
    steps = [r for r in records if not any(k.startswith(("test/", "data/", "ifeval/")) for k in r) and "step" in r
             and r.get("step", 0) > 0]
    row["held_out_start"] = _test_metrics(evals[0]) if evals else None
    row["held_out_end"] = _test_metrics(evals[-1]) if evals else None
    row["last_step"] = steps[-1] if steps else None
    row["steps"] = steps[-1]["step"] if steps else 0
    row["final"] = str(log_path / "final") if (log_path / "final").exists() else None
    row["sampling"] = _sampling_summary(records, out / f"{name}.log")
    return row


def _sampling_summary(records: list[dict], log: Path) -> dict | None:
    """A sampling recipe's rounds: which sampler, the seconds its rounds spent sampling and their
    generated tokens per second (wall, as the recipe logs them); None for a recipe that samples none."""
    rounds = [r for r in records if "samples/seconds" in r]
    if not rounds:
        return None
    seconds = sum(r["samples/seconds"] for r in rounds)
    tokens = sum(r["samples/seconds"] * r["samples/tokens_per_second"] for r in rounds)
    sampler = next((line.split("Sampler: ", 1)[1].split(" ", 1)[0] for line in log.read_text().splitlines()
                    if line.startswith("Sampler: ")), None) if log.exists() else None
    return {"sampler": sampler, "rounds": len(rounds), "seconds": seconds, "generated_tokens": round(tokens),
            "tokens_per_second": tokens / seconds if seconds else None,
            "weight_sync_seconds": sum(r.get("samples/weight_sync_seconds", 0.0) for r in rounds)}


def _test_metrics(record: dict) -> dict:
    return {k: v for k, v in record.items() if k.startswith("test/") or k == "step"}


# record key -> (the run evaluated, what it is compared with: another run, or the starting model)
COMPARISONS = {
    "dpo_after_sft_vs_dpo": ("dpo_after_sft", "dpo", "DPO after SFT - DPO from the base"),
    "kto_vs_start": ("kto", None, "KTO - the starting model"),
}
START_MODEL = "smollm2-135m-instruct"


def compare(out: Path, model: str, base: str, threads: int, label: str) -> dict:
    """run_inspect_evals: `model` beside `base` on the held-out preference pairs."""
    log_dir = out / f"eval-{label}"
    command = [PYTHON, "-m", "cookbook.eval.run_inspect_evals", f"model_path={model}", f"compare_model_path={base}",
               "tasks=cookbook/preference", f"log_dir={log_dir}", f"num_threads={threads}", "display=plain"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"})
    summary = log_dir / "summary.json"
    if done.returncode != 0 or not summary.exists():
        return {"command": " ".join(command[1:]), "failed": (done.stderr or done.stdout)[-2000:]}
    written = json.loads(summary.read_text())
    return {"command": "python " + " ".join(command[1:]), "comparison": written["comparison"],
            "results": written["results"]}


def format_table(rows: list[dict]) -> str:
    lines = ["| quickstart | steps | CPU-s | wall s | peak RSS GiB | held-out at step 0 | at the end |",
             "|---|---:|---:|---:|---:|---|---|"]
    for row in rows:
        start, end = row["held_out_start"] or {}, row["held_out_end"] or {}
        keys = [k for k in ("test/accuracy", "test/dpo_loss", "test/margin", "test/nll", "test/loss",
                            "test/reward_margin") if k in end]
        lines.append(f"| {row['name']} | {row['steps']} | {row['cpu_s']:,.0f} | {row['wall_s']:,.0f} | "
                     f"{row['peak_rss_gib']:.2f} | " + ", ".join(f"{k} {start.get(k, float('nan')):.3f}" for k in keys)
                     + " | " + ", ".join(f"{k} {end[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="dpo,sft,dpo_after_sft", help=f"comma list of {', '.join(RUNS)}")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "quickstarts")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per run")
    parser.add_argument("--json-out", type=Path, default=RESULTS_DIR / "quickstarts.json")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="one more option for every run (repeatable; e.g. max_steps=2 for a smoke run)")
    args = parser.parse_args(argv)
    names = args.runs.split(",")
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"--runs: unknown {', '.join(unknown)} (known: {', '.join(RUNS)})")
    if "dpo_after_sft" in names and "sft" not in names:
        parser.error("--runs: dpo_after_sft starts from the sft run's final checkpoint; add sft before it")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {**start_record(__file__, sys.argv[1:] if argv is None else argv), "threads": args.threads, "rows": []}
    for name in names:
        row = run_one(name, args.out, args.threads, args.timeout, args.option)
        record["rows"].append(row)
        print(f"{name}: exit {row['returncode']}, {row['cpu_s']:.0f} CPU-s, {row['wall_s']:.0f} s", flush=True)
    finals = {row["name"]: row["final"] for row in record["rows"]}
    for key, (run, against, _) in COMPARISONS.items():
        base = finals.get(against) if against else START_MODEL
        if finals.get(run) and base:
            record[key] = compare(args.out, finals[run], base, args.threads, key)
    record["table"] = format_table(record["rows"])
    print(record["table"])
    for key, (_, _, what) in COMPARISONS.items():
        for entry in record.get(key, {}).get("comparison", []):
            print(f"- {what}, {entry['metric']}: {entry['difference']:+.4f} "
                  f"[{entry['ci_low']:+.4f}, {entry['ci_high']:+.4f}] ({entry['samples']} pairs)")
    print(f"record: {finish_record(record, args.json_out)}")
    failed = [row["name"] for row in record["rows"] if row["returncode"] != 0]
    if failed or any("failed" in record.get(key, {}) for key in COMPARISONS):
        print(f"failed: {', '.join(failed) or 'the comparison'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
