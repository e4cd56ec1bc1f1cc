"""The on-policy recipe through its CLI, on a tiny random-init model: rounds, files, metrics, the
round-start reference, resume after kill -9, a round without pairs, and the in-run IFEval
against the eval command."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import save_tiny_model
from safetensors.torch import load_file

from cookbook.cli import run_cli
from cookbook.eval.run_inspect_evals import cli as eval_cli
from cookbook.on_policy.rounds import read_round
from cookbook.on_policy.train_on_policy import main
from cookbook.recipes.preference.on_policy import cli
from cookbook.training.metrics import read_metrics

HERE = Path(__file__).parent


def reply_length_reward(item, reply: str) -> float:
    """A reward a random model's replies differ on: their length, bucketed."""
    return float(len(reply) % 5)


def constant_reward(item, reply: str) -> float:
    return 1.0


PROMPTS = [f"Tell me something about the number {n}." for n in range(12)]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


def args(log_path, model_dir, prompt_file, *extra):
    return [f"log_path={log_path}", f"model_name={model_dir}", f"prompts={prompt_file}",
            "reward=test_on_policy_recipe:reply_length_reward", "rounds=2", "prompts_per_round=6",
            "samples_per_prompt=3", "steps_per_round=2", "batch_size=4", "micro_batch_size=2", "max_new_tokens=12",
            "max_length=128", "eval_ifeval=false", "show_example=false", "learning_rate=1e-3", "display=plain",
            "sampler=native", *extra]


def train_records(log_path):
    return [r for r in read_metrics(log_path) if "dpo_loss" in r]


def test_rounds_write_samples_and_metrics_and_start_at_the_round_start_reference(tmp_path, tiny_model_dir,
                                                                                 prompt_file):
    sys.path.insert(0, str(HERE))
    log_path = tmp_path / "run"
    final = cli(args(log_path, tiny_model_dir, prompt_file))
    assert final == log_path / "final" and (final / "model.safetensors").exists()
    for index in (0, 1):
        data = read_round(log_path, index)
        assert len(data.records) == 6 and all(len(r.replies) == 3 for r in data.records)
        for record in data.paired:
            rewards = [reply.reward for reply in record.replies]
            assert record.replies[record.pair.chosen].reward == max(rewards)
            assert record.replies[record.pair.rejected].reward == min(rewards)
            assert record.reference_logps is not None
        assert all(r.skip == "tie" for r in data.records if r.pair is None)
    # Round 1 samples the next six prompts.
    assert [r.messages[0]["content"] for r in read_round(log_path, 1).records] == PROMPTS[6:12]

    records = train_records(log_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r.get("round") for r in records] == [0, None, 1, None]
    assert {"samples/reward_mean", "samples/pair_fraction", "samples/tokens_per_second"} <= set(records[2])
    # Each round's first step: the policy is the round's reference, so every pair's loss is ln 2.
    for record in (records[0], records[2]):
        assert record["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert records[1]["dpo_loss"] != pytest.approx(math.log(2), abs=1e-4)
    config = json.loads((log_path / "config.json").read_text())
    assert config["reference"] == "round_start" and config["save_every"] == 2


def test_reference_initial_keeps_the_starting_model(tmp_path, tiny_model_dir, prompt_file):
    sys.path.insert(0, str(HERE))
    log_path = tmp_path / "run"
    cli(args(log_path, tiny_model_dir, prompt_file, "reference=initial"))
    records = train_records(log_path)
    assert records[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    # Round 1 starts from a trained policy but its reference is still the starting model.
    assert records[2]["dpo_loss"] != pytest.approx(math.log(2), abs=1e-4)


def test_a_round_without_pairs_stops_with_one_message_and_its_samples_saved(tmp_path, tiny_model_dir, prompt_file,
                                                                           capsys):
    sys.path.insert(0, str(HERE))
    log_path = tmp_path / "run"
    argv = [a if not a.startswith("reward=") else "reward=test_on_policy_recipe:constant_reward"
            for a in args(log_path, tiny_model_dir, prompt_file)]
    assert run_cli(main, argv) == 2
    error = capsys.readouterr().err
    assert "round 0: none of its 6 prompts gave a pair (6 with all replies scored equal" in error
    assert read_round(log_path, 0) is not None and not (log_path / "final").exists()

    # The run never trained, so the next one starts over; its reward differs, so round 0 (all ties
    # under the constant reward) is sampled again instead of being reused.
    cli(args(log_path, tiny_model_dir, prompt_file))
    assert "sampled with other options" in capsys.readouterr().out
    assert read_round(log_path, 0).paired and (log_path / "final").exists()


DRIVER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from cookbook.on_policy import rounds
    from cookbook.cli import run_cli
    from cookbook.on_policy.train_on_policy import main

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
    else:  # the forward of round 1's second step
        from cookbook.on_policy import train_on_policy
        train_on_policy.OnPolicyTask.forward = killing(train_on_policy.OnPolicyTask.forward)
    sys.exit(run_cli(main, sys.argv[1:]))
""")


@pytest.mark.parametrize("kill_at", ["sampling:2", "training:7"])
def test_resume_after_kill_9_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, prompt_file, kill_at):
    sys.path.insert(0, str(HERE))
    whole = tmp_path / "whole"
    cli(args(whole, tiny_model_dir, prompt_file, "save_every=1"))

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(HERE)))
    killed = tmp_path / "killed"
    env = {**os.environ, "KILL_AT": kill_at, "OMP_NUM_THREADS": str(os.environ.get("OMP_NUM_THREADS", ""))}
    env = {k: v for k, v in env.items() if v != ""}
    result = subprocess.run([sys.executable, str(driver), *args(killed, tiny_model_dir, prompt_file, "save_every=1")],
                            env=env, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert not (killed / "final").exists()
    if kill_at.startswith("sampling"):
        assert read_round(killed, 1) is None  # killed before its samples were written
    cli(args(killed, tiny_model_dir, prompt_file, "save_every=1", "behavior_if_log_dir_exists=resume"))

    for index in (0, 1):
        assert read_round(killed, index).records == read_round(whole, index).records
    expected = load_file(whole / "final" / "model.safetensors")
    resumed = load_file(killed / "final" / "model.safetensors")
    for name, tensor in expected.items():
        assert resumed[name].equal(tensor), name
    assert [r["dpo_loss"] for r in train_records(killed)] == [r["dpo_loss"] for r in train_records(whole)]


@pytest.mark.parametrize("content, message", [
    ("", "no prompts"),
    ('"fine"\n{"prompt": \n', ":2"),
    ('{"messages": [{"role": "assistant", "content": "hi"}]}\n', ":1"),
])
def test_a_bad_prompt_file_is_one_error_naming_the_file_and_line(tmp_path, tiny_model_dir, capsys, content, message):
    sys.path.insert(0, str(HERE))
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert run_cli(main, args(tmp_path / "run", tiny_model_dir, path)) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and str(path) in error and message in error, error
    assert not (tmp_path / "run" / "rounds").exists()


def test_ifeval_reward_on_prompts_without_instructions_fails_before_sampling(tmp_path, tiny_model_dir, prompt_file,
                                                                              capsys):
    argv = [a for a in args(tmp_path / "run", tiny_model_dir, prompt_file) if not a.startswith("reward=")]
    assert run_cli(main, argv) == 2
    assert "instruction_id_list" in capsys.readouterr().err


@pytest.mark.parametrize("reference", ["round_start", "initial"])
def test_lora_policy_samples_trains_and_saves_adapters(tmp_path, tiny_model_dir, prompt_file, reference):
    """With LoRA the policy samples through its adapters; reference=initial is the adapter-off model."""
    sys.path.insert(0, str(HERE))
    log_path = tmp_path / "run"
    cli(args(log_path, tiny_model_dir, prompt_file, "lora_rank=4", "learning_rate=5e-3", f"reference={reference}"))
    records = train_records(log_path)
    assert records[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    starts_at_reference = records[2]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert starts_at_reference == (reference == "round_start")
    assert (log_path / "final" / "adapter_model.safetensors").exists()


def test_ifeval_at_the_start_after_each_round_and_at_the_end(tmp_path, tiny_model_dir, prompt_file):
    sys.path.insert(0, str(HERE))
    log_path = tmp_path / "run"
    # fp32 sampling: along that path the trained tiny model comes to follow a few instructions, so the
    # last check can tell an eval that scores from one that always says 0 (the untrained model does).
    cli([a for a in args(log_path, tiny_model_dir, prompt_file) if a != "eval_ifeval=false"]
        + ["eval_ifeval=true", "eval_every=2", "eval_max_new_tokens=64", "sample_in_compute_precision=false"])
    evals = [r for r in read_metrics(log_path) if "test/ifeval_prompt_strict" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    for record in evals:
        for key in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"):
            assert 0.0 <= record[f"test/ifeval_{key}"] <= 1.0
        # Loose accepts everything strict does.
        assert record["test/ifeval_prompt_loose"] >= record["test/ifeval_prompt_strict"]
        assert record["test/ifeval_instruction_loose"] >= record["test/ifeval_instruction_strict"]
    # A random model follows some instructions (e.g. "no commas") but far from all of them.
    assert 0.0 < max(r["test/ifeval_instruction_strict"] for r in evals) < 0.5


@pytest.fixture(scope="module")
def untied_model_dir(tmp_path_factory, tokenizer):
    # With tied embeddings a random model's greedy reply repeats the prompt's last token ("\n"),
    # which follows no instruction; an untied head writes words that follow some.
    return str(save_tiny_model(tmp_path_factory.mktemp("untied-model"), tokenizer, tie_word_embeddings=False))


def test_in_run_ifeval_equals_the_eval_command_on_the_final_checkpoint(tmp_path, untied_model_dir, prompt_file):
    """The end-of-run test/ifeval_* of the dev split are what `run_inspect_evals tasks=cookbook/ifeval
    ifeval_source=bundled ifeval_split=dev` scores on the saved final checkpoint, with the same
    max tokens and greedy decoding: the two paths render, decode and score alike."""
    sys.path.insert(0, str(HERE))
    log_path = tmp_path / "run"
    replaced = ("rounds=", "eval_ifeval=")
    cli([a for a in args(log_path, untied_model_dir, prompt_file) if not a.startswith(replaced)]
        + ["rounds=1", "eval_ifeval=true", "eval_max_new_tokens=24"])
    evals = [r for r in read_metrics(log_path) if "test/ifeval_prompt_strict" in r]
    assert [r["step"] for r in evals] == [0, 2]
    in_run = evals[-1]

    # The in-run eval decodes the fp32 master weights without autocast; on a GPU the command's
    # dtype=auto would pick bf16, so the dtype is named.
    status = eval_cli([f"model_path={log_path / 'final'}", "tasks=cookbook/ifeval", "ifeval_source=bundled",
                       "ifeval_split=dev", "max_tokens=24", "temperature=0", "dtype=float32", "batch_size=8",
                       "display=none", f"log_dir={tmp_path / 'eval'}"])
    assert status == 0
    (result,) = json.loads((tmp_path / "eval" / "summary.json").read_text())["results"]["model"]
    assert result["status"] == "success" and result["samples"] == 64
    scores = {key: result["metrics"][key.replace("_", "_level_", 1)]
              for key in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")}
    for key, score in scores.items():
        assert in_run[f"test/ifeval_{key}"] == pytest.approx(score, abs=1e-9), (key, in_run, scores)
    assert 0 < in_run["test/ifeval_instruction_strict"] < 1  # scores of 0 or 1 on both sides would show little
    # Training moved the scores, so the eval compared is the trained model's, not the start's.
    assert [in_run[f"test/ifeval_{key}"] for key in scores] != [evals[0][f"test/ifeval_{key}"] for key in scores]
