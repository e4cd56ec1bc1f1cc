"""Reward-model training-step throughput: our reward-model step on the shared loop against TRL's
RewardTrainer, on the same pairs, model, head initialisation, batches, optimizer, learning rate,
clipping and loss (Bradley-Terry with centering 0.01).

    python benchmarks/reward_model_throughput.py --impls ours                  # ours only (the project's .venv)
    benchmarks/.venv-bench/bin/python benchmarks/reward_model_throughput.py    # with TRL, after setup_bench_env.sh

Prints one markdown table (tokens per CPU-second, wall tokens/s, peak RSS per configuration), then
ratio lines such as `- ours default / TRL (demo): tokens/CPU-s x2.00`. Writes the run's record
(command, versions, machine, load average at start and end, every row, failed ones included) to
benchmarks/results/reward_model_throughput_demo.json (`--json-out` elsewhere); a failed
configuration fails the run and withholds the headline that compares it.

Why it is built this way:
- The pairs are the bundled demo set's (what `dataset=demo`, the recipe's default, trains on:
  prompts of ~40 tokens, replies of ~10), in the loop's own `BatchSchedule` order; TRL gets the same
  pairs in that order with a sequential sampler, as conversational prompt/chosen/rejected rows that it
  tokenizes with the chat template, and the run stops unless its token ids equal ours.
- Our side is the recipe's code path minus logging and checkpoints: `Run` loads the classifier and
  builds the optimizer as `train_reward_model` does, each step is the loop's `StepRunner.run` over
  `RewardModelTask`, in the layout `auto` picks (prefix-shared: the prompt runs once per pair) and,
  for comparison, padded rows (what TRL runs: every sequence its own padded row).
- Both sides start from the same weights: the bundled causal LM with a zero head (ours does that to
  a new head; TRL's is zeroed here), so both first losses are ln 2 + 0.
- "Tokens" are prompt+chosen plus prompt+rejected, the same count on both sides, so tokens/CPU-s
  ratios are ratios of CPU time per step. Each configuration runs in its own subprocess at 1 torch
  thread: its peak RSS is its own, and CPU-seconds measure its compute on a shared machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's cookbook, whichever venv runs it

PRECISIONS = ("fp32", "bf16-mixed")
OUR_LAYOUTS = ("auto", "padded")
CENTER_COEF = 0.01


@dataclass(frozen=True)
class Spec:
    impl: str  # ours | trl
    layout: str  # ours: auto | padded; trl: padded
    precision: str  # fp32 | bf16-mixed (TRL: bf16=True)


@dataclass
class RunResult:
    impl: str
    layout: str
    precision: str
    steps: int
    tokens_per_step: float
    step_seconds: float
    cpu_seconds_per_step: float
    tokens_per_second: float
    tokens_per_cpu_second: float
    host_peak_rss_bytes: int
    first_loss: float
    note: str = ""


def load_pairs(args, renderer):
    """(comparisons, our tokenized pairs) of the demo train split; none may be cut or dropped."""
    from cookbook.datasets.preference import DemoBuilder
    from cookbook.datasets.tokenize import tokenize_comparisons

    comparisons = DemoBuilder(max_pairs=None, test_size=0)().train
    pairs = tokenize_comparisons(comparisons, renderer, args.max_length)
    bad = [i for i, p in enumerate(pairs) if not hasattr(p, "chosen") or p.truncated]
    if bad:
        raise SystemExit(f"{len(bad)} pairs do not fit max_length={args.max_length} (first: {bad[0]})")
    return comparisons, pairs


def make_schedule(args, num_pairs: int):
    from cookbook.training.schedule import BatchSchedule

    return BatchSchedule(num_pairs, args.batch_size, args.micro_batch_size, num_epochs=1,
                         max_steps=args.warmup_steps + args.steps, seed=args.seed)


def summarize(args, spec: Spec, step_times, cpu_times, tokens, first_loss, note) -> RunResult:
    timed = slice(args.warmup_steps, None)
    wall, cpu, real, steps = sum(step_times[timed]), sum(cpu_times[timed]), sum(tokens[timed]), len(step_times[timed])
    return RunResult(
        impl=spec.impl, layout=spec.layout, precision=spec.precision, steps=steps, tokens_per_step=real / steps,
        step_seconds=wall / steps, cpu_seconds_per_step=cpu / steps, tokens_per_second=real / wall,
        tokens_per_cpu_second=real / cpu, first_loss=first_loss,
        host_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        note=f"{note}; load {os.getloadavg()[0]:.1f}".lstrip("; "),
    )


def run_ours(args, spec: Spec) -> RunResult:
    import torch

    from cookbook.reward_model.batching import make_score_collate
    from cookbook.reward_model.model import SequenceScoreModel, zero_new_head
    from cookbook.reward_model.train_reward_model import Config, RewardModelTask
    from cookbook.training.display import make_console
    from cookbook.training.distributed import DistInfo
    from cookbook.training.log_dir import StopRequest
    from cookbook.training.loop import Run
    from cookbook.training.precision import plan_for
    from cookbook.training.schedule import make_scheduler
    from cookbook.training.step_runner import StepRunner

    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with tempfile.TemporaryDirectory() as log_path:
        config = Config(log_path=log_path, model_name=args.model, learning_rate=args.lr, lr_schedule="constant",
                        batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                        max_length=args.max_length, precision=spec.precision, device="cpu", seed=args.seed,
                        display="plain", layout=spec.layout, center_coef=CENTER_COEF)
        run = Run(config, info, make_console("plain", quiet=True), None, plan_for(spec.precision, info.device))
        tokenizer, renderer = run.tokenizer_and_renderer(args.model)
        _, pairs = load_pairs(args, renderer)
        classifier = run.load_model(args.model, packed_rows=spec.layout != "padded", num_labels=1)
        classifier.config.pad_token_id = tokenizer.pad_token_id
        zero_new_head(classifier)
        layout = make_score_collate(spec.layout, tokenizer.pad_token_id, classifier)
        model = run.wrap(SequenceScoreModel(classifier, compute_context=run.plan.autocast), classifier)

        class Data:
            train, test = pairs, []

        task = RewardModelTask(config, run, layout.collate, Data)
        schedule = make_schedule(args, len(pairs))
        scheduler = make_scheduler(run.optimizer, schedule.total_steps, "constant", 0)
        runner = StepRunner(config, info, model, run.strategy, run.optimizer, scheduler, run.plan.grad_scaler(),
                            schedule, task)
        model.train()
        step_times, cpu_times, tokens, losses = [], [], [], []
        stop = StopRequest()  # never entered: no signal handlers, never requested
        for step in range(schedule.total_steps):
            start, start_cpu = time.perf_counter(), time.process_time()
            metrics, _ = runner.run(step, stop)
            step_times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - start_cpu)
            tokens.append(metrics["num_tokens"])
            losses.append(metrics["loss"])
    return summarize(args, spec, step_times, cpu_times, tokens, losses[0],
                     note=f"layout {layout.name}, precision {run.plan.name}")


def run_trl(args, spec: Spec) -> RunResult:
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from cookbook.models import load_tokenizer, resolve_model_path
    from cookbook.renderers import default_renderer_name, get_renderer

    tokenizer = load_tokenizer(args.model)
    renderer = get_renderer(default_renderer_name(tokenizer), tokenizer)
    comparisons, pairs = load_pairs(args, renderer)
    schedule = make_schedule(args, len(pairs))
    order = [i for step in range(schedule.total_steps) for i in schedule.global_batch(step)]
    rows = [{"prompt": comparisons[i].prompt, "chosen": comparisons[i].chosen, "rejected": comparisons[i].rejected}
            for i in order]
    ours = [pairs[i] for i in order]
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(args.model), num_labels=1,
                                                               dtype=torch.float32, attn_implementation="sdpa")
    model.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        model.score.weight.zero_()

    from run_record import trl_step_clock

    clock = trl_step_clock()
    with tempfile.TemporaryDirectory() as output_dir:
        config = RewardConfig(
            output_dir=output_dir, per_device_train_batch_size=args.micro_batch_size,
            gradient_accumulation_steps=args.batch_size // args.micro_batch_size, max_steps=schedule.total_steps,
            learning_rate=args.lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
            optim="adamw_torch_fused", bf16=spec.precision == "bf16-mixed", gradient_checkpointing=False,
            max_length=args.max_length, center_rewards_coefficient=CENTER_COEF, use_cpu=True,
            train_sampling_strategy="sequential", dataloader_num_workers=0, logging_steps=1, save_strategy="no",
            report_to="none", disable_tqdm=True, seed=args.seed,
        )
        trainer = RewardTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                                processing_class=tokenizer, callbacks=[clock])
        note = compare_tokens(trainer.train_dataset, ours)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    tokens = [sum(len(p.chosen.tokens) + len(p.rejected.tokens) for p in ours[s * args.batch_size:(s + 1) * args.batch_size])
              for s in range(schedule.total_steps)]
    return summarize(args, spec, clock.wall, clock.cpu, tokens, losses[0] if losses else float("nan"), note=note)


def compare_tokens(prepared, ours) -> str:
    """Stop the run unless TRL's prepared rows hold exactly our chosen and rejected token ids."""
    if len(prepared) != len(ours):
        raise SystemExit(f"TRL token mismatch: {len(prepared)} prepared rows for our {len(ours)} pairs")
    different = [i for i, (row, pair) in enumerate(zip(prepared, ours))
                 if list(row["chosen_ids"]) != pair.chosen.tokens or list(row["rejected_ids"]) != pair.rejected.tokens]
    if different:
        raise SystemExit(f"TRL token mismatch in {len(different)} of {len(ours)} pairs (first: {different[0]})")
    return f"token ids identical in {len(ours)}/{len(ours)} pairs"


def run_in_subprocess(argv: list[str], spec: Spec, args) -> RunResult | str:
    from run_record import run_configuration

    result = run_configuration(__file__, argv, asdict(spec), args.threads, args.timeout)
    return RunResult(**result) if isinstance(result, dict) else result


def format_table(results: list[RunResult]) -> str:
    lines = ["| impl | layout | precision | tok/CPU-s | wall tok/s | CPU s/step | step s | tokens/step | "
             "loss@1 | peak RSS GiB |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.impl} | {r.layout} | {r.precision} | {r.tokens_per_cpu_second:,.0f} | "
                     f"{r.tokens_per_second:,.0f} | {r.cpu_seconds_per_step:.2f} | {r.step_seconds:.2f} | "
                     f"{r.tokens_per_step:,.0f} | {r.first_loss:.4f} | {r.host_peak_rss_bytes / 2**30:.2f} |")
    return "\n".join(lines)


def ratios(outcomes: list[tuple[Spec, RunResult | str]]) -> tuple[list[str], list[str]]:
    """Per precision: ours auto and ours padded over TRL; (lines, reasons a line was withheld)."""
    lines, withheld = [], []
    for precision in PRECISIONS:
        trl = [(s, o) for s, o in outcomes if s.impl == "trl" and s.precision == precision]
        for layout in OUR_LAYOUTS:
            ours = [(s, o) for s, o in outcomes if s.impl == "ours" and s.layout == layout and s.precision == precision]
            if not ours or not trl:
                continue
            name = f"ours {layout} / TRL padded, {precision} (demo)"
            failed = [f"{s.impl} {s.layout}: {o}" for s, o in ours + trl if isinstance(o, str)]
            if failed:
                withheld.append(f"{name}: not computed ({'; '.join(failed)})")
                continue
            a, b = ours[0][1], trl[0][1]
            lines.append(f"- {name}: tokens/CPU-s x{a.tokens_per_cpu_second / b.tokens_per_cpu_second:.2f}, "
                         f"wall tokens/s x{a.tokens_per_second / b.tokens_per_second:.2f}, "
                         f"peak RSS x{a.host_peak_rss_bytes / b.host_peak_rss_bytes:.2f}")
    return lines, withheld


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model_name (bundled, local dir)")
    parser.add_argument("--impls", default="ours,trl", help="ours, trl (ours alone runs without TRL installed)")
    parser.add_argument("--layouts", default=",".join(OUR_LAYOUTS), help="ours: auto (the recipe's default), padded")
    parser.add_argument("--precisions", default="fp32", help="fp32, bf16-mixed")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per optimizer step")
    parser.add_argument("--micro-batch-size", type=int, default=8, help="pairs per forward pass (the recipe's default)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-5, help="the recipe's default")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per configuration")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument("--json-out", default=None,
                        help="where the record goes (default benchmarks/results/reward_model_throughput_demo.json)")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, allowed in (("impls", ("ours", "trl")), ("layouts", OUR_LAYOUTS), ("precisions", PRECISIONS)):
        chosen = [v.strip() for v in getattr(args, name).split(",") if v.strip()]
        if set(chosen) - set(allowed):
            raise SystemExit(f"--{name}: unknown {', '.join(sorted(set(chosen) - set(allowed)))}")
        setattr(args, name, chosen)
    if args.batch_size % args.micro_batch_size:
        raise SystemExit("--batch-size must be a multiple of --micro-batch-size")
    return args


def main(argv=None) -> list[RunResult]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.run_one:
        import torch

        torch.set_num_threads(args.threads)
        spec = Spec(**json.loads(args.run_one))
        result = run_trl(args, spec) if spec.impl == "trl" else run_ours(args, spec)
        print("RESULT " + json.dumps(asdict(result)), flush=True)
        return [result]
    from run_record import RESULTS_DIR, finish_record, start_record

    if "trl" in args.impls and importlib.util.find_spec("trl") is None:
        raise SystemExit("TRL is not installed here: run bash benchmarks/setup_bench_env.sh and use "
                         "benchmarks/.venv-bench/bin/python, or pass --impls ours")
    record = start_record(__file__, argv)
    specs = [Spec("ours", layout, p) for p in args.precisions for layout in args.layouts] if "ours" in args.impls else []
    specs += [Spec("trl", "padded", p) for p in args.precisions] if "trl" in args.impls else []
    outcomes = []
    for spec in specs:
        outcome = run_in_subprocess(argv, spec, args)
        outcomes.append((spec, outcome))
        shown = outcome if isinstance(outcome, str) else f"{outcome.tokens_per_cpu_second:,.0f} tok/CPU-s, {outcome.note}"
        print(f"{spec.impl:4} {spec.layout:7} {spec.precision:10} {shown}", flush=True)
    results = [o for _, o in outcomes if not isinstance(o, str)]
    lines, withheld = ratios(outcomes)
    failures = [{"spec": asdict(s), "error": o} for s, o in outcomes if isinstance(o, str)]
    print(f"\nmodel={args.model} batch={args.batch_size} (micro {args.micro_batch_size}) steps={args.steps} "
          f"(+{args.warmup_steps} warm-up) threads={args.threads}")
    print(format_table(results) + "\n\n" + "\n".join(lines))
    record.update(settings=vars(args), rows=[{"spec": asdict(s), "ok": not isinstance(o, str),
                                             "error": o if isinstance(o, str) else None,
                                             "result": None if isinstance(o, str) else asdict(o)} for s, o in outcomes],
                  table=format_table(results), ratios=lines, headline_withheld=withheld, failures=failures)
    out = finish_record(record, args.json_out or RESULTS_DIR / "reward_model_throughput_demo.json")
    print(f"\nrecord: {out}")
    if failures:
        raise SystemExit(f"{len(failures)} configuration(s) failed; the run fails")
    return results


if __name__ == "__main__":
    main()
