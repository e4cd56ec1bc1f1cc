"""SFT training-step throughput: our SFT step on the shared loop against TRL's SFTTrainer, on the same
conversations, model, batches, optimizer, learning rate and clipping.

    python benchmarks/sft_throughput.py --impls ours                     # ours only (the project's .venv)
    benchmarks/.venv-bench/bin/python benchmarks/sft_throughput.py        # with TRL, after setup_bench_env.sh

Prints one markdown table (tokens per CPU-second, wall tokens/s, peak RSS per configuration), then
ratio lines such as `- ours default / TRL best (demo): tokens/CPU-s x1.50`. Writes the run's record
(command, versions, machine, load average at start and end, every row, failed ones included) to
benchmarks/results/sft_throughput_<sets>.json (`--json-out` elsewhere). If any configuration fails
(killed, crashed, timed out, or TRL's input ids differ from ours), the run exits non-zero, and a
headline that compares a failed configuration is not written: the best *surviving* TRL row is not
TRL's best.

Why it is built this way:
- Two sets: `demo`, the chosen side of the bundled demo pairs (what `dataset=chosen:demo`, the
  recipe's default, trains on: ~60-token conversations), and `synthetic`, seeded single-turn
  conversations of ~400 tokens made of whole vocabulary words.
- Our side is the recipe's own code path, minus logging and checkpoints: `Run` loads the model and
  builds the optimizer exactly as `train_sft` does (`tokenizer_and_renderer`, `load_model`, `wrap`),
  and each step is the shared loop's `StepRunner.run` over `SupervisedTask` (micro-batches, loss per
  trained token, clipping, AdamW), on the loop's own `BatchSchedule`.
- TRL gets the conversations in that schedule's order with a sequential sampler and the same
  micro-batches (batch 16 = 2 x 8), as prompt/completion rows, so it tokenizes them itself with the
  model's chat template and trains on the completion only. Every TRL run checks that its input ids
  equal ours (a difference stops the run) and notes which tokens it trains on that we do not (the
  newline after `<|im_end|>`).
- "Tokens" are all tokens of the step's conversations, template included: the same count on both
  sides, so tokens/CPU-s ratios are ratios of CPU time per step.
- Each configuration runs in its own subprocess at 1 torch thread (`--threads`): its peak RSS is its
  own, and CPU-seconds measure its compute even on a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass

SETS = ("demo", "synthetic")
PRECISIONS = ("fp32", "bf16-mixed")
OUR_LAYOUTS = ("packed", "packed_capped", "padded")
TRL_LAYOUTS = ("padding_free", "padded")
DEMO_SET = "chosen:demo"


@dataclass(frozen=True)
class Spec:
    impl: str  # ours | trl
    data: str  # demo | synthetic
    layout: str  # ours: packed | packed_capped | padded; trl: padding_free | padded
    precision: str  # fp32 | bf16-mixed (TRL: bf16=True)


@dataclass
class RunResult:
    impl: str
    data: str
    layout: str
    precision: str
    steps: int
    tokens_per_step: float
    trained_tokens_per_step: float
    step_seconds: float
    cpu_seconds_per_step: float
    tokens_per_second: float
    tokens_per_cpu_second: float
    host_peak_rss_bytes: int
    first_loss: float  # loss of the first step (warm-up included): both sides start from the same weights
    note: str = ""


# ----------------------------------------------------------------------------------------------
# Conversations


def single_token_words(tokenizer) -> list[str]:
    """Lowercase ASCII words that the tokenizer turns into one token with a leading space."""
    words = sorted(
        token[1:] for token in tokenizer.get_vocab()
        if token.startswith("\u0120") and 3 <= len(token) <= 9 and token[1:].isascii() and token[1:].isalpha()
        and token[1:].islower()
    )
    encoded = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]
    return [w for w, ids in zip(words, encoded) if len(ids) == 1]


def synthetic_conversations(tokenizer, count: int, mean_words: int, spread: int, seed: int):
    """`count` seeded user/assistant conversations of mean_words +- spread words (one token each),
    the user turn 20-50% of them; the chat template adds ~35 tokens."""
    from cookbook.datasets.supervised import Conversation

    words = single_token_words(tokenizer)
    rng = random.Random(seed)
    conversations = []
    for _ in range(count):
        total = rng.randint(mean_words - spread, mean_words + spread)
        prompt_words = round(total * rng.uniform(0.2, 0.5))
        text = [rng.choice(words) for _ in range(total)]
        conversations.append(Conversation([
            {"role": "user", "content": " ".join(text[:prompt_words])},
            {"role": "assistant", "content": " ".join(text[prompt_words:])},
        ]))
    return conversations


def load_conversations(args, data: str, tokenizer):
    if data == "demo":
        from cookbook.datasets.supervised import SUPERVISED_DATASETS

        return SUPERVISED_DATASETS.resolve(DEMO_SET)()().train
    count = (args.warmup_steps + args.steps) * args.batch_size
    return synthetic_conversations(tokenizer, count, args.synthetic_words, args.synthetic_spread, args.seed)


def tokenize_all(conversations, renderer, max_length: int):
    """Our token sequences, one per conversation; none may be cut or dropped (TRL would keep it whole)."""
    from cookbook.datasets.tokenize import tokenize_conversation

    sequences = [tokenize_conversation(c, renderer, max_length) for c in conversations]
    bad = [i for i, s in enumerate(sequences) if not hasattr(s, "tokens") or s.truncated]
    if bad:
        raise SystemExit(f"{len(bad)} conversations do not fit max_length={max_length} (first: {bad[0]})")
    return sequences


def make_schedule(args, num_examples: int):
    """The loop's own batch order: the same seeded permutation the recipe would train in."""
    from cookbook.training.schedule import BatchSchedule

    return BatchSchedule(num_examples, args.batch_size, args.micro_batch_size, num_epochs=1,
                         max_steps=args.warmup_steps + args.steps, seed=args.seed)


def host_peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def summarize(args, spec: Spec, step_times, cpu_times, tokens, trained, first_loss, note) -> RunResult:
    timed = slice(args.warmup_steps, None)
    wall, cpu = sum(step_times[timed]), sum(cpu_times[timed])
    real, steps = sum(tokens[timed]), len(step_times[timed])
    return RunResult(
        impl=spec.impl, data=spec.data, layout=spec.layout, precision=spec.precision, steps=steps,
        tokens_per_step=real / steps, trained_tokens_per_step=sum(trained[timed]) / steps,
        step_seconds=wall / steps, cpu_seconds_per_step=cpu / steps,
        tokens_per_second=real / wall, tokens_per_cpu_second=real / cpu,
        host_peak_rss_bytes=host_peak_rss_bytes(), first_loss=first_loss,
        note=f"{note}; load {os.getloadavg()[0]:.1f}".lstrip("; "),
    )


# ----------------------------------------------------------------------------------------------
# Ours: the SFT recipe's model, optimizer and step, on the shared loop


def run_ours(args, spec: Spec) -> RunResult:
    import torch

    from cookbook.datasets.load import SupervisedData
    from cookbook.supervised.batching import make_supervised_collate
    from cookbook.supervised.train_sft import SupervisedTask
    from cookbook.training.config import TrainingConfig
    from cookbook.training.display import make_console
    from cookbook.training.distributed import DistInfo
    from cookbook.training.log_dir import StopRequest
    from cookbook.training.logprobs import SequenceLogprobModel
    from cookbook.training.loop import Run
    from cookbook.training.precision import plan_for
    from cookbook.training.schedule import make_scheduler
    from cookbook.training.step_runner import StepRunner

    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with tempfile.TemporaryDirectory() as log_path:
        config = TrainingConfig(
            log_path=log_path, model_name=args.model, learning_rate=args.lr, lr_schedule="constant",
            max_grad_norm=1.0, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
            max_length=args.max_length, precision=spec.precision, device="cpu", seed=args.seed, display="plain",
        )
        run = Run(config, info, make_console("plain", quiet=True), None, plan_for(spec.precision, info.device))
        tokenizer, renderer = run.tokenizer_and_renderer(args.model)
        sequences = tokenize_all(load_conversations(args, spec.data, tokenizer), renderer, args.max_length)
        packed = spec.layout.startswith("packed")
        causal_lm = run.load_model(args.model, packed_rows=packed)
        # packed_capped: rows of at most max_length tokens instead of the recipe's one row per micro-batch
        max_row_tokens = args.max_length if spec.layout == "packed_capped" else None
        collate = make_supervised_collate("packed" if packed else "padded", tokenizer.pad_token_id, causal_lm,
                                          max_row_tokens=max_row_tokens).collate
        policy = run.wrap(SequenceLogprobModel(causal_lm, compute_context=run.plan.autocast), causal_lm)
        task = SupervisedTask(SupervisedData(train=sequences, test=[], summary=None), collate,
                              args.micro_batch_size, info)
        schedule = make_schedule(args, len(sequences))
        scheduler = make_scheduler(run.optimizer, schedule.total_steps, config.lr_schedule, config.warmup_steps)
        runner = StepRunner(config, info, policy, run.strategy, run.optimizer, scheduler, run.plan.grad_scaler(),
                            schedule, task)
        policy.train()
        step_times, cpu_times, tokens, trained, losses = [], [], [], [], []
        stop = StopRequest()  # never entered: no signal handlers, never requested
        for step in range(schedule.total_steps):
            start, start_cpu = time.perf_counter(), time.process_time()
            metrics, _ = runner.run(step, stop)
            step_times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - start_cpu)
            tokens.append(metrics["num_tokens"])
            trained.append(metrics["num_trained_tokens"])
            losses.append(metrics["loss"])
    return summarize(args, spec, step_times, cpu_times, tokens, trained, losses[0],
                     note=f"precision {run.plan.name}, attn {causal_lm.config._attn_implementation}")


# ----------------------------------------------------------------------------------------------
# TRL's SFTTrainer on the same conversations


def run_trl(args, spec: Spec) -> RunResult:
    import datasets
    from trl import SFTConfig, SFTTrainer

    from cookbook.models import load_model_and_tokenizer
    from cookbook.renderers import default_renderer_name, get_renderer

    model, tokenizer = load_model_and_tokenizer(args.model, dtype="float32", device="cpu",
                                                attn_implementation="sdpa")
    renderer = get_renderer(default_renderer_name(tokenizer), tokenizer)
    conversations = load_conversations(args, spec.data, tokenizer)
    schedule = make_schedule(args, len(conversations))
    order = [i for step in range(schedule.total_steps) for i in schedule.global_batch(step)]
    ordered = [conversations[i] for i in order]
    ours = tokenize_all(ordered, renderer, args.max_length)
    rows = [{"prompt": c.messages[:-1], "completion": c.messages[-1:]} for c in ordered]

    from run_record import trl_step_clock

    clock = trl_step_clock()
    with tempfile.TemporaryDirectory() as output_dir:
        config = SFTConfig(
            output_dir=output_dir,
            per_device_train_batch_size=args.micro_batch_size,
            gradient_accumulation_steps=args.batch_size // args.micro_batch_size,
            max_steps=schedule.total_steps,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch_fused",  # ours: torch AdamW, fused=True on CPU as on GPU
            bf16=spec.precision == "bf16-mixed",  # autocast over fp32 weights, like our bf16-mixed
            gradient_checkpointing=False,  # TRL's default is True; ours does not checkpoint
            padding_free=spec.layout == "padding_free",
            packing=False,  # bfd packing regroups conversations into max_length rows: not 16 per step
            max_length=None,  # nothing to cut (checked above); padding-free without packing requires None
            completion_only_loss=True,
            use_cpu=True,
            train_sampling_strategy="sequential",  # the schedule's order, which `ordered` already is
            dataloader_num_workers=0,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=args.seed,
        )
        trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tokenizer, callbacks=[clock])
        note = compare_tokens(trainer.train_dataset, ours, tokenizer)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    # TRL's own count of trained tokens: labels set past the first token (which nothing predicts).
    trl_trained = [sum(label != -100 for label in row["labels"][1:]) for row in trainer.train_dataset]
    tokens, trained = [], []
    for step in range(schedule.total_steps):
        batch = slice(step * args.batch_size, (step + 1) * args.batch_size)
        tokens.append(sum(len(s.tokens) for s in ours[batch]))
        trained.append(sum(trl_trained[batch]))
    return summarize(args, spec, clock.wall, clock.cpu, tokens, trained, losses[0] if losses else float("nan"),
                     note=note)


def compare_tokens(prepared, ours, tokenizer) -> str:
    """Stop the run unless TRL's prepared rows (input_ids, labels with -100 off the loss) hold exactly
    our token ids: on other tokens the two sides would not train on the same conversations. Returns
    how the trained positions differ, naming the tokens only one side trains on."""
    if len(prepared) != len(ours):
        raise SystemExit(f"TRL token mismatch: TRL prepared {len(prepared)} rows for our {len(ours)} conversations")
    different = [i for i, (row, sequence) in enumerate(zip(prepared, ours)) if list(row["input_ids"]) != sequence.tokens]
    if different:
        raise SystemExit(f"TRL token mismatch: TRL's input ids differ from ours in {len(different)} of {len(ours)} "
                         f"conversations (first: {different[0]}); the comparison is not like for like")
    extra, missing = Counter(), Counter()
    for row, sequence in zip(prepared, ours):
        for token, label, weight in zip(sequence.tokens, row["labels"], sequence.weights):
            if label != -100 and not weight:
                extra[tokenizer.decode([token])] += 1
            elif label == -100 and weight:
                missing[tokenizer.decode([token])] += 1
    parts = [f"input ids identical in {len(ours)}/{len(ours)} conversations"]
    if not extra and not missing:
        parts.append("trained tokens identical")
    for name, counter in (("TRL also trains on", extra), ("TRL does not train on", missing)):
        if counter:
            parts.append(name + " " + ", ".join(f"{token!r} x{n}" for token, n in counter.most_common(3)))
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------
# Driver


def run_one(args, spec: Spec) -> RunResult:
    import torch

    torch.set_num_threads(args.threads)
    return run_trl(args, spec) if spec.impl == "trl" else run_ours(args, spec)


def run_in_subprocess(argv: list[str], spec: Spec, args) -> RunResult | str:
    from run_record import run_configuration

    result = run_configuration(__file__, argv, asdict(spec), args.threads, args.timeout)
    return RunResult(**result) if isinstance(result, dict) else result


def format_table(results: list[RunResult]) -> str:
    lines = [
        "| set | impl | layout | precision | tok/CPU-s | wall tok/s | CPU s/step | step s | tokens/step "
        "| trained/step | peak RSS GiB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.data} | {r.impl} | {r.layout} | {r.precision} | {r.tokens_per_cpu_second:,.0f} | "
            f"{r.tokens_per_second:,.0f} | {r.cpu_seconds_per_step:.2f} | {r.step_seconds:.2f} | "
            f"{r.tokens_per_step:,.0f} | {r.trained_tokens_per_step:,.0f} | {r.host_peak_rss_bytes / 2**30:.2f} |"
        )
    return "\n".join(lines)


def _ratio(a: RunResult, b: RunResult) -> str:
    return (f"tokens/CPU-s x{a.tokens_per_cpu_second / b.tokens_per_cpu_second:.2f}, "
            f"wall tokens/s x{a.tokens_per_second / b.tokens_per_second:.2f}, "
            f"peak RSS x{a.host_peak_rss_bytes / b.host_peak_rss_bytes:.2f}")


def headlines(outcomes: list[tuple[Spec, RunResult | str]], default_precision: str) -> tuple[list[dict], list[str]]:
    """Per set: ours default (packed at the precision `auto` picks here) over TRL's fastest
    configuration of those run. A headline is computed only if every configuration it compares
    finished: the best of the *surviving* TRL rows is not TRL's best. Returns (headlines, reasons
    a headline was withheld)."""
    found, withheld = [], []
    for data in SETS:
        ours = [(s, o) for s, o in outcomes if s.impl == "ours" and s.data == data and s.layout == "packed"
                and s.precision == default_precision]
        trl = [(s, o) for s, o in outcomes if s.impl == "trl" and s.data == data]
        if not ours or not trl:
            continue
        name = f"ours default / TRL best ({data})"
        failed = [f"{s.impl} {s.layout} {s.precision}: {o}" for s, o in ours + trl if isinstance(o, str)]
        if failed:
            withheld.append(f"{name}: not computed, a configuration it compares failed ({'; '.join(failed)})")
            continue
        mine = ours[0][1]
        best = max((o for _, o in trl), key=lambda r: r.tokens_per_cpu_second)
        found.append({
            "name": name, "tokens_per_cpu_second_ratio": mine.tokens_per_cpu_second / best.tokens_per_cpu_second,
            "line": f"- {name}: {_ratio(mine, best)} (ours packed {default_precision}; TRL {best.layout} {best.precision})",
            "ours": {"layout": "packed", "precision": default_precision, "tokens_per_cpu_second": mine.tokens_per_cpu_second},
            "trl_best": {"layout": best.layout, "precision": best.precision,
                         "tokens_per_cpu_second": best.tokens_per_cpu_second},
            "trl_compared": [f"{s.layout} {s.precision}" for s, _ in trl],
        })
    return found, withheld


def format_ratios(results: list[RunResult]) -> str:
    """Per set: each of our packed runs over TRL padding-free at the same precision, capped rows
    over one row, bf16-mixed over fp32 (the headline is `headlines`)."""
    lines = []
    for data in SETS:
        ours = {(r.layout, r.precision): r for r in results if r.impl == "ours" and r.data == data}
        trl = {(r.layout, r.precision): r for r in results if r.impl == "trl" and r.data == data}
        for precision in PRECISIONS:
            mine, theirs = ours.get(("packed", precision)), trl.get(("padding_free", precision))
            if mine and theirs:
                lines.append(f"- ours packed / TRL padding_free, {precision} ({data}): {_ratio(mine, theirs)}")
        for precision in PRECISIONS:
            one_row, capped = ours.get(("packed", precision)), ours.get(("packed_capped", precision))
            if one_row and capped:
                lines.append(f"- ours packed_capped / packed, {precision} ({data}): {_ratio(capped, one_row)}")
        fp32, bf16 = ours.get(("packed", "fp32")), ours.get(("packed", "bf16-mixed"))
        if fp32 and bf16:
            lines.append(f"- ours bf16-mixed / fp32, packed ({data}): tokens/CPU-s "
                         f"x{bf16.tokens_per_cpu_second / fp32.tokens_per_cpu_second:.2f}")
    return "\n".join(lines)


def _choices(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(allowed))
    if unknown:
        raise SystemExit(f"{flag}: unknown {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return chosen


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model_name (bundled, local dir)")
    parser.add_argument("--sets", default=",".join(SETS), help="demo (chosen:demo), synthetic (~400 tokens)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--impls", default="ours,trl", help="ours, trl (ours alone runs without TRL installed)")
    parser.add_argument("--layouts", default="packed",
                        help="ours: packed (the recipe's default: one row per micro-batch), packed_capped "
                             "(rows of at most --max-length tokens), padded")
    parser.add_argument("--trl-layouts", default=",".join(TRL_LAYOUTS), help="padding_free, padded")
    parser.add_argument("--batch-size", type=int, default=16, help="conversations per optimizer step")
    parser.add_argument("--micro-batch-size", type=int, default=8, help="per forward pass (the recipe's default)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-5, help="the SFT recipe's default")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--synthetic-words", type=int, default=380, help="mean words (= tokens) per synthetic conversation")
    parser.add_argument("--synthetic-spread", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per configuration")
    parser.add_argument("--jobs", type=int, default=1, help="configurations run at once")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument("--json-out", default=None,
                        help="where the run's record goes (default benchmarks/results/sft_throughput_<sets>.json)")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.impls = _choices(args.impls, ("ours", "trl"), "--impls")
    args.sets = _choices(args.sets, SETS, "--sets")
    args.precisions = _choices(args.precisions, PRECISIONS, "--precisions")
    args.layouts = _choices(args.layouts, OUR_LAYOUTS, "--layouts")
    args.trl_layouts = _choices(args.trl_layouts, TRL_LAYOUTS, "--trl-layouts")
    if args.batch_size % args.micro_batch_size:
        raise SystemExit("--batch-size must be a multiple of --micro-batch-size")
    return args


def specs_for(args) -> list[Spec]:
    specs = []
    for data in args.sets:
        if "ours" in args.impls:
            specs += [Spec("ours", data, layout, p) for p in args.precisions for layout in args.layouts]
        if "trl" in args.impls:
            specs += [Spec("trl", data, layout, p) for p in args.precisions for layout in args.trl_layouts]
    return specs


def main(argv=None) -> list[RunResult]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.run_one:
        result = run_one(args, Spec(**json.loads(args.run_one)))
        print("RESULT " + json.dumps(asdict(result)), flush=True)
        return [result]
    import torch
    from run_record import RESULTS_DIR, finish_record, start_record

    from cookbook.training.precision import resolve_precision

    if "trl" in args.impls:
        require_trl()
    record = start_record(__file__, argv)
    outcomes = run_all(args, argv)
    results = sorted((o for _, o in outcomes if not isinstance(o, str)), key=table_order)
    default_precision = resolve_precision("auto", torch.device("cpu"))
    found, withheld = headlines(outcomes, default_precision)
    failures = [{"spec": asdict(spec), "error": o} for spec, o in outcomes if isinstance(o, str)]
    print()
    print(f"model={args.model} batch={args.batch_size} (micro {args.micro_batch_size}) steps={args.steps} "
          f"(+{args.warmup_steps} warm-up) threads={args.threads}; precision=auto here: {default_precision}")
    print(format_table(results))
    print()
    print("\n".join(filter(None, [*(h["line"] for h in found), format_ratios(results)])))
    record.update(
        settings=vars(args), default={"layout": "packed", "precision": default_precision},
        rows=[{"spec": asdict(spec), "ok": not isinstance(o, str), "error": o if isinstance(o, str) else None,
               "result": None if isinstance(o, str) else asdict(o)} for spec, o in outcomes],
        table=format_table(results), ratios=format_ratios(results).splitlines(),
        headline=found or None, headline_withheld=withheld, failures=failures,
    )
    out = finish_record(record, args.json_out or RESULTS_DIR / f"sft_throughput_{'_'.join(args.sets)}.json")
    print(f"\nrecord: {out}")
    for reason in withheld:
        print(f"headline withheld: {reason}", file=sys.stderr)
    if failures:
        raise SystemExit(f"{len(failures)} configuration(s) failed; the run fails"
                         + (" and writes no headline for what they compare" if withheld else ""))
    return results


def require_trl() -> None:
    if importlib.util.find_spec("trl") is None:
        raise SystemExit("TRL is not installed here: run bash benchmarks/setup_bench_env.sh and use "
                         "benchmarks/.venv-bench/bin/python, or pass --impls ours")


def run_all(args, argv: list[str]) -> list[tuple[Spec, RunResult | str]]:
    """Every configuration in its own subprocess, `--jobs` at a time; each result (or why there is
    none) is printed as soon as it is in."""
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()

    def run_and_report(spec: Spec) -> RunResult | str:
        outcome = run_in_subprocess(argv, spec, args)
        with lock:
            if isinstance(outcome, str):
                print(f"{spec}: {outcome}", file=sys.stderr, flush=True)
            else:
                print(f"{spec.data:9} {spec.impl:4} {spec.layout:13} {spec.precision:10} "
                      f"{outcome.tokens_per_cpu_second:8,.0f} tok/CPU-s  loss@1 {outcome.first_loss:.4f}  "
                      f"{outcome.note}", flush=True)
        return outcome

    specs = specs_for(args)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        return list(zip(specs, pool.map(run_and_report, specs)))


def table_order(result: RunResult) -> tuple:
    layouts = ("packed", "packed_capped", "padding_free", "padded")
    return (SETS.index(result.data), result.impl != "ours", layouts.index(result.layout),
            PRECISIONS.index(result.precision))

if __name__ == "__main__":
    main()
