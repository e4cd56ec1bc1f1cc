"""The on-policy and RL benchmark's own parts (benchmarks/on_policy_vs_trl.py) that need neither TRL
nor a model: the reward wrapper TRL calls, the CPU-budget stop, reading the eval's summary, the
sides and their settings, the figures and the table. TRL itself lives only in benchmarks/.venv-bench and is never imported here."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import threading
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "on_policy_vs_trl.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("on_policy_vs_trl", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["on_policy_vs_trl"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("on_policy_vs_trl", None)


# Two instructions; the reply below follows exactly one of them in the "half" case.
ROW = {"key": 7, "prompt": "Describe a lake. Answer in lowercase letters only. Do not use any commas.",
       "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"], "kwargs": [{}, {}]}


def test_reward_is_the_strict_fraction_of_instructions_followed(bench):
    """What TRL passes: conversational completions, the `ifeval` column as JSON strings (repeated for
    the prompt's second sample) and kwargs of its own, which the wrapper must accept."""
    completions = [
        [{"role": "assistant", "content": "the lake lies still under a grey sky"}],  # both followed
        [{"role": "assistant", "content": "the lake is cold, deep and still"}],  # lowercase only
        [{"role": "assistant", "content": "The Lake, Cold And Deep"}],  # neither
    ]
    rewards = bench.ifeval_reward(prompts=[[{"role": "user", "content": ROW["prompt"]}]] * 3,
                                  completions=completions, ifeval=[json.dumps(ROW)] * 3,
                                  completion_ids=[[1], [2], [3]], trainer_state=object())
    assert rewards == [1.0, 0.5, 0.0]
    assert bench.completion_text("plain text") == "plain text"
    assert bench.grpo_reward_function(None, {2}) is bench.ifeval_reward
    # A reply whose ids do not end in a stop token was cut off: --cut-off-reward replaces its score.
    shaped = bench.grpo_reward_function(-0.5, {2})(prompts=[[{"role": "user", "content": ROW["prompt"]}]] * 3,
                                                    completions=completions, ifeval=[json.dumps(ROW)] * 3,
                                                    completion_ids=[[5, 2], [5, 6], [2]], trainer_state=None)
    assert shaped == [rewards[0], -0.5, rewards[2]]


def test_reward_refuses_misaligned_columns(bench):
    with pytest.raises(ValueError):
        bench.ifeval_reward(prompts=[], completions=["a", "b"], ifeval=[json.dumps(ROW)])


def test_gain_figures_and_ratio(bench):
    assert bench.gain_points(0.25, 0.30) == pytest.approx(5.0)
    assert bench.per_cpu_hour(5.0, 1800) == pytest.approx(10.0)
    assert bench.gain_points(None, 0.3) is None and bench.per_cpu_hour(None, 10) is None
    assert bench.ratio(10.0, 4.0) == pytest.approx(2.5)
    # Against no gain or a loss, a ratio would read as a speed-up (or flip sign): none is given.
    assert bench.ratio(10.0, 0.0) is None and bench.ratio(10.0, -2.0) is None and bench.ratio(None, 1.0) is None


def _side(cpu, rss_gib, after, steps=3, stopped_by="budget"):
    return {"cpu_seconds": cpu, "wall_seconds": cpu * 1.5, "peak_rss_bytes": int(rss_gib * 2**30),
            "steps": steps, "stopped_by": stopped_by, "eval": {"prompt_level_strict": after}}


def test_table_and_ratio_line(bench):
    sides = {"ours_on_policy": _side(1800, 3.0, 0.30), "trl_online_dpo": _side(3600, 6.0, 0.275)}
    sides["ours_on_policy"]["eval"]["gain_interval"] = [-0.0125, 0.1]  # the eval's paired interval, as a fraction
    table = bench.format_table(sides, before=0.25)
    assert table.splitlines()[2] == (
        "| ours_on_policy | 3 | 1,800 | 2,700 | 3.00 | 0.2500 | 0.3000 | +5.0 | [-1.2, +10.0] | +10.00 | budget |")
    assert table.splitlines()[3].startswith(
        "| trl_online_dpo | 3 | 3,600 | 5,400 | 6.00 | 0.2500 | 0.2750 | +2.5 | n/a | +2.50 |")
    # ours: 5 points in half an hour = 10/h; TRL: 2.5 points in an hour = 2.5/h.
    assert bench.format_ratios(sides, before=0.25) == (
        "- ours_on_policy / trl_online_dpo: IFEval gain per CPU-hour x4.00, gain x2.00, CPU-s x0.50, peak RSS x0.50")


def test_ratio_line_when_trl_gained_nothing(bench):
    sides = {"ours_on_policy": _side(1800, 3.0, 0.30), "trl_online_dpo": _side(1800, 6.0, 0.25)}
    line = bench.format_ratios(sides, before=0.25)
    assert "gain per CPU-hour n/a (trl_online_dpo gained nothing)" in line and "CPU-s x1.00" in line
    assert bench.format_ratios({"ours_on_policy": sides["ours_on_policy"]}, before=0.25) == ""  # one side: no ratio


def test_four_sides_give_a_row_each_and_a_ratio_per_ours_trl_pair(bench):
    """Rows in the order the sides ran; ratio lines for every (ours, TRL) pair, none ours/ours."""
    sides = {"ours_on_policy": _side(1800, 3.0, 0.30), "ours_rl": _side(1800, 4.0, 0.2875),
             "trl_grpo": _side(1800, 5.0, 0.2625), "trl_online_dpo": _side(1800, 6.0, 0.275)}
    rows = bench.format_table(sides, before=0.25).splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| ours_on_policy", "| ours_rl", "| trl_grpo", "| trl_online_dpo"]
    lines = bench.format_ratios(sides, before=0.25).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "- ours_on_policy / trl_grpo", "- ours_on_policy / trl_online_dpo", "- ours_rl / trl_grpo",
        "- ours_rl / trl_online_dpo"]
    # ours_rl: 3.75 points, trl_grpo: 1.25 points, same CPU: x3.00.
    assert lines[2] == "- ours_rl / trl_grpo: IFEval gain per CPU-hour x3.00, gain x3.00, CPU-s x1.00, peak RSS x0.80"


def test_headline_metric_read_from_the_eval_summary(bench, tmp_path):
    """The file run_inspect_evals writes, through its own writer."""
    from cookbook.eval.summary import TaskResult, write_summary

    metrics = {"prompt_level_strict": 0.25, "prompt_level_loose": 0.5, "instruction_level_strict": 0.4,
               "instruction_level_loose": 0.6}
    path = write_summary(tmp_path / "summary.json", {"model": [
        TaskResult(task="cookbook/ifeval", model="cookbook/x", status="success", metrics=metrics, samples=4)]}, run={})
    assert bench.prompt_level_metrics(json.loads(path.read_text())) == {**metrics, "samples": 4}
    failed = write_summary(tmp_path / "failed.json", {"model": [
        TaskResult(task="cookbook/ifeval", model="cookbook/x", status="error")]}, run={})
    with pytest.raises(ValueError, match="no successful cookbook/ifeval"):
        bench.prompt_level_metrics(json.loads(failed.read_text()))


def test_newest_checkpoint_prefers_final_then_the_latest_step(bench, tmp_path):
    assert bench.newest_checkpoint(tmp_path) is None
    for name in ("step_000002", "step_000010"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    (tmp_path / "step_000011").mkdir()  # being written: no config.json yet
    assert bench.newest_checkpoint(tmp_path) == tmp_path / "step_000010"
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "config.json").write_text("{}")
    assert bench.newest_checkpoint(tmp_path) == tmp_path / "final"


def test_a_child_over_its_cpu_budget_is_stopped_and_measured(bench, tmp_path):
    """The budget stop ours relies on: SIGTERM once the child's own CPU time reaches the budget,
    and CPU-seconds / peak RSS from that child's rusage."""
    spin = "import signal, sys\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(130))\nwhile True: pass\n"
    run = bench.run_child([sys.executable, "-c", spin], bench.child_env(1), tmp_path / "child.log", cpu_budget_s=0.5)
    assert run.stopped_by_budget and run.returncode == 130
    assert 0.5 <= run.cpu_seconds < 10 and run.peak_rss_bytes > 0


def test_quick_fills_only_what_the_command_line_left_out(bench, tmp_path):
    args = bench.parse_args(["--out", str(tmp_path), "--quick", "--max-new-tokens", "24"])
    assert (args.num_prompts, args.samples_per_prompt, args.max_new_tokens, args.eval_limit) == (8, 4, 24, 4)
    full = bench.parse_args(["--out", str(tmp_path)])
    assert (full.num_prompts, full.prompts_per_round, full.eval_limit, full.threads, full.temperature,
            full.rounds) == (256, 64, None, 1, 0.7, 2)
    # With a budget and no --rounds, ours samples rounds until the budget stops it.
    assert bench.parse_args(["--out", str(tmp_path), "--cpu-budget-s", "60"]).rounds == bench.UNTIL_BUDGET_ROUNDS
    assert bench.parse_args(["--out", str(tmp_path), "--cpu-budget-s", "60", "--rounds", "2"]).rounds == 2


def test_our_command_and_trls_config_share_the_settings(bench, tmp_path):
    args = bench.parse_args(["--out", str(tmp_path), "--quick", "--lr", "2e-6", "--beta", "0.2",
                             "--batch-size", "4", "--micro-batch-size", "2", "--ours-arg", "seed=3"])
    command = bench.ours_command(args, "ours_on_policy")
    assert command[1:3] == ["-m", "cookbook.recipes.preference.on_policy"]
    assert {"prompts=ifeval_synthetic", "prompts.num_prompts=8", "reward=ifeval", "samples_per_prompt=4",
            "batch_size=4", "micro_batch_size=2", "learning_rate=2e-06", "dpo_beta=0.2", "max_new_tokens=16", "lr_schedule=constant",
            "temperature=0.7", "prompts_per_round=8", "eval_ifeval=false", "sampler=native",
            f"log_path={tmp_path / 'ours_on_policy'}", "behavior_if_log_dir_exists=delete"} <= set(command)
    assert command[-1] == "seed=3"
    config = bench.online_dpo_config_kwargs(args, "unused")
    assert (config["per_device_train_batch_size"] * config["gradient_accumulation_steps"], config["learning_rate"],
            config["beta"], config["max_new_tokens"], config["temperature"]) == (4, 2e-6, [0.2], 16, 0.7)
    assert config["gradient_checkpointing"] is False and config["bf16"] is True
    with pytest.raises(SystemExit, match="--batch-size 6 is not a multiple"):
        bench.online_dpo_config_kwargs(bench.parse_args(["--out", str(tmp_path), "--batch-size", "6",
                                                         "--micro-batch-size", "4"]), "unused")


def test_our_rl_command_and_grpos_config_share_the_settings(bench, tmp_path):
    """GRPOConfig under our RL recipe's names: num_generations = group_size, replies per step and
    per forward, scale_rewards from the advantage, loss_type from the aggregation, epsilon(_high)
    from the clips, beta from kl_coef, num_iterations from updates_per_batch."""
    args = bench.parse_args(["--out", str(tmp_path), "--samples-per-prompt", "8", "--rl-batch-size", "32",
                             "--rl-micro-batch-size", "4", "--advantage", "dr_grpo", "--loss-aggregation", "sequence",
                             "--clip-high", "0.28", "--kl-coef", "0.01", "--updates-per-batch", "2", "--rl-lr", "1e-5",
                             "--rl-temperature", "0.9", "--cut-off-reward", "0", "--rl-arg", "top_p=0.9"])
    command = bench.ours_command(args, "ours_rl")
    assert command[1:3] == ["-m", "cookbook.recipes.rl.train"]
    assert {"group_size=8", "batch_size=32", "micro_batch_size=4", "advantage=dr_grpo", "loss_aggregation=sequence",
            "clip_low=0.2", "clip_high=0.28", "kl_coef=0.01", "updates_per_batch=2", "cut_off_reward=0.0", "learning_rate=1e-05",
            "temperature=0.9", "max_new_tokens=256", "sampler=native", "reward=ifeval", "prompts=ifeval_synthetic",
            f"log_path={tmp_path / 'ours_rl'}"} <= set(command)
    assert not any(option.split("=")[0] in ("dpo_beta", "samples_per_prompt", "eval_ifeval") for option in command)
    assert command[-1] == "top_p=0.9"
    kept_scores = bench.parse_args(["--out", str(tmp_path), "--cut-off-reward", "none"])
    assert "cut_off_reward=None" in bench.ours_command(kept_scores, "ours_rl")
    config = bench.grpo_config_kwargs(args, "unused")
    assert {key: config[key] for key in ("num_generations", "per_device_train_batch_size", "gradient_accumulation_steps",
                                         "scale_rewards", "loss_type", "epsilon", "epsilon_high", "beta",
                                         "num_iterations", "learning_rate", "temperature", "max_completion_length")} == {
        "num_generations": 8, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 8,
        "scale_rewards": "none", "loss_type": "grpo", "epsilon": 0.2, "epsilon_high": 0.28, "beta": 0.01,
        "num_iterations": 2, "learning_rate": 1e-5, "temperature": 0.9, "max_completion_length": 256}
    # The DPO sides keep their own learning rate and temperature (the on-policy recipe's defaults).
    assert {"learning_rate=3e-05", "temperature=0.7"} <= set(bench.ours_command(args, "ours_on_policy"))
    assert config["gradient_checkpointing"] is False and config["bf16"] is True and config["use_vllm"] is False
    defaults = bench.grpo_config_kwargs(bench.parse_args(["--out", str(tmp_path)]), "unused")
    assert (defaults["scale_rewards"], defaults["loss_type"], defaults["beta"], defaults["num_iterations"],
            defaults["per_device_train_batch_size"] * defaults["gradient_accumulation_steps"], defaults["learning_rate"],
            defaults["temperature"]) == ("group", "dapo", 0.0, 1, 64, 1e-4, 1.0)


def test_generation_cache_is_read_where_the_trainer_leaves_it_unset(bench):
    """GRPOTrainer's generation config leaves use_cache None: generate then takes the model's, then True."""
    from types import SimpleNamespace

    def trainer(own, models):
        return SimpleNamespace(generation_config=SimpleNamespace(use_cache=own),
                               model=SimpleNamespace(generation_config=SimpleNamespace(use_cache=models)))

    assert bench.generation_uses_cache(trainer(True, False)) is True
    assert bench.generation_uses_cache(trainer(None, False)) is False  # gradient checkpointing turns it off there
    assert bench.generation_uses_cache(trainer(None, None)) is True
    assert bench.generation_uses_cache(trainer(False, True)) is False


def test_sides_are_named_checked_and_run_ours_first(bench, tmp_path):
    assert bench.parse_args(["--out", str(tmp_path)]).sides == list(bench.SIDES)
    args = bench.parse_args(["--out", str(tmp_path), "--sides", "trl_grpo, ours_on_policy,ours_rl"])
    assert args.sides == ["ours_on_policy", "ours_rl", "trl_grpo"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", str(tmp_path), "--sides", "ours,trl"])
    with pytest.raises(argparse.ArgumentTypeError, match="unknown side.*ours.*choose from ours_on_policy"):
        bench.side_list("ours,trl_grpo")
    # rloo has no GRPOConfig equivalent: refused with trl_grpo, allowed without it.
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", str(tmp_path), "--advantage", "rloo"])
    assert bench.parse_args(["--out", str(tmp_path), "--advantage", "rloo", "--sides", "ours_rl"]).advantage == "rloo"
    assert bench.record_name(["ours_on_policy", "trl_online_dpo"]) == "on_policy_vs_trl.json"
    assert bench.record_name(["ours_on_policy", "trl_grpo"]) == "rl_vs_trl.json"


def test_a_trl_side_without_a_budget_gets_what_its_counterpart_spent(bench, tmp_path):
    args = bench.parse_args(["--out", str(tmp_path), "--sides", "ours_on_policy,ours_rl,trl_grpo,trl_online_dpo"])
    spent = {"ours_on_policy": {"cpu_seconds": 100.0}, "ours_rl": {"cpu_seconds": 70.0}}
    assert [bench.side_budget(args, side, spent) for side in args.sides] == [None, None, 70.0, 100.0]
    budgeted = bench.parse_args(["--out", str(tmp_path), "--cpu-budget-s", "60"])
    assert {bench.side_budget(budgeted, side, spent) for side in budgeted.sides} == {60.0}
    # Without its counterpart a TRL side has no budget to take.
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", str(tmp_path), "--sides", "ours_on_policy,trl_grpo"])
    assert bench.parse_args(["--out", str(tmp_path), "--sides", "trl_grpo", "--trl-max-steps", "2"]).sides == ["trl_grpo"]
    assert bench.parse_args(["--out", str(tmp_path), "--sides", "trl_grpo", "--quick"]).trl_max_steps == 2  # --quick's


def test_sampler_benchmark_gets_this_runs_sampling_settings(bench, tmp_path):
    args = bench.parse_args(["--out", str(tmp_path), "--quick", "--temperature", "0.7", "--threads", "2"])
    assert bench.sampler_argv(args) == ["--threads", "2", "--temperatures", "0.7", "--max-new-tokens", "16", "--quick"]
    args = bench.parse_args(["--out", str(tmp_path), "--sampler-args", "--batch-sizes 8 --precisions bf16"])
    assert bench.sampler_argv(args) == ["--batch-sizes", "8", "--precisions", "bf16"]


def test_jobs_run_together_only_with_a_budget(bench, tmp_path):
    """--jobs 2 trains both sides at once, which is fair only when each has its own budget: without
    one, TRL's budget is what ours spent, so it must start after ours."""
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", str(tmp_path), "--jobs", "2"])
    assert bench.parse_args(["--out", str(tmp_path), "--jobs", "2", "--cpu-budget-s", "60"]).jobs == 2


def test_one_job_at_a_time_lets_a_job_read_the_previous_result(bench):
    """In order, each job starting after the one before it was taken (a TRL side's budget reads ours)."""
    seen: dict[str, int] = {}
    jobs = {"ours": lambda: 7, "trl": lambda: seen["ours"] * 2}
    for name, result in bench.run_jobs(jobs, 1):
        seen[name] = result
    assert seen == {"ours": 7, "trl": 14}


def test_jobs_at_once_overlap_and_keep_their_order(bench):
    """Two at a time: the second job must be running while the first waits for it."""
    second_started = threading.Event()

    def first() -> str:
        assert second_started.wait(timeout=10), "the second job did not start while the first ran"
        return "first"

    def second() -> str:
        second_started.set()
        return "second"

    assert list(bench.run_jobs({"a": first, "b": second}, 2)) == [("a", "first"), ("b", "second")]
