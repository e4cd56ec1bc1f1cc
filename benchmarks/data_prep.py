"""Preparing a real-size preference file for training: time and peak memory, ours against TRL.

    python benchmarks/data_prep.py --sizes 5000,50000,160000                     # ours only (.venv)
    benchmarks/.venv-bench/bin/python benchmarks/data_prep.py --vs-trl --sizes 5000,50000,160000

For each size it writes a synthetic JSONL file of pairs made of real words (each a whole word of the
SmolLM2 vocabulary, drawn with Zipf frequencies by token id, since BPE ids follow frequency and a
tokenizer's speed depends on how often words repeat; prompt ~128 tokens, replies ~192 each, as a
hh-rlhf-sized pair) in the
conversational prompt/chosen/rejected schema that both our file builder and TRL read as they are.
Then, each in its own subprocess (so its peak RSS is its own): ours cold (an empty tokenized-data
cache) and warm (the same again), and with --vs-trl TRL 1.16's `DPOTrainer` cold (an empty
`datasets` cache) and warm, with `dataset_num_proc=2`. A child loads the bundled model and
tokenizer and prepares the data until the trainer could take its first step: ours
`load_preference_data`, TRL's `DPOTrainer(...)` construction, which tokenizes the dataset. It
reports wall and CPU seconds and the peak RSS of itself and of its worker processes.

Any child that fails fails the run (exit 1, after writing the result). The raw result, with the
command, versions and machine, goes to --out (default benchmarks/results/data_prep.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from run_record import RESULTS_DIR, finish_record, run_child, start_record  # noqa: E402

PROMPT_TOKENS, REPLY_TOKENS = 128, 192


def word_vocabulary(tokenizer) -> list[str]:
    """Vocabulary entries that are one lowercase word with a leading space (one token each), most
    frequent (lowest id) first."""
    entries = sorted((token_id, token) for token, token_id in tokenizer.get_vocab().items()
                     if token.startswith("Ġ") and token[1:].isalpha() and token[1:].islower())
    return [token.replace("Ġ", " ") for _, token in entries]


def write_pairs(path: Path, count: int, seed: int = 0) -> None:
    from cookbook.models import load_tokenizer

    words = word_vocabulary(load_tokenizer())
    weights = list(itertools.accumulate(1 / (rank + 10) for rank in range(len(words))))
    rng = random.Random(seed)

    def text(n: int) -> str:
        return "".join(rng.choices(words, cum_weights=weights, k=n)).strip()

    with path.open("w", encoding="utf-8") as handle:
        for _ in range(count):
            row = {"prompt": [{"role": "user", "content": text(rng.randint(PROMPT_TOKENS // 2, PROMPT_TOKENS * 3 // 2))}],
                   "chosen": [{"role": "assistant", "content": text(rng.randint(REPLY_TOKENS // 2, REPLY_TOKENS * 3 // 2))}],
                   "rejected": [{"role": "assistant", "content": text(rng.randint(REPLY_TOKENS // 2, REPLY_TOKENS * 3 // 2))}]}
            handle.write(json.dumps(row) + "\n")


# -- the children ---------------------------------------------------------------------------------------


def child_ours(path: str, max_length: int) -> dict:
    from cookbook.datasets.load import load_preference_data
    from cookbook.datasets.preference import FileBuilder
    from cookbook.models import load_model_and_tokenizer
    from cookbook.renderers import default_renderer_name, get_renderer

    _, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct", dtype="float32", device="cpu")
    renderer = get_renderer(default_renderer_name(tokenizer), tokenizer)
    data = load_preference_data(FileBuilder(path=path, test_size=200), renderer, max_length, verbose=False)
    first = data.train[0]
    return {"train_pairs": len(data.train), "test_pairs": len(data.test), "cache": data.cache_note.split(",")[0],
            "first_pair_tokens": len(first.chosen) + len(first.rejected)}


def child_ours_first_step(path: str, max_length: int, test_size: int) -> dict:
    """The DPO recipe's command on the file, as a user runs it, until its first optimizer step is
    logged: data, model, reference (`precompute_reference=auto`), the start's held-out eval, step 1."""
    import threading

    from cookbook.recipes.preference.train import cli

    log_path = Path(tempfile.mkdtemp(prefix="first-step-"))
    metrics = log_path / "metrics.jsonl"
    started, cpu_started = time.perf_counter(), time.process_time()

    def watch() -> None:
        while True:
            time.sleep(0.2)
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            if any(json.loads(line).get("step") == 1 and "dpo_loss" in line for line in lines if line.strip()):
                break
        result = {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu_started,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "workers_peak_rss_gib": 0.0}
        print("RESULT " + json.dumps(result), flush=True)
        os._exit(0)  # the measurement is taken; the rest of the run is not part of it

    threading.Thread(target=watch, daemon=True).start()
    cli([f"log_path={log_path}", f"dataset={path}", f"dataset.test_size={test_size}", f"max_length={max_length}",
         "behavior_if_log_dir_exists=delete", "show_example=false"])
    raise SystemExit("the run ended before its first step was logged")


def child_trl(path: str, max_length: int, first_step: bool = False, test_size: int = 0) -> dict:
    import datasets
    from trl import DPOConfig, DPOTrainer

    from cookbook.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct", dtype="float32", device="cpu")
    train = datasets.load_dataset("json", data_files=path, split="train")
    # Its first step as its users run it: its best CPU precision (bf16=True), our recipe's batch
    # (16 pairs in micro-batches of 8), its default in-step reference, no eval before training.
    step = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "bf16": True} if first_step else {
        "per_device_train_batch_size": 1}
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, max_length=max_length, dataset_num_proc=2, precompute_ref_log_probs=False,
                         report_to=[], max_steps=1, save_strategy="no", use_cpu=True, **step)
        trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
        first = trainer.train_dataset[0]
        if first_step:
            trainer.train()
    return {"train_pairs": len(trainer.train_dataset),
            "first_pair_tokens": 2 * len(first["prompt_ids"]) + len(first["chosen_ids"]) + len(first["rejected_ids"])}


def measure(impl: str, path: Path, max_length: int, cache: Path, timeout: float, first_step: bool = False,
            test_size: int = 200) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "COOKBOOK_DATA_CACHE": str(cache / "cookbook"), "HF_DATASETS_CACHE": str(cache / "datasets"),
           "PYTHONPATH": str(REPO)}
    env.pop("TOKENIZERS_PARALLELISM", None)  # each side as its users run it, the tokenizer's own threads on
    command = [sys.executable, __file__, "--child", impl, "--file", str(path), "--max-length", str(max_length),
               "--test-size", str(test_size), *(["--first-step"] if first_step else [])]
    started = time.perf_counter()
    result = run_child(command, timeout, env)
    if isinstance(result, str):
        return {"impl": impl, "ok": False, "error": result}
    return {"impl": impl, "ok": True, "outer_wall_s": time.perf_counter() - started, **result}


def child_main(impl: str, path: str, max_length: int, first_step: bool, test_size: int) -> None:
    if impl == "ours" and first_step:
        child_ours_first_step(path, max_length, test_size)  # prints its own result and exits
    started, cpu_started = time.perf_counter(), time.process_time()
    result = child_ours(path, max_length) if impl == "ours" else child_trl(path, max_length, first_step)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update({"wall_s": time.perf_counter() - started,
                   "cpu_s": time.process_time() - cpu_started + children.ru_utime + children.ru_stime,
                   "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                   "workers_peak_rss_gib": children.ru_maxrss / 2**20})
    print("RESULT " + json.dumps(result))


# -- the run ---------------------------------------------------------------------------------------------


def format_table(rows: list[dict]) -> str:
    lines = ["| pairs | impl | cache | wall s | CPU s | CPU ms/pair | peak RSS GiB | workers' peak RSS GiB |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        if not row["ok"]:
            lines.append(f"| {row['pairs']:,} | {row['impl']} | {row['state']} | failed: {row['error'][:80]} | | | | |")
            continue
        lines.append(f"| {row['pairs']:,} | {row['impl']} | {row['state']} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | "
                     f"{1000 * row['cpu_s'] / row['pairs']:.2f} | {row['peak_rss_gib']:.2f} | "
                     f"{row['workers_peak_rss_gib']:.2f} |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[str]:
    """TRL / ours wall time at each size and cache state (higher: ours faster)."""
    lines = []
    for size in sorted({row["pairs"] for row in rows}):
        for state in ("cold", "warm"):
            pair = {row["impl"]: row for row in rows if row["pairs"] == size and row["state"] == state}
            if "ours" in pair and "trl" in pair and pair["ours"]["ok"] and pair["trl"]["ok"]:
                lines.append(f"- TRL / ours, {size:,} pairs, {state}: wall x{pair['trl']['wall_s'] / pair['ours']['wall_s']:.2f}, "
                             f"peak RSS ours {pair['ours']['peak_rss_gib']:.2f} GiB vs TRL "
                             f"{pair['trl']['peak_rss_gib'] + pair['trl']['workers_peak_rss_gib']:.2f} GiB (with workers)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,50000,160000", help="comma list of pair counts")
    parser.add_argument("--vs-trl", action="store_true", help="also TRL's DPOTrainer (needs the bench env)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--work", default=None, help="folder for the files and caches (default: a temporary one)")
    parser.add_argument("--out", default=None,
                        help="the run's record (default benchmarks/results/data_prep.json; data_prep_first_step.json "
                             "with --first-step)")
    parser.add_argument("--first-step", action="store_true",
                        help="time to the first optimizer step (ours: the DPO recipe's command on the file; TRL: "
                             "DPOTrainer.train for one step) instead of to the data being ready")
    parser.add_argument("--test-size", type=int, default=200,
                        help="with --first-step: ours' dataset.test_size (its start eval runs before step 1)")
    parser.add_argument("--child", choices=("ours", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.file, args.max_length, args.first_step, args.test_size)
        return 0
    sizes = [int(size) for size in args.sizes.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="data-prep-"))
    work.mkdir(parents=True, exist_ok=True)
    record = {**start_record(__file__, sys.argv[1:]),
              "settings": {"max_length": args.max_length, "prompt_tokens": PROMPT_TOKENS, "reply_tokens": REPLY_TOKENS,
                           "until": "first step" if args.first_step else "data ready", "test_size": args.test_size},
              "rows": []}
    impls = ["ours", "trl"] if args.vs_trl else ["ours"]
    for size in sizes:
        path = work / f"pairs-{size}.jsonl"
        if not path.exists():
            write_pairs(path, size)
        for impl in impls:
            cache = work / f"cache-{impl}-{size}"
            for state in ("cold", "warm"):
                row = {"pairs": size, "state": state, "file_mib": path.stat().st_size / 2**20,
                       "until": "first step" if args.first_step else "data ready",
                       **measure(impl, path, args.max_length, cache, args.timeout, args.first_step, args.test_size)}
                record["rows"].append(row)
                print(json.dumps(row), flush=True)
    record["table"] = format_table(record["rows"])
    record["ratios"] = ratios(record["rows"])
    finish_record(record, args.out or RESULTS_DIR / ("data_prep_first_step.json" if args.first_step else "data_prep.json"))
    print(record["table"])
    print("\n".join(record["ratios"]))
    failed = [row for row in record["rows"] if not row["ok"]]
    if failed:
        print(f"{len(failed)} measurement(s) failed; the headline ratios leave them out and the run fails",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
