"""On-policy preference training under one CPU budget: our recipe against TRL's OnlineDPOTrainer,
judged by what each buys on IFEval per CPU-hour.

    # the comparison (both sides at once, ~40 minutes on 2 cores; see benchmarks/README.md), after
    # bash benchmarks/setup_bench_env.sh:
    benchmarks/.venv-bench/bin/python benchmarks/on_policy_vs_trl.py --cpu-budget-s 1250 --jobs 2 --skip-sampler \\
        --out runs/on-policy-vs-trl
    # a smoke run of the whole pipeline (a few CPU-minutes):
    benchmarks/.venv-bench/bin/python benchmarks/on_policy_vs_trl.py --quick --out /tmp/opvt
    # one side only:
    .venv/bin/python benchmarks/on_policy_vs_trl.py --quick --skip-trl --out /tmp/opvt-ours

Writes, under --out: `ours/` (the recipe's log directory), `trl/` (TRL's run: `final/`, its per-step
`log.jsonl`, `prompts.jsonl`: the prompts it trained on), `eval/<label>/` (inspect logs and
summary.json of each trained model against the start), `results.json`, and the run's record in
benchmarks/results/on_policy_vs_trl.json (`--json-out`; none for `--quick`); prints a markdown table: CPU-seconds, peak
RSS, IFEval prompt-level strict before and after, the gain in points and the gain per CPU-hour, for
ours and TRL, then ours / TRL.

Why it is built this way:
- Same task on both sides: the `ifeval_synthetic` prompts (never the bundled eval prompts), the
  same reward (the strict fraction of a reply's IFEval instructions followed,
  `cookbook.eval.ifeval.score_response`; TRL gets it as a reward function), the same starting model
  (the bundled SmolLM2-135M-Instruct, by the directory of its dequantized weights), learning rate,
  beta, sampling temperature, max_new_tokens and pairs per optimizer step.
- What differs is each trainer's design: ours samples `--samples-per-prompt` replies and trains on
  best-vs-worst pairs (tied groups carry no signal); TRL's OnlineDPOTrainer always samples 2 replies
  per prompt, generates inside every training step, and trains on every pair, ties included (the
  first sample is then "chosen"). TRL runs its best CPU configuration: `bf16=True` (autocast over
  fp32 weights) and gradient checkpointing off (its default turns the KV cache off during
  generation, which costs minutes per step on a CPU). TRL's reference is the starting model
  throughout; ours is the recipe's default (the model each round starts from). The learning rate is
  constant on both sides (ours: `lr_schedule=constant`): a run stopped by a budget has no known
  length to decay over.
- Each side trains in its own process, so its CPU-seconds and peak RSS (`os.wait4`'s rusage: all
  threads, setup and checkpoint writing included) are its own; `--threads 1` (the default) makes
  CPU-seconds robust to other jobs on the machine.
- One budget: with `--cpu-budget-s`, TRL stops at the first step end after its process has spent
  it (a TrainerCallback on `resource.getrusage`) and saves; ours samples rounds until its process
  has spent it (unless --rounds is given) and then gets SIGTERM, which our loop answers by saving
  a checkpoint at the step boundary (its newest checkpoint is then evaluated). Without `--cpu-budget-s`, ours runs its `--rounds` and TRL gets
  exactly the CPU-seconds ours spent. Either way both overrun by less than a step, and the table
  reports what each really spent.
- Each trained model is evaluated beside the starting model: `cookbook.eval.run_inspect_evals
  compare_model_path=...` on the test half of the bundled IFEval set (`--eval-split`; the recipe's
  defaults were tuned on the dev half; HF_HUB_OFFLINE=1 pins the bundled set), greedy, in its own
  process, which gives each side's gain with its paired-bootstrap 95% interval.
- Part (b), generated tokens per CPU-second of our sampler against plain `transformers` generate,
  is `benchmarks/sampler_throughput.py`, run at the end with this run's --temperature,
  --max-new-tokens and --threads, fp32 and bf16 autocast (`--sampler-args` replaces these options,
  `--skip-sampler` leaves it out).

This module imports neither torch nor TRL at the top: the parent process only orchestrates, and
the pure helpers (reward wrapper, table, ratios) are tested without TRL (tests/test_on_policy_benchmark.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OURS_PYTHON = REPO / ".venv" / "bin" / "python"
TRL_PYTHON = REPO / "benchmarks" / ".venv-bench" / "bin" / "python"
SAMPLER_BENCHMARK = REPO / "benchmarks" / "sampler_throughput.py"
RECIPE = "cookbook.recipes.preference.on_policy"
BUNDLED_MODEL = "smollm2-135m-instruct"
HEADLINE_METRIC = "prompt_level_strict"
EXIT_STOPPED = 130  # our CLI's status for a run stopped by SIGINT/SIGTERM (after it saved)

# Defaults of the full comparison: the recipe's own (micro-batches of 4 pairs keep TRL's trainer under
# ~10 GiB), and the smoke configuration --quick puts in their place (an option given on the command
# line wins over both).
DEFAULTS = dict(num_prompts=256, prompts_per_round=64, samples_per_prompt=4, max_new_tokens=256, temperature=0.7,
                lr=3e-5, beta=0.1, batch_size=16, micro_batch_size=4, rounds=2, steps_per_round=None,
                trl_max_steps=None, eval_limit=None, eval_max_tokens=512)
# With a budget and no --rounds, ours runs rounds until the budget stops it.
UNTIL_BUDGET_ROUNDS = 10_000
QUICK = dict(num_prompts=4, prompts_per_round=4, samples_per_prompt=4, max_new_tokens=16, batch_size=2,
             micro_batch_size=2, rounds=1, steps_per_round=2, trl_max_steps=2, eval_limit=4, eval_max_tokens=32)


# ----------------------------------------------------------------------------------------------
# The reward, as TRL calls it (pure; no TRL needed)


def completion_text(completion: Any) -> str:
    """The reply's text: TRL hands a conversational completion as `[{"role": "assistant", "content": ...}]`
    and a plain one as a string."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion if message.get("role") == "assistant")


def strict_fraction(response: str, row: dict[str, Any]) -> float:
    """Fraction of the row's IFEval instructions the reply follows (strict): the on-policy recipe's
    `reward=ifeval`."""
    from cookbook.eval.ifeval import score_response

    verdicts = score_response(response, row)["strict"]
    return sum(verdicts) / len(verdicts)


def ifeval_reward(prompts: list, completions: list, ifeval: list[str], **_: Any) -> list[float]:
    """TRL reward function. `ifeval` is the data set's column of the same name (the IFEval row as a
    JSON string: Arrow would merge the rows' differently-keyed kwargs dicts into one struct with
    nulls); TRL repeats it for the prompt's second sample and adds kwargs of its own (trainer_state)."""
    return [strict_fraction(completion_text(c), json.loads(row)) for c, row in zip(completions, ifeval, strict=True)]


# ----------------------------------------------------------------------------------------------
# Figures and the table (pure)


def gain_points(before: float | None, after: float | None) -> float | None:
    """IFEval gain in percentage points."""
    return None if before is None or after is None else 100.0 * (after - before)


def per_cpu_hour(points: float | None, cpu_seconds: float) -> float | None:
    return None if points is None or cpu_seconds <= 0 else points / (cpu_seconds / 3600.0)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs; None where it says nothing (a missing figure, or theirs <= 0: a gain ratio
    against no gain or a loss is not a speed-up)."""
    if ours is None or theirs is None or theirs <= 0 or ours != ours or theirs != theirs:
        return None
    return ours / theirs


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def side_figures(side: dict[str, Any], before: float | None) -> dict[str, float | None]:
    """The figures of one side's row: its training cost and what its model gained over `before`
    (with the paired 95% interval of that gain, in points, where the eval compared the two)."""
    after = side.get("eval", {}).get(HEADLINE_METRIC)
    points = gain_points(before, after)
    interval = side.get("eval", {}).get("gain_interval")
    return {"cpu_seconds": side["cpu_seconds"], "wall_seconds": side["wall_seconds"],
            "peak_rss_gib": side["peak_rss_bytes"] / 2**30, "after": after, "gain_points": points,
            "gain_interval_points": None if interval is None else [100.0 * bound for bound in interval],
            "gain_per_cpu_hour": per_cpu_hour(points, side["cpu_seconds"])}


def format_table(sides: dict[str, dict[str, Any]], before: float | None) -> str:
    lines = ["| impl | steps | CPU-s | wall s | peak RSS GiB | IFEval strict before | after | gain (points) "
             "| 95% interval | gain / CPU-hour | stopped by |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for name, side in sides.items():
        f = side_figures(side, before)
        low_high = f["gain_interval_points"]
        interval = "n/a" if low_high is None else f"[{low_high[0]:+.1f}, {low_high[1]:+.1f}]"
        lines.append(f"| {name} | {side.get('steps', 'n/a')} | {f['cpu_seconds']:,.0f} | {f['wall_seconds']:,.0f} | "
                     f"{f['peak_rss_gib']:.2f} | {_fmt(before, '.4f')} | {_fmt(f['after'], '.4f')} | "
                     f"{_fmt(f['gain_points'], '+.1f')} | {interval} | {_fmt(f['gain_per_cpu_hour'], '+.2f')} | "
                     f"{side.get('stopped_by', 'n/a')} |")
    return "\n".join(lines)


def format_ratios(sides: dict[str, dict[str, Any]], before: float | None) -> str:
    if "ours" not in sides or "trl" not in sides:
        return ""
    ours, trl = side_figures(sides["ours"], before), side_figures(sides["trl"], before)

    def times(key: str, why: str = "") -> str:
        value = ratio(ours[key], trl[key])
        return f"x{value:.2f}" if value is not None else f"n/a{why}"

    no_gain = " (TRL gained nothing)" if trl["gain_points"] is not None and trl["gain_points"] <= 0 else ""
    return (f"- ours / TRL: IFEval gain per CPU-hour {times('gain_per_cpu_hour', no_gain)}, "
            f"gain {times('gain_points', no_gain)}, CPU-s {times('cpu_seconds')}, peak RSS {times('peak_rss_gib')}")


def prompt_level_metrics(summary: dict[str, Any], task: str = "cookbook/ifeval", label: str = "model") -> dict[str, float]:
    """The headline metrics of `task` from run_inspect_evals' summary.json (one model: label "model";
    against a base model: "trained" and "base")."""
    for result in summary["results"][label]:
        if result["task"] == task and result["status"] == "success":
            return {**result["metrics"], "samples": result["samples"]}
    raise ValueError(f"summary.json holds no successful {task} result")


def newest_checkpoint(log_path: Path) -> Path | None:
    """`final/` when the run finished, else its newest `step_*` checkpoint (a budget stop saves one)."""
    if (log_path / "final" / "config.json").exists():
        return log_path / "final"
    steps = sorted(p for p in log_path.glob("step_*") if (p / "config.json").exists())
    return steps[-1] if steps else None


# ----------------------------------------------------------------------------------------------
# Child processes: CPU-seconds and peak RSS of each


@dataclass
class ChildRun:
    returncode: int
    cpu_seconds: float
    wall_seconds: float
    peak_rss_bytes: int
    stopped_by_budget: bool = False


def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a running process, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_child(command: list[str], env: dict[str, str], log_file: Path, cpu_budget_s: float | None = None,
              grace_s: float = 900.0) -> ChildRun:
    """Run `command` with output to `log_file`. With a budget, SIGTERM once the process has spent it
    (our loop then saves at the step boundary), SIGKILL `grace_s` later."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {shlex.join(command)}\n  (output: {log_file})", flush=True)
    start = time.perf_counter()
    with open(log_file, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    stopped_at = None
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if cpu_budget_s is not None:
            try:
                spent = _proc_cpu_seconds(process.pid)
            except (FileNotFoundError, ProcessLookupError):
                spent = 0.0
            if stopped_at is None and spent >= cpu_budget_s:
                print(f"  CPU budget spent ({spent:.0f} CPU-s): SIGTERM, the run saves and stops", flush=True)
                process.send_signal(signal.SIGTERM)
                stopped_at = time.perf_counter()
            elif stopped_at is not None and time.perf_counter() - stopped_at > grace_s:
                process.kill()
        time.sleep(0.5)
    process.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(returncode=process.returncode, cpu_seconds=usage.ru_utime + usage.ru_stime,
                    wall_seconds=time.perf_counter() - start, peak_rss_bytes=usage.ru_maxrss * 1024,
                    stopped_by_budget=stopped_at is not None)


def child_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _tail(path: Path, lines: int = 8) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


# ----------------------------------------------------------------------------------------------
# Ours: the recipe, through its CLI


def ours_command(args) -> list[str]:
    options = {
        "log_path": args.out / "ours", "prompts": "ifeval_synthetic", "prompts.num_prompts": args.num_prompts,
        "prompts.seed": args.prompt_seed, "reward": "ifeval", "rounds": args.rounds,
        "prompts_per_round": args.prompts_per_round, "lr_schedule": "constant",
        "samples_per_prompt": args.samples_per_prompt, "steps_per_round": args.steps_per_round,
        "batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size, "learning_rate": args.lr,
        "dpo_beta": args.beta, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
        "eval_ifeval": "false", "behavior_if_log_dir_exists": "delete",
    }
    argv = [f"{key}={value}" for key, value in options.items() if value is not None]
    return [str(args.ours_python), "-m", RECIPE, *argv, *args.ours_arg]


def run_ours(args, budget: float | None) -> dict[str, Any]:
    log_path = args.out / "ours"
    # Start clean: the recipe reuses a round's stored samples (rounds/<n>/) found in its log_path,
    # even from a run with other settings that stopped before its first step.
    shutil.rmtree(log_path, ignore_errors=True)
    child = run_child(ours_command(args), child_env(args.threads), args.out / "ours.log", budget)
    checkpoint = newest_checkpoint(log_path)
    log_tail = _tail(args.out / "ours.log")
    # Exit 2 with a checkpoint: the recipe stopped itself (a round whose replies all tied gives no
    # pair); the model it trained so far is what this side bought.
    if checkpoint is None or child.returncode not in (0, 2, EXIT_STOPPED):
        raise SystemExit(f"our recipe failed (exit {child.returncode}); last lines of {args.out / 'ours.log'}:\n"
                         f"{log_tail}")
    stopped_by = "budget" if child.stopped_by_budget else "rounds done"
    if child.returncode == 2:
        error = next((line for line in reversed(log_tail.splitlines()) if line.startswith("error:")), "error")
        stopped_by = "recipe: " + error.removeprefix("error: ").split(" (")[0].split(";")[0]
    metrics = [json.loads(line) for line in _read_lines(log_path / "metrics.jsonl")]
    steps = sum(1 for m in metrics if "learning_rate" in m)
    return {**asdict(child), "checkpoint": str(checkpoint), "steps": steps, "stopped_by": stopped_by,
            "sampled_reward_by_round": [m["samples/reward_mean"] for m in metrics if "samples/reward_mean" in m]}


def _read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ----------------------------------------------------------------------------------------------
# Prompts (shared by both sides)


def load_prompt_rows(num_prompts: int, seed: int, stand_in: bool) -> list[dict[str, Any]]:
    """[{key, messages, ifeval}]: the recipe's `ifeval_synthetic` prompts, or with `stand_in` the
    bundled IFEval *eval* rows as user messages (smoke tests of the TRL side only: they are the
    prompts we evaluate on)."""
    if stand_in:
        from cookbook.eval.ifeval import load_ifeval_rows

        rows, _ = load_ifeval_rows("bundled")
        return [{"key": str(r["key"]), "messages": [{"role": "user", "content": r["prompt"]}], "ifeval": r}
                for r in rows[:num_prompts]]
    from cookbook.on_policy.prompts import PROMPT_SOURCES

    items = PROMPT_SOURCES.resolve("ifeval_synthetic")(num_prompts=num_prompts, seed=seed)()
    return [{"key": str(item.key), "messages": list(item.messages), "ifeval": dict(item.ifeval)} for item in items]


# ----------------------------------------------------------------------------------------------
# TRL's OnlineDPOTrainer (runs in benchmarks/.venv-bench, as a child of the driver)


def trl_config_kwargs(args, output_dir: str) -> dict[str, Any]:
    """OnlineDPOConfig's options for this comparison (kept separate so the report can print them)."""
    accumulation, remainder = divmod(args.batch_size, args.micro_batch_size)
    if remainder:
        raise SystemExit(f"--batch-size {args.batch_size} is not a multiple of --micro-batch-size {args.micro_batch_size}")
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=args.micro_batch_size,  # prompts per forward; one pair each
        gradient_accumulation_steps=accumulation,  # pairs per optimizer step = ours' batch_size
        max_steps=args.trl_max_steps or 1_000_000,  # the CPU budget ends the run
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=[args.beta],
        loss_type="sigmoid",
        max_new_tokens=args.max_new_tokens,
        max_length=args.max_new_tokens + 512,  # never truncates a prompt (TRL cuts prompts from the left)
        temperature=args.temperature,
        top_k=0,
        top_p=1.0,
        gradient_checkpointing=False,  # True (TRL's default) also turns generation's KV cache off
        bf16=True,  # autocast over fp32 weights: TRL's fastest CPU configuration
        use_cpu=True,
        dataloader_num_workers=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
    )


def trl_main(args) -> None:
    """Train with OnlineDPOTrainer until the CPU budget is spent; write final/ and result.json."""
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from cookbook.models import bundled_model_dir, load_tokenizer
    from cookbook.renderers import default_renderer_name, get_renderer

    torch.set_num_threads(args.threads)
    out = args.out / "trl"
    out.mkdir(parents=True, exist_ok=True)
    rows = load_prompt_rows(args.num_prompts, args.prompt_seed, args.stand_in_prompts)
    with open(out / "prompts.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    dataset = datasets.Dataset.from_list([{"prompt": r["messages"], "ifeval": json.dumps(r["ifeval"])} for r in rows])

    model_dir = bundled_model_dir()
    tokenizer = load_tokenizer(str(model_dir))
    # TRL renders prompts with the tokenizer's chat template; ours (and the eval) with our renderer.
    renderer = get_renderer(default_renderer_name(tokenizer), tokenizer)
    mismatches = sum(
        tokenizer(tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False),
                  add_special_tokens=False)["input_ids"] != renderer.build_generation_prompt(r["messages"])
        for r in rows)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    budget = args.trl_cpu_budget_s

    class CPUBudget(TrainerCallback):
        """Stops training at the first step end after the process has spent the budget; logs each step."""

        def __init__(self):
            self.steps, self.log = 0, open(out / "log.jsonl", "w")

        def on_step_end(self, _args, state, control, **_):
            self.steps = state.global_step
            usage = resource.getrusage(resource.RUSAGE_SELF)
            if budget is not None and usage.ru_utime + usage.ru_stime >= budget:
                control.should_training_stop = True

        def on_log(self, _args, state, control, logs=None, **_):
            usage = resource.getrusage(resource.RUSAGE_SELF)
            self.log.write(json.dumps({"step": state.global_step, "cpu_s": usage.ru_utime + usage.ru_stime,
                                       **(logs or {})}) + "\n")
            self.log.flush()

    callback = CPUBudget()
    config_kwargs = trl_config_kwargs(args, str(out / "trainer"))
    trainer = OnlineDPOTrainer(model=model, reward_funcs=ifeval_reward, args=OnlineDPOConfig(**config_kwargs),
                               train_dataset=dataset, processing_class=tokenizer, callbacks=[callback])
    # The two settings this comparison depends on, as the trainer resolved them.
    if not trainer.generation_config.use_cache or trainer.accelerator.mixed_precision != "bf16":
        raise SystemExit(f"TRL would run with use_cache={trainer.generation_config.use_cache}, "
                         f"mixed_precision={trainer.accelerator.mixed_precision}")
    trainer.train()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    trainer.save_model(str(out / "final"))
    stopped_by = "budget" if budget is not None and usage.ru_utime + usage.ru_stime >= budget else "max steps"
    result = {"steps": callback.steps, "stopped_by": stopped_by, "cpu_seconds_at_stop": usage.ru_utime + usage.ru_stime,
              "prompt_template_mismatches": mismatches, "config": {k: v for k, v in config_kwargs.items()
                                                                   if k != "output_dir"},
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")


def run_trl(args, budget: float | None) -> dict[str, Any]:
    command = [str(args.trl_python), str(Path(__file__).resolve()), *args.argv, "--run-trl",
               "--trl-cpu-budget-s", "none" if budget is None else str(budget)]
    child = run_child(command, child_env(args.threads), args.out / "trl.log")
    result_file = args.out / "trl" / "result.json"
    if child.returncode != 0 or not result_file.exists():
        raise SystemExit(f"the TRL run failed (exit {child.returncode}); last lines of {args.out / 'trl.log'}:\n"
                         f"{_tail(args.out / 'trl.log')}")
    result = json.loads(result_file.read_text())
    if result["prompt_template_mismatches"]:
        print(f"warning: TRL's chat template gives other prompt tokens than our renderer for "
              f"{result['prompt_template_mismatches']} prompts", flush=True)
    steps = [json.loads(line) for line in _read_lines(args.out / "trl" / "log.jsonl")]
    return {**asdict(child), **result, "checkpoint": str(args.out / "trl" / "final"),
            "sampled_reward_by_step": [s["objective/scores"] for s in steps if "objective/scores" in s]}


# ----------------------------------------------------------------------------------------------
# Evaluation: run_inspect_evals on a half of the bundled IFEval set, greedy, against the starting model


def evaluate(args, label: str, model_path: str) -> dict[str, Any]:
    """One trained model and the starting model on the same prompts (one process): both scores and
    the paired interval of the gain."""
    log_dir = args.out / "eval" / label
    options = {"model_path": model_path, "compare_model_path": BUNDLED_MODEL, "tasks": "cookbook/ifeval",
               "ifeval_source": "bundled", "ifeval_split": args.eval_split, "temperature": 0,
               "max_tokens": args.eval_max_tokens, "limit": args.eval_limit, "log_dir": log_dir,
               "batch_size": args.eval_batch_size,
               "num_threads": args.threads, "display": "plain"}
    command = [str(args.ours_python), "-m", "cookbook.eval.run_inspect_evals",
               *(f"{k}={v}" for k, v in options.items() if v is not None)]
    child = run_child(command, child_env(args.threads), args.out / f"eval-{label}.log")
    summary = log_dir / "summary.json"
    if child.returncode != 0 or not summary.exists():
        raise SystemExit(f"the eval of {label} failed (exit {child.returncode}); last lines of "
                         f"{args.out / f'eval-{label}.log'}:\n{_tail(args.out / f'eval-{label}.log')}")
    written = json.loads(summary.read_text())
    metrics = prompt_level_metrics(written, label="trained")
    start = prompt_level_metrics(written, label="base")
    paired = next(c for c in written["comparison"] if c["task"] == "cookbook/ifeval" and c["metric"] == HEADLINE_METRIC)
    print(f"  {label}: IFEval {HEADLINE_METRIC} {metrics[HEADLINE_METRIC]:.4f} (start {start[HEADLINE_METRIC]:.4f}, "
          f"95% interval of the gain [{paired['ci_low']:+.4f}, {paired['ci_high']:+.4f}]) on {metrics['samples']} "
          f"prompts ({child.cpu_seconds:.0f} CPU-s)", flush=True)
    return {**metrics, "start": start, "gain_interval": [paired["ci_low"], paired["ci_high"]],
            "eval_cpu_seconds": child.cpu_seconds, "eval_wall_seconds": child.wall_seconds}


def sampler_argv(args) -> list[str]:
    """benchmarks/sampler_throughput.py's options: this run's sampling settings, unless
    --sampler-args gives its own."""
    if args.sampler_args is not None:
        return shlex.split(args.sampler_args)
    argv = ["--threads", str(args.threads), "--temperatures", str(args.temperature),
            "--max-new-tokens", str(args.max_new_tokens)]
    return argv + (["--quick"] if args.quick else [])


def run_sampler(args) -> dict[str, Any]:
    """Part (b): benchmarks/sampler_throughput.py in its own process; its table is kept verbatim."""
    if not SAMPLER_BENCHMARK.exists():
        return {"skipped": f"{SAMPLER_BENCHMARK.relative_to(REPO)} does not exist"}
    json_out = args.out / "sampler.json"
    command = [str(args.ours_python), str(SAMPLER_BENCHMARK), *sampler_argv(args), "--json-out", str(json_out)]
    log_file = args.out / "sampler_throughput.log"
    child = run_child(command, child_env(args.threads), log_file)
    table = "\n".join(line for line in _read_lines(log_file) if line.startswith("|"))
    return {"command": shlex.join(command), "returncode": child.returncode, "table": table or _tail(log_file),
            "results": json.loads(json_out.read_text()) if json_out.exists() else None}


# ----------------------------------------------------------------------------------------------
# Driver


def run_jobs(jobs: dict[str, Callable[[], Any]], at_once: int) -> Iterator[tuple[str, Any]]:
    """Yield (name, result) of the named jobs, in order, running `at_once` of them at a time. With 1,
    a job starts only after the previous one's result was taken, so it may read it. Each job runs
    its own child process, whose CPU-seconds and peak RSS are its own either way."""
    if at_once <= 1:
        for name, job in jobs.items():
            yield name, job()
        return
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        for name, future in futures.items():
            yield name, future.result()


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output directory (results.json, logs, checkpoints)")
    parser.add_argument("--json-out", type=Path, default=None,
                        help="where the run's record goes (default benchmarks/results/on_policy_vs_trl.json; "
                             "--quick writes none unless given)")
    parser.add_argument("--cpu-budget-s", type=float, default=None,
                        help="CPU-seconds each side may spend (whole training process); default: ours runs its "
                             "--rounds and TRL gets what ours spent")
    parser.add_argument("--quick", action="store_true", help="tiny smoke configuration (see QUICK in the source)")
    parser.add_argument("--num-prompts", type=int)
    parser.add_argument("--samples-per-prompt", type=int, help="ours only: TRL's OnlineDPOTrainer always samples 2")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--beta", type=float)
    parser.add_argument("--batch-size", type=int, help="pairs per optimizer step (TRL: prompts per step)")
    parser.add_argument("--micro-batch-size", type=int)
    parser.add_argument("--rounds", type=int,
                        help="ours: sampling rounds (default 2, the recipe's; with --cpu-budget-s, as many as the budget allows)")
    parser.add_argument("--prompts-per-round", type=int, help="ours: prompts sampled per round (default 64, the recipe's)")
    parser.add_argument("--steps-per-round", type=int, help="ours: optimizer steps per round (default: the recipe's)")
    parser.add_argument("--trl-max-steps", type=int, help="TRL: stop after this many steps even within the budget")
    parser.add_argument("--eval-split", default="test", choices=["test", "dev", "all"],
                        help="half of the bundled IFEval prompts to evaluate on (test: where figures are reported)")
    parser.add_argument("--eval-limit", type=int, help="evaluate on the first N prompts of that half (default all)")
    parser.add_argument("--eval-max-tokens", type=int, help="most new tokens per eval reply (default 512)")
    parser.add_argument("--eval-batch-size", type=int, default=32, help="requests the eval generates together")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every child process")
    parser.add_argument("--jobs", type=int, default=1,
                        help="child processes at once: 2 trains both sides together, then runs the evals two at a "
                             "time (needs --cpu-budget-s: without one, TRL's budget is what ours spent)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt-seed", type=int, default=0, help="seed of the ifeval_synthetic prompts")
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--skip-eval", action="store_true", help="train only (no IFEval before/after)")
    parser.add_argument("--stand-in-prompts", action="store_true",
                        help="TRL smoke tests only: train on the bundled IFEval eval rows instead of ifeval_synthetic")
    parser.add_argument("--ours-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra option for the recipe (repeatable)")
    parser.add_argument("--skip-sampler", action="store_true", help="skip part (b), sampler_throughput.py")
    parser.add_argument("--sampler-args", default=None,
                        help="options for benchmarks/sampler_throughput.py (default: this run's sampling settings)")
    parser.add_argument("--ours-python", type=Path, default=OURS_PYTHON)
    parser.add_argument("--trl-python", type=Path, default=TRL_PYTHON)
    parser.add_argument("--run-trl", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trl-cpu-budget-s", type=lambda s: None if s == "none" else float(s), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cpu_budget_s is not None and args.rounds is None:
        args.rounds = UNTIL_BUDGET_ROUNDS
    if args.jobs > 1 and args.cpu_budget_s is None:
        parser.error("--jobs > 1 needs --cpu-budget-s: without one, TRL's budget is what ours spent, so it runs after ours")
    for key, value in {**DEFAULTS, **(QUICK if args.quick else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out.resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = [a for a in argv if a not in ("--skip-trl", "--skip-ours")]
    if args.run_trl:
        return trl_main(args)
    if args.stand_in_prompts and not args.skip_ours:
        raise SystemExit("--stand-in-prompts trains on the eval prompts: only for TRL smoke tests (add --skip-ours)")
    if args.skip_ours and args.cpu_budget_s is None and not args.skip_trl and args.trl_max_steps is None:
        raise SystemExit("--skip-ours needs --cpu-budget-s (or --trl-max-steps): TRL's budget is otherwise what ours spent")
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_record import RESULTS_DIR, finish_record, start_record

    record = start_record(__file__, argv)
    trainers = {}
    if not args.skip_ours:
        trainers["ours"] = lambda: run_ours(args, args.cpu_budget_s)
    if not args.skip_trl:
        # Without a budget TRL gets what ours spent: it starts after ours (parse_args keeps --jobs 1 then).
        trainers["trl"] = lambda: run_trl(args, args.cpu_budget_s if args.cpu_budget_s is not None
                                          else sides.get("ours", {}).get("cpu_seconds"))
    sides: dict[str, dict[str, Any]] = {}
    for name, side in run_jobs(trainers, args.jobs):
        sides[name] = side
        print(f"{name}: {side['cpu_seconds']:.0f} CPU-s, peak RSS {side['peak_rss_bytes'] / 2**30:.2f} GiB, "
              f"{side['steps']} steps ({side['stopped_by']})", flush=True)
    before = base = None
    if not args.skip_eval:
        evals = {name: lambda name=name, side=side: evaluate(args, name, side["checkpoint"]) for name, side in sides.items()}
        for name, score in run_jobs(evals, args.jobs):
            sides[name]["eval"] = score
            base = score["start"]  # greedy: the same starting scores in every side's eval
        before = None if base is None else base[HEADLINE_METRIC]
    sampler = None if args.skip_sampler else run_sampler(args)

    settings = {k: getattr(args, k) for k in ("num_prompts", "samples_per_prompt", "max_new_tokens", "temperature",
                                              "lr", "beta", "batch_size", "micro_batch_size", "rounds",
                                              "steps_per_round", "cpu_budget_s", "eval_limit", "eval_max_tokens",
                                              "threads")}
    print()
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print(format_table(sides, before))
    print(format_ratios(sides, before))
    if sampler:
        print("\nGenerated tokens per CPU-second, our sampler vs transformers generate (sampler_throughput.py):")
        print(sampler.get("skipped") or sampler["table"])
    results = {"settings": settings, "python": platform.python_version(), "load_average": os.getloadavg(),
               "start_eval": base, "sides": sides,
               "figures": {name: side_figures(side, before) for name, side in sides.items()}, "sampler": sampler,
               "table": format_table(sides, before), "ratios": format_ratios(sides, before)}
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults: {args.out / 'results.json'}")
    record_path = args.json_out or (None if args.quick else RESULTS_DIR / "on_policy_vs_trl.json")
    if record_path:
        record.update(json.loads(json.dumps(results, default=str)))
        print(f"record: {finish_record(record, record_path)}")


if __name__ == "__main__":
    main()
