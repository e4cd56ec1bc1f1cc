"""Choose a sampling recipe's defaults on the dev half of the bundled IFEval prompts, and report
the chosen one on the test half: one invocation, one record.

    .venv/bin/python benchmarks/tune_on_policy.py                     # on-policy: the variants below, then the best on test
    .venv/bin/python benchmarks/tune_on_policy.py --variant lr1e-5=learning_rate=1e-5 --variant default=
    .venv/bin/python benchmarks/tune_on_policy.py --recipe rl         # the RL recipe's defaults, on dev and test
    .venv/bin/python benchmarks/tune_on_policy.py --recipe rl --jobs 2 --variant a=learning_rate=5e-5 --variant b=...

Each variant is the recipe's quickstart (`--recipe on_policy`: `python -m
cookbook.recipes.preference.on_policy`; `--recipe rl`: `python -m cookbook.recipes.rl.train`), its
defaults plus the variant's options, run in its own process at `--threads` torch threads, its CPU
seconds and peak RSS its own (`os.wait4`, via `quickstarts.run_one`), so `--jobs N` may train N at
once. Its final checkpoint is then scored beside the starting model by `run_inspect_evals
compare_model_path=... ifeval_split=dev` (greedy; the paired-bootstrap 95% interval of the gain in
prompt-level strict accuracy). The variant with the highest dev gain is evaluated once more, on the
test half, which no choice saw; that is the figure to quote. Ties on dev keep the earlier variant
(the defaults come first).

The record goes to benchmarks/results/tune_<recipe>.json (`--json-out`); a run or eval that fails
fails the invocation (exit 1, after writing what it has).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstarts import run_one  # noqa: E402
from run_record import REPO, RESULTS_DIR, finish_record, start_record  # noqa: E402

PYTHON = sys.executable
HEADLINE = "prompt_level_strict"
# recipe -> variant name -> options beyond the recipe's defaults; the defaults come first so that a
# tie keeps them.
VARIANTS = {
    "on_policy": {"default": [], "lr1e-5": ["learning_rate=1e-5"], "reference_initial": ["reference=initial"]},
    "rl": {"default": []},
}


def evaluate(out: Path, label: str, model: str, split: str, threads: int, max_tokens: int) -> dict:
    """`model` beside the starting model on one half of the bundled IFEval prompts."""
    log_dir = out / f"eval-{label}-{split}"
    command = [PYTHON, "-m", "cookbook.eval.run_inspect_evals", f"model_path={model}",
               "compare_model_path=smollm2-135m-instruct", "tasks=cookbook/ifeval", "ifeval_source=bundled",
               f"ifeval_split={split}", f"max_tokens={max_tokens}", "batch_size=32", f"num_threads={threads}",
               f"log_dir={log_dir}", "display=plain"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    summary = log_dir / "summary.json"
    row = {"command": "python " + " ".join(command[1:]), "split": split}
    if done.returncode != 0 or not summary.exists():
        return {**row, "failed": (done.stderr or done.stdout)[-2000:]}
    written = json.loads(summary.read_text())
    paired = next(c for c in written["comparison"] if c["metric"] == HEADLINE)
    return {**row, "comparison": written["comparison"], "gain": paired["difference"],
            "ci_low": paired["ci_low"], "ci_high": paired["ci_high"], "samples": paired["samples"],
            "trained": paired["trained"], "start": paired["base"]}


def parse_variants(specs: list[str]) -> dict[str, list[str]]:
    """`name=opt,opt` (or `name=` for the defaults) -> {name: [opt, ...]}."""
    variants = {}
    for spec in specs:
        name, _, options = spec.partition("=")
        if not name:
            raise SystemExit(f"--variant {spec!r}: give NAME=OPTION,OPTION (NAME= for the defaults)")
        variants[name] = [option for option in options.split(",") if option]
    return variants


def format_table(rows: list[dict]) -> str:
    lines = ["| variant | options | sampler | CPU-s (training) | CPU-s per round | sampling s (tok/s) "
             "| peak RSS GiB | dev gain, prompt strict [95% interval] | test gain |",
             "|---|---|---|---:|---:|---:|---:|---|---|"]

    def interval(scored: dict | None, missing: str) -> str:
        if not scored:
            return missing
        if "gain" not in scored:
            return "failed"
        return f"{scored['gain']:+.3f} [{scored['ci_low']:+.3f}, {scored['ci_high']:+.3f}]"

    for row in rows:
        gain, test = interval(row.get("dev"), "failed"), interval(row.get("test"), "not scored")
        sampling = row.get("sampling") or {}
        per_round = f"{row['cpu_s'] / sampling['rounds']:,.0f}" if sampling else "n/a"
        sampled = (f"{sampling['seconds']:,.0f} ({sampling['tokens_per_second']:.0f})"
                   if sampling.get("tokens_per_second") else "n/a")
        lines.append(f"| {row['variant']} | {' '.join(row['options']) or '(defaults)'} | {sampling.get('sampler') or '?'} "
                     f"| {row['cpu_s']:,.0f} | {per_round} | {sampled} | {row['peak_rss_gib']:.1f} | {gain} | {test} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(VARIANTS), default="on_policy")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OPTIONS",
                        help="a variant to try (repeatable; replaces the built-in list)")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/tune-<recipe>")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1,
                        help="variants trained at once, each in its own process at --threads threads")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per training run")
    parser.add_argument("--eval-max-tokens", type=int, default=512)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="one more option for every variant (e.g. max_steps=1 for a smoke run)")
    parser.add_argument("--json-out", type=Path, default=None, help="default: benchmarks/results/tune_<recipe>.json")
    parser.add_argument("--test-every-variant", action="store_true",
                        help="also score every variant on the test half (for variants that are not a choice, "
                             "e.g. the same defaults with another sampler); the chosen one is still picked on dev")
    args = parser.parse_args(argv)
    args.out = args.out or REPO / "runs" / f"tune-{args.recipe}"
    args.json_out = args.json_out or RESULTS_DIR / f"tune_{args.recipe}.json"
    variants = parse_variants(args.variant) if args.variant else VARIANTS[args.recipe]
    record = {**start_record(__file__, sys.argv[1:] if argv is None else argv), "recipe": args.recipe,
              "threads": args.threads, "variants": variants, "rows": []}

    def train_and_score(name: str, options: list[str]) -> dict:
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        row = {"variant": name, "options": options,
               **run_one(args.recipe, out, args.threads, args.timeout, [*options, *args.option])}
        if row["returncode"] == 0 and row["final"]:
            row["dev"] = evaluate(out, name, row["final"], "dev", args.threads, args.eval_max_tokens)
        dev = row.get("dev", {})
        print(f"{name}: exit {row['returncode']}, {row['cpu_s']:.0f} CPU-s, dev gain "
              f"{dev.get('gain', float('nan')):+.4f} [{dev.get('ci_low', float('nan')):+.4f}, "
              f"{dev.get('ci_high', float('nan')):+.4f}]", flush=True)
        return row

    # Each variant's CPU seconds are its own process's, so variants may share the machine (--jobs).
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        record["rows"] = list(pool.map(train_and_score, variants, variants.values()))
    failed = [row["variant"] for row in record["rows"] if row["returncode"] != 0 or "gain" not in row.get("dev", {})]
    scored = [row for row in record["rows"] if "gain" in row.get("dev", {})]
    if scored:
        best = max(scored, key=lambda row: row["dev"]["gain"])  # max keeps the first of equal gains
        record["chosen"] = best["variant"]
        best["test"] = evaluate(args.out / best["variant"], best["variant"], best["final"], "test",
                                args.threads, args.eval_max_tokens)
        if "gain" not in best["test"]:
            failed.append(f"{best['variant']} (test eval)")
        else:
            test = best["test"]
            record["chosen_on_test"] = (f"{best['variant']}: prompt-level strict {test['gain']:+.3f} "
                                        f"[{test['ci_low']:+.3f}, {test['ci_high']:+.3f}] on {test['samples']} test prompts")
    for row in record["rows"] if args.test_every_variant else []:
        if row["final"] and "test" not in row:
            row["test"] = evaluate(args.out / row["variant"], row["variant"], row["final"], "test",
                                   args.threads, args.eval_max_tokens)
    record["table"] = format_table(record["rows"])
    print(record["table"])
    if "chosen_on_test" in record:
        print(f"chosen on dev, scored on test: {record['chosen_on_test']}")
    print(f"record: {finish_record(record, args.json_out)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
