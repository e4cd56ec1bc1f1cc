"""The RL recipe through its CLI on a tiny random-init model: rounds on disk, advantages, the ratio
of the first update, metrics, KL, zero-variance rounds, a failing reward, resume after kill -9."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import chz
import pytest
import torch
from helpers import save_tiny_model
from safetensors.torch import load_file
from torch.testing import assert_close

from cookbook.cli import run_cli
from cookbook.models import DEFAULT_MODEL
from cookbook.on_policy.ifeval_synthetic import IFEvalSyntheticPrompts
from cookbook.on_policy.rewards import IFEvalReward
from cookbook.on_policy.rounds import PromptRecord, Reply, read_round
from cookbook.recipes.rl.train import cli
from cookbook.rl.groups import GroupRecord, group_records
from cookbook.rl.losses import group_advantages
from cookbook.rl.train_rl import Config, main
from cookbook.sampling import SamplingSettings, sample
from cookbook.training.checkpoint import latest_resumable_checkpoint
from cookbook.training.metrics import read_metrics

HERE = Path(__file__).parent


def reply_length_reward(item, reply: str) -> float:
    """A reward a random model's replies differ on: their length, bucketed."""
    return float(len(reply) % 5)


def constant_reward(item, reply: str) -> float:
    return 1.0


def nan_on_third_prompt(item, reply: str) -> float:
    return math.nan if item.key == "prompts-3" else float(len(reply) % 5)


def raises_on_third_prompt(item, reply: str) -> float:
    if item.key == "prompts-3":
        raise KeyError("no answer key")
    return 1.0


def constant_on_the_first_four(item, reply: str) -> float:
    """Every group of round 0 (prompts 0-3) has zero variance; round 1's do not."""
    number = int(item.messages[-1]["content"].split()[-1].rstrip("."))
    return 1.0 if number < 4 else reply_length_reward(item, reply)


PROMPTS = [f"Tell me something about the number {n}." for n in range(8)]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


def args(log_path, model_dir, prompt_file, *extra):
    # A random tiny model never stops within max_new_tokens: its replies keep their scores.
    return [f"log_path={log_path}", f"model_name={model_dir}", f"prompts={prompt_file}", "cut_off_reward=None",
            "reward=test_rl_recipe:reply_length_reward", "rounds=2", "batch_size=12", "group_size=3",
            "updates_per_batch=2", "micro_batch_size=4", "max_new_tokens=10", "max_length=96", "show_example=false",
            "learning_rate=1e-3", "display=plain", "sampler=native", *extra]


def train_records(log_path):
    return [r for r in read_metrics(log_path) if "pg/ratio_mean" in r]


def read(log_path, index):
    return read_round(log_path, index, GroupRecord)


@pytest.mark.parametrize("precision, sampler_tolerance", [("fp32", 1e-4), ("bf16-mixed", 2e-2)])
def test_rounds_write_groups_and_the_first_update_is_on_policy(tmp_path, tiny_model_dir, prompt_file, precision,
                                                               sampler_tolerance):
    sys.path.insert(0, str(HERE))
    log_path = tmp_path / "run"
    final = cli(args(log_path, tiny_model_dir, prompt_file, "kl_coef=0.1", "advantage=rloo", f"precision={precision}"))
    assert final == log_path / "final" and (final / "model.safetensors").exists()
    for index in (0, 1):
        data = read(log_path, index)
        assert len(data.records) == 4 and all(len(r.replies) == 3 for r in data.records)
        for record in data.records:
            rewards = [reply.reward for reply in record.replies]
            if len(set(rewards)) == 1:
                assert record.advantages is None and record.old_logps is None
                continue
            assert record.advantages == pytest.approx(group_advantages(torch.tensor([rewards]), "rloo")[0].tolist())
            for reply, old, ref in zip(record.replies, record.old_logps, record.reference_logps):
                assert len(old) == len(ref) == len(reply.tokens) and all(v <= 0 for v in old)
    assert [r.messages[0]["content"] for r in read(log_path, 1).records] == PROMPTS[4:8]

    records = train_records(log_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r.get("round") for r in records] == [0, None, 1, None]
    assert {"samples/reward_mean", "samples/reward_std", "samples/zero_variance_fraction",
            "samples/reply_tokens", "samples/cut_off_fraction", "samples/tokens_per_second"} <= set(records[0])
    for first in (records[0], records[2]):
        # Old log-probs are the trainer's own, over the same micro-batches: the ratio is exactly 1,
        # nothing is clipped, and the policy still equals the reference only at the very start.
        assert first["pg/ratio_min"] == first["pg/ratio_max"] == 1.0
        assert first["pg/clip_fraction"] == 0.0
    assert records[0]["pg/kl"] == 0.0 and records[1]["pg/kl"] > 0 and records[2]["pg/kl"] > 0
    kept = [v for r in read(log_path, 0).records if r.kept for old in r.old_logps for v in old]
    assert records[0]["pg/token_nll"] == pytest.approx(-sum(kept) / len(kept), rel=1e-5)
    assert records[1]["pg/ratio_min"] < 1 < records[1]["pg/ratio_max"]
    # The native sampler's log-probs (KV cache, one token at a time) and the trainer's differ only by rounding.
    assert 0 <= records[0]["samples/logprob_diff_mean"] <= records[0]["samples/logprob_diff_max"] < sampler_tolerance
    config = json.loads((log_path / "config.json").read_text())
    assert config["save_every"] == 2 and config["advantage"] == "rloo"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def with_reward(argv, reward):
    return [a if not a.startswith("reward=") else f"reward=test_rl_recipe:{reward}" for a in argv]


def test_a_round_with_only_zero_variance_groups_is_replaced_by_the_next(tmp_path, tiny_model_dir, prompt_file,
                                                                        capsys):
    sys.path.insert(0, str(HERE))
    log_path = tmp_path / "run"
    argv = [a for a in args(log_path, tiny_model_dir, prompt_file) if not a.startswith("rounds=")] + ["rounds=1"]
    cli(with_reward(argv, "constant_on_the_first_four"))
    assert "Round 0: every group's replies scored the same" in capsys.readouterr().out
    assert all(not record.kept for record in read(log_path, 0).records)
    assert any(record.kept for record in read(log_path, 1).records)
    records = train_records(log_path)
    assert [r["step"] for r in records] == [1, 2] and records[0]["round"] == 1
    assert records[0]["samples/zero_variance_rounds"] == 1
    assert (log_path / "final" / "model.safetensors").exists()


def test_a_run_without_any_learning_signal_stops_with_one_message(tmp_path, tiny_model_dir, prompt_file, capsys):
    sys.path.insert(0, str(HERE))
    log_path = tmp_path / "run"
    argv = with_reward(args(log_path, tiny_model_dir, prompt_file, "max_empty_rounds=2"), "constant_reward")
    assert run_cli(main, argv) == 2
    (error,) = error_lines(capsys.readouterr().err)
    assert error.startswith("error: rounds 0, 1: every group's replies scored the same") and "max_empty_rounds=2" in error
    assert read(log_path, 0) is not None and read(log_path, 1) is not None
    assert not (log_path / "final").exists()


def test_cut_off_reward_takes_the_advantages_of_cut_off_replies_while_each_keeps_its_score():
    def record(scores, stopped):
        return PromptRecord("k", [], [1], [Reply([2], "x", score, stop) for score, stop in zip(scores, stopped)])

    tied, mixed = record([1.0, 1.0, 1.0], [True, False, True]), record([0.0, 1.0, 1.0], [True, True, False])
    plain, shaped = group_records([tied, mixed], "dr_grpo"), group_records([tied, mixed], "dr_grpo", 0.0)
    assert not plain[0].kept and plain[1].advantages == pytest.approx([-2 / 3, 1 / 3, 1 / 3])
    # With cut_off_reward=0 the tied group is [1, 0, 1] and the mixed one [0, 1, 0].
    assert shaped[0].advantages == pytest.approx([1 / 3, -2 / 3, 1 / 3])
    assert shaped[1].advantages == pytest.approx([-1 / 3, 2 / 3, -1 / 3])
    assert [reply.reward for reply in shaped[0].replies + shaped[1].replies] == [1.0, 1.0, 1.0, 0.0, 1.0, 1.0]


def test_cut_off_reward_reaches_the_rounds(tmp_path, tiny_model_dir, prompt_file, capsys):
    """A random tiny model never stops in 10 tokens: with the default cut_off_reward (0) every reply
    scores 0, so every group ties and the run stops for want of signal, where with None it trains."""
    sys.path.insert(0, str(HERE))
    log_path = tmp_path / "run"
    argv = [a for a in args(log_path, tiny_model_dir, prompt_file, "max_empty_rounds=2") if a != "cut_off_reward=None"]
    assert run_cli(main, argv) == 2
    (error,) = error_lines(capsys.readouterr().err)
    assert "every group's replies scored the same" in error
    replies = [reply for record in read(log_path, 0).records for reply in record.replies]
    assert not any(reply.stopped for reply in replies) and len({reply.reward for reply in replies}) > 1
    assert json.loads((log_path / "config.json").read_text())["cut_off_reward"] == 0


@pytest.mark.parametrize("reward, detail", [("nan_on_third_prompt", "gave nan"),
                                            ("raises_on_third_prompt", "KeyError: 'no answer key'")])
def test_a_reward_that_fails_or_gives_nan_is_one_error_naming_the_prompt_and_the_reward(
        tmp_path, tiny_model_dir, prompt_file, capsys, reward, detail):
    sys.path.insert(0, str(HERE))
    log_path = tmp_path / "run"
    assert run_cli(main, with_reward(args(log_path, tiny_model_dir, prompt_file), reward)) == 2
    (error,) = error_lines(capsys.readouterr().err)
    assert f"reward test_rl_recipe:{reward}" in error and "'prompts-3'" in error and detail in error, error
    assert read(log_path, 0) is None  # nothing trusted was written


DRIVER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from cookbook.on_policy import rounds
    from cookbook.cli import run_cli
    from cookbook.rl import train_rl

    where, count = os.environ["KILL_AT"].split(":")
    calls = {{"n": 0}}

    def killing(original):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == int(count):
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        return wrapper

    if where == "sampling":  # the second round's sampling, after round 0 trained and saved
        rounds.collect_round = killing(rounds.collect_round)
    else:  # a forward of round 0's second update: the resume starts mid-batch, from step 1
        train_rl.RLTask.forward = killing(train_rl.RLTask.forward)
    sys.exit(run_cli(train_rl.main, sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, tiny_model_dir):
    sys.path.insert(0, str(HERE))
    directory = tmp_path_factory.mktemp("uninterrupted")
    prompts = directory / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    cli(args(directory / "run", tiny_model_dir, prompts, "save_every=1"))
    return directory / "run"


@pytest.mark.parametrize("kill_at", ["sampling:2", "training:4"])
def test_resume_after_kill_9_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, prompt_file, kill_at,
                                                          uninterrupted_run):
    sys.path.insert(0, str(HERE))
    whole = uninterrupted_run

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(HERE)))
    killed = tmp_path / "killed"
    env = {**{k: v for k, v in os.environ.items() if v != ""}, "KILL_AT": kill_at}
    result = subprocess.run([sys.executable, str(driver), *args(killed, tiny_model_dir, prompt_file, "save_every=1")],
                            env=env, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert not (killed / "final").exists()
    assert latest_resumable_checkpoint(killed)["step"] == {"sampling:2": 2, "training:4": 1}[kill_at]
    if kill_at.startswith("sampling"):
        assert read(killed, 1) is None  # killed before its samples were written
    cli(args(killed, tiny_model_dir, prompt_file, "save_every=1", "behavior_if_log_dir_exists=resume"))

    for index in (0, 1):
        assert read(killed, index).records == read(whole, index).records
    expected = load_file(whole / "final" / "model.safetensors")
    resumed = load_file(killed / "final" / "model.safetensors")
    for name, tensor in expected.items():
        assert resumed[name].equal(tensor), name
    assert [r["loss"] for r in train_records(killed)] == [r["loss"] for r in train_records(whole)]


def test_the_native_sampler_returns_each_tokens_logprob_as_a_full_forward_computes_it(tiny_model, tokenizer):
    """return_logprobs: log softmax(logits)[token] at each step (temperature 1, whatever the sampling
    temperature), equal up to rounding to a full forward over prompt + completion."""
    prompts = [[1, 2, 3, 4], [5, 6]]
    completions = sample(tiny_model, prompts, SamplingSettings(6, temperature=1.5), [], tokenizer.pad_token_id,
                         generator=torch.Generator().manual_seed(0), return_logprobs=True)
    for prompt, completion in zip(prompts, completions):
        ids = torch.tensor([prompt + completion.tokens])
        with torch.no_grad():
            logits = tiny_model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        expected = torch.log_softmax(logits.float(), -1).gather(1, ids[0, len(prompt):, None]).squeeze(1)
        assert_close(torch.tensor(completion.logprobs), expected, atol=1e-4, rtol=0)
    assert sample(tiny_model, prompts, SamplingSettings(6), [], tokenizer.pad_token_id)[0].logprobs is None


def test_help_documents_every_field():
    with pytest.raises(chz.blueprint.EntrypointHelpException) as help_text:
        cli(["--help"])
    out = str(help_text.value)
    for name in chz.chz_fields(Config):
        assert name in out, name
    assert "Replies sampled per prompt" in out and "k3 KL" in out


def test_log_path_alone_is_the_quickstart():
    config = chz.Blueprint(Config).make_from_argv(["log_path=/tmp/rl-quickstart"])
    assert isinstance(config.prompts, IFEvalSyntheticPrompts) and isinstance(config.reward, IFEvalReward)
    assert config.model_name == DEFAULT_MODEL and config.save_every == config.updates_per_batch
    assert config.cut_off_reward == 0
    config.reward.check_prompts(config.prompts())  # the bundled prompts carry what reward=ifeval checks


@pytest.mark.parametrize("option, message", [
    ("group_size=1", "group_size must be >= 2"),
    ("group_size=5", "batch_size=64 (replies per batch) must be a multiple of group_size=5"),
    ("advantage=ppo", "advantage"),
    ("loss_aggregation=prompt", "loss_aggregation"),
    ("clip_low=1.0", "clip_low must be in"),
    ("kl_coef=-1", "kl_coef must be"),
    ("cut_off_reward=nan", "cut_off_reward must be a finite number"),
    ("num_epochs=2", "updates_per_batch"),
])
def test_bad_options_are_one_error(tmp_path, option, message, capsys):
    assert run_cli(main, [f"log_path={tmp_path / 'run'}", option]) == 2
    (error,) = error_lines(capsys.readouterr().err)
    assert message in error, error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("aggregation, advantage", [("token", "grpo"), ("sequence", "dr_grpo")])
def test_the_first_updates_loss_is_minus_the_mean_advantage(tmp_path, tiny_model_dir, prompt_file, aggregation,
                                                              advantage):
    """At ratio 1 without KL the loss is -A per token: token aggregation averages it over every
    trained token of the batch, sequence aggregation over replies (each reply's tokens share its A)."""
    sys.path.insert(0, str(HERE))
    log_path = tmp_path / "run"
    argv = [a for a in args(log_path, tiny_model_dir, prompt_file) if not a.startswith(("rounds=", "updates_"))]
    cli(argv + ["rounds=1", "updates_per_batch=1", f"loss_aggregation={aggregation}", f"advantage={advantage}"])
    kept = [(a, len(reply.tokens)) for record in read(log_path, 0).records if record.kept
            for a, reply in zip(record.advantages, record.replies)]
    if aggregation == "token":
        expected = -sum(a * n for a, n in kept) / sum(n for _, n in kept)
    else:
        expected = -sum(a for a, _ in kept) / len(kept)
    (record,) = train_records(log_path)
    assert record["loss"] == pytest.approx(expected, abs=1e-6)
    assert record["pg/replies"] == len(kept)


def test_lora_with_kl_uses_the_adapter_off_model_as_reference(tmp_path, tiny_model_dir, prompt_file):
    sys.path.insert(0, str(HERE))
    log_path = tmp_path / "run"
    cli(args(log_path, tiny_model_dir, prompt_file, "lora_rank=4", "learning_rate=5e-3", "kl_coef=0.05"))
    records = train_records(log_path)
    # peft starts its adapters at zero: the policy is the reference until the first update.
    assert records[0]["pg/kl"] == pytest.approx(0.0, abs=1e-7) and records[2]["pg/kl"] > 0
    assert records[2]["pg/ratio_min"] == records[2]["pg/ratio_max"] == 1.0
    assert (log_path / "final" / "adapter_model.safetensors").exists()


def test_in_run_ifeval_on_the_dev_prompts_at_the_start_every_eval_every_steps_and_the_end(tmp_path, tokenizer,
                                                                                       prompt_file):
    """eval_ifeval logs test/ifeval_* at step 0, every eval_every steps and at the end; the scores
    are the shared in-run IFEval's (the on-policy recipe's test checks it against the eval command),
    here of the policy as it trains, so they move from the start's."""
    # An untied head writes words that follow some instructions (a tied one repeats "\n").
    model_dir = save_tiny_model(tmp_path / "untied", tokenizer, tie_word_embeddings=False)
    log_path = tmp_path / "run"
    cli(args(log_path, model_dir, prompt_file, "eval_ifeval=true", "eval_max_new_tokens=16", "eval_every=2"))
    evals = [r for r in read_metrics(log_path) if "test/ifeval_prompt_strict" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    keys = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")
    for record in evals:
        assert all(0 <= record[f"test/ifeval_{key}"] <= 1 for key in keys)
    assert 0 < max(r["test/ifeval_instruction_strict"] for r in evals) < 0.5
    assert [evals[0][f"test/ifeval_{key}"] for key in keys] != [evals[-1][f"test/ifeval_{key}"] for key in keys]
