"""Sampling trainers under one CPU budget: our on-policy DPO and RL (GRPO-family) recipes against
TRL's OnlineDPOTrainer and GRPOTrainer, judged by what each buys on IFEval per CPU-hour.

    # after bash benchmarks/setup_bench_env.sh, with COOKBOOK_CACHE=/tmp/cbcache HF_HUB_OFFLINE=1:
    # RL with verifiable rewards: ours on-policy DPO, ours RL, TRL's GRPOTrainer, 1,250 CPU-s each, two
    # at a time on 2 cores, then three evals (about 50 minutes; record results/rl_vs_trl.json). NOT RUN YET:
    benchmarks/.venv-bench/bin/python benchmarks/on_policy_vs_trl.py --sides ours_on_policy,ours_rl,trl_grpo \\
        --cpu-budget-s 1250 --jobs 2 --skip-sampler --out runs/rl-vs-trl
    # on-policy DPO against TRL's OnlineDPOTrainer (about 40 minutes; record results/on_policy_vs_trl.json):
    benchmarks/.venv-bench/bin/python benchmarks/on_policy_vs_trl.py --sides ours_on_policy,trl_online_dpo \\
        --cpu-budget-s 1250 --jobs 2 --skip-sampler --out runs/on-policy-vs-trl
    # a smoke run of every side end to end (about 4 CPU-minutes, no record):
    benchmarks/.venv-bench/bin/python benchmarks/on_policy_vs_trl.py --quick --skip-sampler --out /tmp/rlvt

`--sides` (default all four): `ours_on_policy` (cookbook.recipes.preference.on_policy), `ours_rl`
(cookbook.recipes.rl.train), `trl_grpo` (trl.GRPOTrainer), `trl_online_dpo`
(trl.experimental.online_dpo.OnlineDPOTrainer). Writes, under --out: `<side>/` for each (ours: the
recipe's log directory; TRL's: `final/`, its per-step `log.jsonl`, `prompts.jsonl`: the prompts it
trained on, `result.json`), `<side>.log`, `eval/<side>/` (inspect logs and summary.json of each
trained model against the start), `results.json`, and the run's record in benchmarks/results/
(`rl_vs_trl.json` once an RL side runs, else `on_policy_vs_trl.json`; `--json-out`; none for
`--quick`); prints a markdown table: CPU-seconds, peak RSS, IFEval prompt-level strict before and
after, the gain in points with its 95% interval and the gain per CPU-hour, one row a side, then
ours / TRL for every pair.

Why it is built this way:
- Same task on every side: the `ifeval_synthetic` prompts (never the bundled eval prompts), the
  same reward (the strict fraction of a reply's IFEval instructions followed,
  `cookbook.eval.ifeval.score_response`; TRL gets it as a reward function), the same starting model
  (the bundled SmolLM2-135M-Instruct, by the directory of its dequantized weights), max_new_tokens
  and replies per prompt (`--samples-per-prompt`: the RL recipe's group_size, GRPO's
  num_generations; TRL's OnlineDPOTrainer always samples 2). The DPO sides share a learning rate and temperature (--lr, --temperature), beta and pairs per optimizer
  step; the RL sides share theirs (--rl-lr, --rl-temperature), replies per step and per forward,
  the advantage (`grpo`/`dr_grpo`: GRPO's `scale_rewards=group`/`none`), the loss aggregation
  (`token`/`sequence`: GRPO's `loss_type=dapo`/`grpo`), the clip range (GRPO's `epsilon`,
  `epsilon_high`), the KL weight (GRPO's `beta`; 0 loads no reference on either side) and updates
  per batch (GRPO's `num_iterations`).
- What differs is each trainer's design: our on-policy recipe samples `--samples-per-prompt`
  replies and trains on best-vs-worst pairs (tied groups carry no signal); TRL's OnlineDPOTrainer
  generates 2 replies inside every training step and trains on every pair, ties included. Our RL
  recipe drops groups whose replies all scored the same before the trainer sees them; GRPOTrainer
  trains on them at advantage 0 (no gradient, the forward and backward still spent) and divides by
  the group's std + 1e-4 where ours adds 1e-6. TRL runs its best CPU configuration: `bf16=True`
  (autocast over fp32 weights), gradient checkpointing off (its default turns the KV cache off
  during generation, which costs minutes per step on a CPU), its own generate (`use_vllm=False`);
  ours sample with the native sampler in the training process (`sampler=native`: a vLLM engine's
  workers would escape the process's measured CPU and memory). The learning rate is constant on
  every side: a run stopped by a budget has no known length to decay over. Each family's learning rate
  and temperature default to its recipe's own, chosen on the dev half: 3e-5 and 0.7 for the DPO
  sides, 1e-4 and 1.0 for the RL sides.
- Each side trains in its own process, so its CPU-seconds and peak RSS (`os.wait4`'s rusage: all
  threads, setup and checkpoint writing included) are its own; `--threads 1` (the default) makes
  CPU-seconds robust to other jobs on the machine.
- One budget: with `--cpu-budget-s`, a TRL side stops at the first step end after its process has
  spent it (a TrainerCallback on `resource.getrusage`) and saves; ours sample rounds until their
  process has spent it (unless --rounds is given) and then get SIGTERM, which our loop answers by
  saving a checkpoint at the step boundary (the newest checkpoint is then evaluated). Without
  `--cpu-budget-s`, ours run their `--rounds` and each TRL side gets exactly the CPU-seconds its
  counterpart spent (trl_online_dpo: ours_on_policy's, trl_grpo: ours_rl's). Either way every side
  overruns by less than a step, and the table reports what each really spent.
- Each trained model is evaluated beside the starting model: `cookbook.eval.run_inspect_evals
  compare_model_path=...` on the test half of the bundled IFEval set (`--eval-split`; the recipes'
  defaults were tuned on the dev half; HF_HUB_OFFLINE=1 pins the bundled set), greedy, in its own
  process, which gives each side's gain with its paired-bootstrap 95% interval.
- Part (b), generated tokens per CPU-second of our sampler against plain `transformers` generate,
  is `benchmarks/sampler_throughput.py`, run at the end with this run's --temperature,
  --max-new-tokens and --threads, fp32 and bf16 autocast (`--sampler-args` replaces these options,
  `--skip-sampler` leaves it out).

This module imports neither torch nor TRL at the top: the parent process only orchestrates, and
the pure helpers (reward wrapper, sides, settings, table, ratios) are tested without TRL
(tests/test_on_policy_benchmark.py).
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
BUNDLED_MODEL = "smollm2-135m-instruct"
HEADLINE_METRIC = "prompt_level_strict"
EXIT_STOPPED = 130  # our CLI's status for a run stopped by SIGINT/SIGTERM (after it saved)

# The sides, in the order they train (ours first: without --cpu-budget-s a TRL side's budget is what
# its counterpart of ours spent). The recipe module of each of ours; the counterpart of each of TRL's.
SIDES = ("ours_on_policy", "ours_rl", "trl_grpo", "trl_online_dpo")
RECIPES = {"ours_on_policy": "cookbook.recipes.preference.on_policy", "ours_rl": "cookbook.recipes.rl.train"}
COUNTERPARTS = {"trl_online_dpo": "ours_on_policy", "trl_grpo": "ours_rl"}
RL_SIDES = ("ours_rl", "trl_grpo")

# Defaults of the full comparison: the on-policy recipe's own, chosen on the dev half (micro-batches
# of 4 pairs, or 8 replies, keep TRL's trainers under ~10 GiB), and the smoke configuration --quick
# puts in their place (an option given on the command line wins over both). The RL sides' batch is the
# RL recipe's (64 replies a step, 16 prompts x 4), and so are its learning rate and temperature (chosen on
# the dev half, benchmarks/results/tune_rl.json).
DEFAULTS = dict(num_prompts=256, prompts_per_round=64, samples_per_prompt=4, max_new_tokens=256, temperature=0.7,
                lr=3e-5, beta=0.1, batch_size=16, micro_batch_size=4, rl_lr=1e-4, rl_temperature=1.0,
                rl_batch_size=64, rl_micro_batch_size=8,
                rounds=2, steps_per_round=None, trl_max_steps=None, eval_limit=None, eval_max_tokens=512)
# With a budget and no --rounds, ours runs rounds until the budget stops it.
UNTIL_BUDGET_ROUNDS = 10_000
QUICK = dict(num_prompts=8, prompts_per_round=8, samples_per_prompt=4, max_new_tokens=16, batch_size=2,
             micro_batch_size=2, rl_batch_size=8, rl_micro_batch_size=4, rounds=1, steps_per_round=2,
             trl_max_steps=2, eval_limit=4, eval_max_tokens=32)
# Our RL recipe's advantages and loss aggregations, as GRPOConfig names them (rloo has no GRPOConfig
# equivalent: TRL has a separate trainer for it).
GRPO_SCALE_REWARDS = {"grpo": "group", "dr_grpo": "none"}
GRPO_LOSS_TYPES = {"token": "dapo", "sequence": "grpo"}


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


def grpo_reward_function(cut_off_reward: float | None, stop_token_ids: set[int]):
    """GRPO's reward function: `ifeval_reward`, with --cut-off-reward in place of the score of a reply
    that did not end in a stop token (cut off at max_completion_length), as our `cut_off_reward=`
    shapes it. TRL hands each reply's token ids up to and including its stop token."""
    if cut_off_reward is None:
        return ifeval_reward

    def ifeval_reward_cut_off(prompts: list, completions: list, ifeval: list[str], completion_ids: list[list[int]],
                              **_: Any) -> list[float]:
        scores = ifeval_reward(prompts, completions, ifeval)
        return [score if ids and ids[-1] in stop_token_ids else cut_off_reward
                for score, ids in zip(scores, completion_ids, strict=True)]

    return ifeval_reward_cut_off


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


def ratio_line(ours_name: str, trl_name: str, ours: dict[str, Any], trl: dict[str, Any]) -> str:
    """ours / TRL of each figure (side_figures of each)."""
    no_gain = f" ({trl_name} gained nothing)" if trl["gain_points"] is not None and trl["gain_points"] <= 0 else ""

    def times(key: str, why: str = "") -> str:
        value = ratio(ours[key], trl[key])
        return f"x{value:.2f}" if value is not None else f"n/a{why}"

    return (f"- {ours_name} / {trl_name}: IFEval gain per CPU-hour {times('gain_per_cpu_hour', no_gain)}, "
            f"gain {times('gain_points', no_gain)}, CPU-s {times('cpu_seconds')}, peak RSS {times('peak_rss_gib')}")


def format_ratios(sides: dict[str, dict[str, Any]], before: float | None) -> str:
    """One line per (ours, TRL) pair of the sides run."""
    figures = {name: side_figures(side, before) for name, side in sides.items()}
    return "\n".join(ratio_line(ours, trl, figures[ours], figures[trl])
                     for ours in figures if ours.startswith("ours_") for trl in figures if trl.startswith("trl_"))


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
# Ours: the recipes, through their CLIs


def side_lr_and_temperature(args, side: str) -> tuple[float, float]:
    """A side's learning rate and sampling temperature: --rl-lr and --rl-temperature on the RL sides,
    --lr and --temperature on the DPO sides."""
    return (args.rl_lr, args.rl_temperature) if side in RL_SIDES else (args.lr, args.temperature)


def _shared_options(args, side: str) -> dict[str, Any]:
    """What both of our recipes take alike. The native sampler on both: it samples in the training
    process, as TRL's generate does, where a vLLM engine's worker processes would escape this
    process's CPU-seconds and peak RSS."""
    learning_rate, temperature = side_lr_and_temperature(args, side)
    return {"log_path": args.out / side, "prompts": "ifeval_synthetic", "prompts.num_prompts": args.num_prompts,
            "prompts.seed": args.prompt_seed, "reward": "ifeval", "rounds": args.rounds, "lr_schedule": "constant",
            "learning_rate": learning_rate, "max_new_tokens": args.max_new_tokens, "temperature": temperature,
            "sampler": "native", "seed": args.seed, "behavior_if_log_dir_exists": "delete"}


def ours_command(args, side: str = "ours_on_policy") -> list[str]:
    if side == "ours_on_policy":
        options = {"prompts_per_round": args.prompts_per_round, "samples_per_prompt": args.samples_per_prompt,
                   "steps_per_round": args.steps_per_round, "batch_size": args.batch_size,
                   "micro_batch_size": args.micro_batch_size, "dpo_beta": args.beta, "eval_ifeval": "false"}
        extra = args.ours_arg
    else:
        options = {"group_size": args.samples_per_prompt, "batch_size": args.rl_batch_size,
                   "micro_batch_size": args.rl_micro_batch_size, "advantage": args.advantage,
                   "loss_aggregation": args.loss_aggregation, "clip_low": args.clip_low, "clip_high": args.clip_high,
                   "kl_coef": args.kl_coef, "updates_per_batch": args.updates_per_batch,
                   # "None" spelled out: a missing option would be the recipe's default (0).
                   "cut_off_reward": "None" if args.cut_off_reward is None else args.cut_off_reward}
        extra = args.rl_arg
    options = {**_shared_options(args, side), **options}
    argv = [f"{key}={value}" for key, value in options.items() if value is not None]
    return [str(args.ours_python), "-m", RECIPES[side], *argv, *extra]


def run_ours(args, side: str, budget: float | None) -> dict[str, Any]:
    log_path, log_file = args.out / side, args.out / f"{side}.log"
    # Start clean: the recipes reuse a round's stored samples (rounds/<n>/) found in their log_path,
    # even from a run with other settings that stopped before its first step.
    shutil.rmtree(log_path, ignore_errors=True)
    child = run_child(ours_command(args, side), child_env(args.threads), log_file, budget)
    checkpoint = newest_checkpoint(log_path)
    log_tail = _tail(log_file)
    # Exit 2 with a checkpoint: the recipe stopped itself (on-policy: a round whose replies all tied
    # gives no pair; RL: max_empty_rounds rounds of such groups); the model so far is what it bought.
    if checkpoint is None or child.returncode not in (0, 2, EXIT_STOPPED):
        raise SystemExit(f"{side} failed (exit {child.returncode}); last lines of {log_file}:\n{log_tail}")
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
# Prompts (shared by every side)


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
# TRL's trainers (run in benchmarks/.venv-bench, as children of the driver)


def _accumulation(batch_size: int, micro_batch_size: int, batch_option: str) -> int:
    accumulation, remainder = divmod(batch_size, micro_batch_size)
    if remainder:
        raise SystemExit(f"{batch_option} {batch_size} is not a multiple of its micro-batch size {micro_batch_size}")
    return accumulation


def _trainer_kwargs(args, side: str, output_dir: str) -> dict[str, Any]:
    """The options both TRL configs share: the schedule, sampling and TRL's best CPU configuration."""
    learning_rate, temperature = side_lr_and_temperature(args, side)
    return dict(
        output_dir=output_dir,
        max_steps=args.trl_max_steps or 1_000_000,  # the CPU budget ends the run
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        temperature=temperature,
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


def online_dpo_config_kwargs(args, output_dir: str) -> dict[str, Any]:
    """OnlineDPOConfig's options: pairs per optimizer step = our on-policy batch_size."""
    return dict(
        **_trainer_kwargs(args, "trl_online_dpo", output_dir),
        per_device_train_batch_size=args.micro_batch_size,  # prompts per forward; one pair each
        gradient_accumulation_steps=_accumulation(args.batch_size, args.micro_batch_size, "--batch-size"),
        beta=[args.beta],
        loss_type="sigmoid",
        max_new_tokens=args.max_new_tokens,
        max_length=args.max_new_tokens + 512,  # never truncates a prompt (TRL cuts prompts from the left)
    )


def grpo_config_kwargs(args, output_dir: str) -> dict[str, Any]:
    """GRPOConfig's options: our RL recipe's settings under TRL's names. Its batch sizes count
    replies, as ours do; one generation of --rl-batch-size replies per optimizer step (TRL's default
    steps_per_generation = the accumulation steps), each reused num_iterations times."""
    if args.advantage not in GRPO_SCALE_REWARDS:
        raise SystemExit(f"--advantage {args.advantage} has no GRPOTrainer equivalent "
                         f"(one of {', '.join(GRPO_SCALE_REWARDS)})")
    return dict(
        **_trainer_kwargs(args, "trl_grpo", output_dir),
        per_device_train_batch_size=args.rl_micro_batch_size,  # replies per forward
        gradient_accumulation_steps=_accumulation(args.rl_batch_size, args.rl_micro_batch_size, "--rl-batch-size"),
        num_generations=args.samples_per_prompt,  # our group_size
        max_completion_length=args.max_new_tokens,
        num_iterations=args.updates_per_batch,
        scale_rewards=GRPO_SCALE_REWARDS[args.advantage],
        loss_type=GRPO_LOSS_TYPES[args.loss_aggregation],
        epsilon=args.clip_low,
        epsilon_high=args.clip_high,
        beta=args.kl_coef,  # 0: no reference model is loaded, as ours loads none with kl_coef=0
        mask_truncated_completions=False,  # ours trains on cut-off replies too
        use_vllm=False,
    )


def generation_uses_cache(trainer: Any) -> bool:
    """Whether the trainer's generate keeps a KV cache: its generation config's use_cache, where
    unset (GRPOTrainer leaves it None) the model's generation config's, where unset transformers'
    default (True)."""
    for value in (trainer.generation_config.use_cache, getattr(trainer.model.generation_config, "use_cache", None)):
        if value is not None:
            return bool(value)
    return True


# side -> (module, config class, trainer class, its config options, its sampled-reward log key)
TRL_TRAINERS = {
    "trl_online_dpo": ("trl.experimental.online_dpo", "OnlineDPOConfig", "OnlineDPOTrainer",
                       online_dpo_config_kwargs, "objective/scores"),
    "trl_grpo": ("trl", "GRPOConfig", "GRPOTrainer", grpo_config_kwargs, "reward"),
}


def trl_main(args) -> None:
    """Train with the TRL trainer of side `args.run_trl` until the CPU budget is spent; write
    final/ and result.json."""
    import importlib

    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, TrainerCallback

    from cookbook.models import bundled_model_dir, load_tokenizer
    from cookbook.renderers import default_renderer_name, get_renderer

    module, config_name, trainer_name, config_options, _ = TRL_TRAINERS[args.run_trl]
    config_class, trainer_class = (getattr(importlib.import_module(module), name) for name in (config_name, trainer_name))
    torch.set_num_threads(args.threads)
    out = args.out / args.run_trl
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
    config_kwargs = config_options(args, str(out / "trainer"))
    stop_token_ids = {*renderer.get_stop_token_ids(), tokenizer.pad_token_id}
    reward_function = (grpo_reward_function(args.cut_off_reward, stop_token_ids) if args.run_trl == "trl_grpo"
                       else ifeval_reward)
    trainer = trainer_class(model=model, reward_funcs=reward_function, args=config_class(**config_kwargs),
                            train_dataset=dataset, processing_class=tokenizer, callbacks=[callback])
    # The two settings this comparison depends on, as the trainer resolved them.
    if not generation_uses_cache(trainer) or trainer.accelerator.mixed_precision != "bf16":
        raise SystemExit(f"TRL would run with use_cache={generation_uses_cache(trainer)}, "
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


def run_trl(args, side: str, budget: float | None) -> dict[str, Any]:
    command = [str(args.trl_python), str(Path(__file__).resolve()), *args.argv, "--run-trl", side,
               "--trl-cpu-budget-s", "none" if budget is None else str(budget)]
    log_file = args.out / f"{side}.log"
    child = run_child(command, child_env(args.threads), log_file)
    result_file = args.out / side / "result.json"
    if child.returncode != 0 or not result_file.exists():
        raise SystemExit(f"{side} failed (exit {child.returncode}); last lines of {log_file}:\n{_tail(log_file)}")
    result = json.loads(result_file.read_text())
    if result["prompt_template_mismatches"]:
        print(f"warning: TRL's chat template gives other prompt tokens than our renderer for "
              f"{result['prompt_template_mismatches']} prompts", flush=True)
    reward_key = TRL_TRAINERS[side][-1]
    steps = [json.loads(line) for line in _read_lines(args.out / side / "log.jsonl")]
    return {**asdict(child), **result, "checkpoint": str(args.out / side / "final"),
            "sampled_reward_by_step": [s[reward_key] for s in steps if reward_key in s]}


# ----------------------------------------------------------------------------------------------
# Evaluation: run_inspect_evals on a half of the bundled IFEval set, greedy, against the starting model


def evaluate(args, label: str, model_path: str) -> dict[str, Any]:
    """One trained model and the starting model on the same prompts (one process): both scores and
    the paired interval of the gain."""
    log_dir = args.out / "eval" / label
    options = {"model_path": model_path, "compare_model_path": BUNDLED_MODEL, "tasks": "cookbook/ifeval",
               "ifeval_source": "bundled", "ifeval_split": args.eval_split, "temperature": 0,
               "max_tokens": args.eval_max_tokens, "limit": args.eval_limit, "log_dir": log_dir,
               "batch_size": args.eval_batch_size, "sampler": "native",  # one vLLM engine per process: two models
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


def side_list(text: str) -> list[str]:
    """--sides: comma-separated names of SIDES, returned in SIDES' order (ours before TRL's)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SIDES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown side(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(SIDES)}")
    return [name for name in SIDES if name in names]


def record_name(sides: list[str]) -> str:
    """The record's file under benchmarks/results/: the RL comparison's once an RL side runs."""
    return "rl_vs_trl.json" if any(side in RL_SIDES for side in sides) else "on_policy_vs_trl.json"


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output directory (results.json, logs, checkpoints)")
    parser.add_argument("--sides", type=side_list, default=list(SIDES),
                        help=f"comma-separated sides to train and evaluate (default all: {','.join(SIDES)})")
    parser.add_argument("--json-out", type=Path, default=None,
                        help="where the run's record goes (default benchmarks/results/rl_vs_trl.json with an RL side, "
                             "else on_policy_vs_trl.json; --quick writes none unless given)")
    parser.add_argument("--cpu-budget-s", type=float, default=None,
                        help="CPU-seconds each side may spend (whole training process); default: ours run their "
                             "--rounds and each TRL side gets what its counterpart of ours spent")
    parser.add_argument("--quick", action="store_true", help="tiny smoke configuration (see QUICK in the source)")
    parser.add_argument("--num-prompts", type=int)
    parser.add_argument("--samples-per-prompt", type=int,
                        help="replies per prompt: the on-policy recipe's samples_per_prompt, the RL recipe's "
                             "group_size, GRPO's num_generations (TRL's OnlineDPOTrainer always samples 2)")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--temperature", type=float, help="DPO sides: sampling temperature (default 0.7)")
    parser.add_argument("--lr", type=float, help="DPO sides: learning rate (default 3e-5)")
    parser.add_argument("--rl-temperature", type=float, help="RL sides: sampling temperature (default 1.0)")
    parser.add_argument("--rl-lr", type=float, help="RL sides: learning rate (default 1e-4)")
    parser.add_argument("--beta", type=float, help="DPO sides: the DPO beta")
    parser.add_argument("--batch-size", type=int, help="DPO sides: pairs per optimizer step (TRL: prompts per step)")
    parser.add_argument("--micro-batch-size", type=int, help="DPO sides: pairs per forward")
    parser.add_argument("--rl-batch-size", type=int, help="RL sides: replies per optimizer step (default 64)")
    parser.add_argument("--rl-micro-batch-size", type=int, help="RL sides: replies per forward (default 8)")
    parser.add_argument("--advantage", default="grpo", choices=["grpo", "dr_grpo", "rloo"],
                        help="RL sides: our advantage; GRPO's scale_rewards group (grpo) or none (dr_grpo)")
    parser.add_argument("--loss-aggregation", default="token", choices=list(GRPO_LOSS_TYPES),
                        help="RL sides: token (GRPO's loss_type dapo) or sequence (loss_type grpo)")
    parser.add_argument("--clip-low", type=float, default=0.2, help="RL sides: GRPO's epsilon")
    parser.add_argument("--clip-high", type=float, default=0.2, help="RL sides: GRPO's epsilon_high")
    parser.add_argument("--kl-coef", type=float, default=0.0, help="RL sides: GRPO's beta (0: no reference model)")
    parser.add_argument("--updates-per-batch", type=int, default=1, help="RL sides: GRPO's num_iterations")
    parser.add_argument("--cut-off-reward", type=lambda s: None if s == "none" else float(s), default=0.0,
                        help="RL sides: the reward of a reply cut off at --max-new-tokens (default 0, the RL recipe's; "
                             "none: its score); GRPO's reward function gives it too")
    parser.add_argument("--rounds", type=int,
                        help="ours: sampling rounds (default 2; an RL round is one batch; with --cpu-budget-s, as "
                             "many as the budget allows)")
    parser.add_argument("--prompts-per-round", type=int, help="ours on-policy: prompts sampled per round (default 64)")
    parser.add_argument("--steps-per-round", type=int, help="ours on-policy: optimizer steps per round (default: the recipe's)")
    parser.add_argument("--trl-max-steps", type=int, help="TRL: stop after this many steps even within the budget")
    parser.add_argument("--eval-split", default="test", choices=["test", "dev", "all"],
                        help="half of the bundled IFEval prompts to evaluate on (test: where figures are reported)")
    parser.add_argument("--eval-limit", type=int, help="evaluate on the first N prompts of that half (default all)")
    parser.add_argument("--eval-max-tokens", type=int, help="most new tokens per eval reply (default 512)")
    parser.add_argument("--eval-batch-size", type=int, default=32, help="requests the eval generates together")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every child process")
    parser.add_argument("--jobs", type=int, default=1,
                        help="child processes at once: 2 trains two sides together, then runs the evals two at a "
                             "time (needs --cpu-budget-s: without one, a TRL side's budget is what ours spent)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt-seed", type=int, default=0, help="seed of the ifeval_synthetic prompts")
    parser.add_argument("--skip-eval", action="store_true", help="train only (no IFEval before/after)")
    parser.add_argument("--stand-in-prompts", action="store_true",
                        help="TRL smoke tests only: train on the bundled IFEval eval rows instead of ifeval_synthetic")
    parser.add_argument("--ours-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra option for the on-policy recipe (repeatable)")
    parser.add_argument("--rl-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra option for the RL recipe (repeatable)")
    parser.add_argument("--skip-sampler", action="store_true", help="skip part (b), sampler_throughput.py")
    parser.add_argument("--sampler-args", default=None,
                        help="options for benchmarks/sampler_throughput.py (default: this run's sampling settings)")
    parser.add_argument("--ours-python", type=Path, default=OURS_PYTHON)
    parser.add_argument("--trl-python", type=Path, default=TRL_PYTHON)
    parser.add_argument("--run-trl", choices=list(TRL_TRAINERS), help=argparse.SUPPRESS)
    parser.add_argument("--trl-cpu-budget-s", type=lambda s: None if s == "none" else float(s), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cpu_budget_s is not None and args.rounds is None:
        args.rounds = UNTIL_BUDGET_ROUNDS
    if args.jobs > 1 and args.cpu_budget_s is None:
        parser.error("--jobs > 1 needs --cpu-budget-s: without one, a TRL side's budget is what its counterpart of "
                     "ours spent, so it runs after it")
    for key, value in {**DEFAULTS, **(QUICK if args.quick else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.cpu_budget_s is None and args.trl_max_steps is None and args.run_trl is None:
        alone = [side for side, ours in COUNTERPARTS.items() if side in args.sides and ours not in args.sides]
        if alone:
            parser.error(f"{', '.join(alone)} without {', '.join(COUNTERPARTS[s] for s in alone)} needs --cpu-budget-s "
                         "(or --trl-max-steps): a TRL side's budget is otherwise what its counterpart of ours spent")
    if "trl_grpo" in args.sides and args.advantage not in GRPO_SCALE_REWARDS:
        parser.error(f"--advantage {args.advantage} has no GRPOTrainer equivalent: leave trl_grpo out of --sides")
    if args.stand_in_prompts and any(side.startswith("ours_") for side in args.sides) and args.run_trl is None:
        parser.error("--stand-in-prompts trains on the eval prompts: only for TRL smoke tests (--sides of TRL's only)")
    args.out = args.out.resolve()
    return args


def side_budget(args, side: str, sides: dict[str, dict[str, Any]]) -> float | None:
    """A side's CPU budget: --cpu-budget-s, or without one, for a TRL side, what its counterpart of
    ours spent (which trained before it: parse_args keeps --jobs 1 then)."""
    if args.cpu_budget_s is not None or side not in COUNTERPARTS:
        return args.cpu_budget_s
    return sides.get(COUNTERPARTS[side], {}).get("cpu_seconds")


def train_side(args, side: str, sides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    budget = side_budget(args, side, sides)
    return run_ours(args, side, budget) if side in RECIPES else run_trl(args, side, budget)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    if args.run_trl:
        return trl_main(args)
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_record import RESULTS_DIR, finish_record, start_record

    record = start_record(__file__, argv)
    sides: dict[str, dict[str, Any]] = {}
    trainers = {side: lambda side=side: train_side(args, side, sides) for side in args.sides}
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

    settings = {k: getattr(args, k) for k in ("sides", "num_prompts", "samples_per_prompt", "max_new_tokens",
                                              "temperature", "lr", "beta", "batch_size", "micro_batch_size",
                                              "rl_lr", "rl_temperature", "rl_batch_size", "rl_micro_batch_size",
                                              "advantage", "loss_aggregation", "clip_low", "clip_high", "kl_coef",
                                              "updates_per_batch", "cut_off_reward", "rounds", "steps_per_round", "cpu_budget_s", "eval_limit", "eval_max_tokens",
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
    record_path = args.json_out or (None if args.quick else RESULTS_DIR / record_name(args.sides))
    if record_path:
        record.update(json.loads(json.dumps(results, default=str)))
        print(f"record: {finish_record(record, record_path)}")


if __name__ == "__main__":
    main()
