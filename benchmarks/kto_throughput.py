"""KTO training-step throughput: our KTO step on the shared loop against TRL's KTOTrainer, on the same
unpaired examples, model, batches, optimizer, learning rate and clipping.

    python benchmarks/kto_throughput.py --impls ours                     # ours only (the project's .venv)
    benchmarks/.venv-bench/bin/python benchmarks/kto_throughput.py        # with TRL, after setup_bench_env.sh

Prints one markdown table (tokens per CPU-second, wall tokens/s, peak RSS per configuration) and
`- ours / TRL (fp32): tokens/CPU-s x...`. Writes the run's record (command, versions, machine, load
average at start and end, every row, failed ones included) to benchmarks/results/kto_throughput.json
(`--json-out` elsewhere). If any configuration fails (killed, crashed, timed out, or TRL's token ids
differ from ours), the run exits non-zero and writes no ratio for it.

Why it is built this way:
- The data is the recipe's default, `unpaired:demo` (the demo pairs taken apart: ~50-token
  examples), in the order of the loop's own `BatchSchedule`; TRL reads the same rows as
  conversational prompt/completion/label rows with a sequential sampler and the same micro-batches
  (batch 16 = 2 x 8), tokenizes them with the model's chat template, and every TRL run checks that
  its prompt + completion ids equal ours (a difference stops the run).
- Our side is the recipe's code path minus logging and checkpoints: `Run` loads the model and builds
  the optimizer as `train_kto` does, the reference log-probs are precomputed by `prepare_reference`
  before the timed steps, and each step is the shared loop's `StepRunner.run` over `KTOTask` (the
  no-gradient pass for the step's reference point, then the same rows with gradients). TRL gets
  `precompute_ref_log_probs=True` (also before its first step) and computes each micro-batch's own
  and mismatched sequences in its step.
- "Tokens" are a step's own sequences plus its mismatched ones, counted on our side and used for
  both (TRL pairs its mismatched completions within each micro-batch, ours within the global batch:
  the same completions, other prompts), so tokens/CPU-s ratios are ratios of CPU time per step.
- Each configuration runs in its own subprocess at 1 torch thread (`--threads`): its peak RSS is its
  own, and CPU-seconds measure its compute even on a machine shared with other jobs.
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

PRECISIONS = ("fp32", "bf16-mixed")
DATA = "unpaired:demo"


@dataclass(frozen=True)
class Spec:
    impl: str  # ours | trl
    precision: str  # fp32 | bf16-mixed (TRL: bf16=True)


@dataclass
class RunResult:
    impl: str
    precision: str
    steps: int
    tokens_per_step: float
    step_seconds: float
    cpu_seconds_per_step: float
    tokens_per_second: float
    tokens_per_cpu_second: float
    host_peak_rss_bytes: int
    first_loss: float  # the first step's loss (warm-up included): 0.5 on both sides at policy = reference
    note: str = ""


def load_examples(args, renderer):
    from cookbook.datasets.load import load_unpaired_data
    from cookbook.datasets.unpaired import UNPAIRED_DATASETS

    return load_unpaired_data(UNPAIRED_DATASETS.resolve(DATA)(), renderer, args.max_length, verbose=False)


def make_schedule(args, num_examples: int):
    from cookbook.training.schedule import BatchSchedule

    return BatchSchedule(num_examples, args.batch_size, args.micro_batch_size, num_epochs=1,
                         max_steps=args.warmup_steps + args.steps, seed=args.seed)


def step_tokens(rows, schedule) -> list[int]:
    """Per step: tokens of its own sequences and of its mismatched ones."""
    out = []
    for step in range(schedule.total_steps):
        offset = rows.offsets[tuple(schedule.global_batch(step))]
        pairs = [rows.pairs[offset + k] for k in range(schedule.batch_size)]
        out.append(sum(len(p.chosen) + len(p.rejected) for p in pairs))
    return out


def summarize(args, spec: Spec, step_times, cpu_times, tokens, first_loss, note) -> RunResult:
    timed = slice(args.warmup_steps, None)
    wall, cpu, real = sum(step_times[timed]), sum(cpu_times[timed]), sum(tokens[timed])
    steps = len(step_times[timed])
    return RunResult(impl=spec.impl, precision=spec.precision, steps=steps, tokens_per_step=real / steps,
                     step_seconds=wall / steps, cpu_seconds_per_step=cpu / steps, tokens_per_second=real / wall,
                     tokens_per_cpu_second=real / cpu,
                     host_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                     first_loss=first_loss, note=f"{note}; load {os.getloadavg()[0]:.1f}".lstrip("; "))


def run_ours(args, spec: Spec) -> RunResult:
    import torch

    from cookbook.kto.step import KLPairData, KTOTask, TrainRows, held_out_pairs
    from cookbook.kto.train_kto import Config
    from cookbook.preference.batching import make_collate
    from cookbook.preference.reference import model_fingerprint, prepare_reference
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
        config = Config(log_path=log_path, model_name=args.model, learning_rate=args.lr, lr_schedule="constant",
                        max_grad_norm=1.0, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                        max_length=args.max_length, precision=spec.precision, device="cpu", seed=args.seed,
                        display="plain", precompute_reference="true")
        run = Run(config, info, make_console("plain", quiet=True), None, plan_for(spec.precision, info.device))
        tokenizer, renderer = run.tokenizer_and_renderer(args.model)
        data = load_examples(args, renderer)
        schedule = make_schedule(args, len(data.train))
        causal_lm = run.load_model(args.model, packed_rows=True)
        layout = make_collate(config.layout, tokenizer.pad_token_id, causal_lm)
        model = SequenceLogprobModel(causal_lm, compute_context=run.plan.autocast)
        fingerprint = model_fingerprint(model)
        policy = run.wrap(model, causal_lm)
        rows = TrainRows.of(data.train, schedule, config.max_length)
        pairs = KLPairData(rows.pairs, held_out_pairs(data.test, config.max_length), fingerprint="benchmark")
        reference = prepare_reference(run, policy, fingerprint, args.model, args.model, data=pairs,
                                      collate=layout.collate, train_batches=rows.batches)
        task = KTOTask(config.kto_settings, data, rows, pairs, layout.collate, reference, info, config.micro_batch_size)
        scheduler = make_scheduler(run.optimizer, schedule.total_steps, config.lr_schedule, config.warmup_steps)
        runner = StepRunner(config, info, policy, run.strategy, run.optimizer, scheduler, run.plan.grad_scaler(),
                            schedule, task)
        policy.train()
        step_times, cpu_times, losses = [], [], []
        stop = StopRequest()  # never entered: no signal handlers, never requested
        for step in range(schedule.total_steps):
            start, start_cpu = time.perf_counter(), time.process_time()
            metrics, _ = runner.run(step, stop)
            step_times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - start_cpu)
            losses.append(metrics["loss"])
    return summarize(args, spec, step_times, cpu_times, step_tokens(rows, schedule), losses[0],
                     note=f"precision {run.plan.name}, layout {layout.name}")


def run_trl(args, spec: Spec) -> RunResult:
    import datasets
    import torch
    from trl import KTOConfig, KTOTrainer

    from cookbook.datasets.unpaired import UNPAIRED_DATASETS
    from cookbook.kto.step import TrainRows
    from cookbook.models import load_model_and_tokenizer
    from cookbook.renderers import default_renderer_name, get_renderer

    model, tokenizer = load_model_and_tokenizer(args.model, dtype="float32", device="cpu", attn_implementation="sdpa")
    renderer = get_renderer(default_renderer_name(tokenizer), tokenizer)
    data = load_examples(args, renderer)
    examples = UNPAIRED_DATASETS.resolve(DATA)()().train  # the same split and order as the tokenized set
    if len(examples) != len(data.train):
        raise SystemExit(f"{len(examples)} examples but {len(data.train)} tokenized: some did not fit max_length")
    schedule = make_schedule(args, len(data.train))
    order = [i for step in range(schedule.total_steps) for i in schedule.global_batch(step)]
    rows = [{"prompt": examples[i].prompt, "completion": examples[i].completion, "label": examples[i].desirable}
            for i in order]

    from run_record import trl_step_clock

    clock = trl_step_clock()
    with tempfile.TemporaryDirectory() as output_dir:
        config = KTOConfig(
            output_dir=output_dir, per_device_train_batch_size=args.micro_batch_size,
            gradient_accumulation_steps=args.batch_size // args.micro_batch_size, max_steps=schedule.total_steps,
            learning_rate=args.lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
            optim="adamw_torch_fused", bf16=spec.precision == "bf16-mixed", gradient_checkpointing=False,
            beta=0.1, desirable_weight=1.0, undesirable_weight=1.0, precompute_ref_log_probs=True,
            max_length=None, use_cpu=True, train_sampling_strategy="sequential", dataloader_num_workers=0,
            logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=args.seed,
        )
        trainer = KTOTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tokenizer, callbacks=[clock])
        note = compare_tokens(trainer.train_dataset, [data.train[i] for i in order])
        torch.manual_seed(args.seed)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    ours = TrainRows.of(data.train, schedule, args.max_length)
    return summarize(args, spec, clock.wall, clock.cpu, step_tokens(ours, schedule),
                     losses[0] if losses else float("nan"), note=note)


def compare_tokens(prepared, ours) -> str:
    """Stop unless TRL's prompt + completion ids are exactly our sequences' tokens."""
    different = [i for i, (row, example) in enumerate(zip(prepared, ours))
                 if list(row["prompt_ids"]) + list(row["completion_ids"]) != example.sequence.tokens
                 or len(row["prompt_ids"]) != example.prompt_length]
    if len(prepared) != len(ours) or different:
        raise SystemExit(f"TRL token mismatch: {len(different)} of {len(ours)} examples differ "
                         f"(first: {different[:1]}); the comparison is not like for like")
    return f"prompt and completion ids identical in {len(ours)}/{len(ours)} examples"


def run_in_subprocess(argv: list[str], spec: Spec, args) -> RunResult | str:
    from run_record import run_configuration

    result = run_configuration(__file__, argv, asdict(spec), args.threads, args.timeout)
    return RunResult(**result) if isinstance(result, dict) else result


def format_table(results: list[RunResult]) -> str:
    lines = ["| impl | precision | tok/CPU-s | wall tok/s | CPU s/step | step s | tokens/step | peak RSS GiB | loss@1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.impl} | {r.precision} | {r.tokens_per_cpu_second:,.0f} | {r.tokens_per_second:,.0f} | "
                     f"{r.cpu_seconds_per_step:.2f} | {r.step_seconds:.2f} | {r.tokens_per_step:,.0f} | "
                     f"{r.host_peak_rss_bytes / 2**30:.2f} | {r.first_loss:.4f} |")
    return "\n".join(lines)


def ratios(outcomes: list[tuple[Spec, RunResult | str]]) -> list[str]:
    """Ours over TRL at each precision where both finished."""
    done = {(s.impl, s.precision): o for s, o in outcomes if not isinstance(o, str)}
    lines = []
    for precision in PRECISIONS:
        mine, theirs = done.get(("ours", precision)), done.get(("trl", precision))
        if mine and theirs:
            lines.append(f"- ours / TRL ({precision}): tokens/CPU-s x{mine.tokens_per_cpu_second / theirs.tokens_per_cpu_second:.2f}, "
                         f"wall tokens/s x{mine.tokens_per_second / theirs.tokens_per_second:.2f}, "
                         f"peak RSS x{mine.host_peak_rss_bytes / theirs.host_peak_rss_bytes:.2f}")
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model_name (bundled, local dir)")
    parser.add_argument("--impls", default="ours,trl", help="ours, trl (ours alone runs without TRL installed)")
    parser.add_argument("--precisions", default="fp32", help="fp32, bf16-mixed")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per optimizer step (the recipe's default)")
    parser.add_argument("--micro-batch-size", type=int, default=8, help="per forward pass (the recipe's default)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-5, help="the recipe's default")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per configuration")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument("--json-out", default=None, help="default benchmarks/results/kto_throughput.json")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.impls = [v for v in args.impls.split(",") if v]
    args.precisions = [v for v in args.precisions.split(",") if v]
    if set(args.impls) - {"ours", "trl"} or set(args.precisions) - set(PRECISIONS):
        raise SystemExit(f"--impls takes ours, trl; --precisions takes {', '.join(PRECISIONS)}")
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
    outcomes = []
    for spec in [Spec(impl, p) for p in args.precisions for impl in args.impls]:
        outcome = run_in_subprocess(argv, spec, args)
        outcomes.append((spec, outcome))
        print(f"{spec}: {outcome if isinstance(outcome, str) else outcome.note}", flush=True)
    results = [o for _, o in outcomes if not isinstance(o, str)]
    failures = [{"spec": asdict(s), "error": o} for s, o in outcomes if isinstance(o, str)]
    print(f"\nmodel={args.model} data={DATA} batch={args.batch_size} (micro {args.micro_batch_size}) "
          f"steps={args.steps} (+{args.warmup_steps} warm-up) threads={args.threads}")
    print(format_table(results))
    print("\n".join(ratios(outcomes)))
    record.update(settings=vars(args),
                  rows=[{"spec": asdict(s), "ok": not isinstance(o, str), "error": o if isinstance(o, str) else None,
                         "result": None if isinstance(o, str) else asdict(o)} for s, o in outcomes],
                  table=format_table(results), ratios=ratios(outcomes), failures=failures)
    out = finish_record(record, args.json_out or RESULTS_DIR / "kto_throughput.json")
    print(f"\nrecord: {out}")
    if failures:
        raise SystemExit(f"{len(failures)} configuration(s) failed; the run fails")
    return results


if __name__ == "__main__":
    main()
