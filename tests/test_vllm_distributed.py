"""The on-policy recipe sampling with vLLM on two CPU processes (gloo), `sampler=auto`: every rank
builds its own engine (vLLM's external_launcher executor, inside the trainer's process group) and
samples its share of each round. Under DDP and under FSDP2 the rounds hold exactly the replies one
process samples, round 1's from the weights trained in round 0, so neither the replies' seeds nor
the weight sync depend on the number of processes. Skipped without vllm."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import save_tiny_model
from test_distributed import torchrun
from test_on_policy_recipe import train_records

from cookbook.on_policy.rounds import read_round

pytestmark = [pytest.mark.vllm, pytest.mark.distributed]
HERE = Path(__file__).parent
PROMPTS = [f"Tell me something about the number {n}." for n in range(8)]


def reply_length_reward(item, reply: str) -> float:
    return float(len(reply) % 5)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    # vLLM's CPU attention serves head sizes from 32 up; conftest's tiny model has 16.
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-vllm"), tokenizer, num_heads=2, num_kv_heads=1))


def args(log_path, model_dir, prompt_file, *extra):
    # A learning rate high enough that round 1's replies differ from the start model's.
    return [f"log_path={log_path}", f"model_name={model_dir}", f"prompts={prompt_file}",
            "reward=test_vllm_distributed:reply_length_reward", "rounds=2", "prompts_per_round=4",
            "samples_per_prompt=2", "steps_per_round=1", "batch_size=4", "micro_batch_size=2", "max_new_tokens=12",
            "max_length=128", "learning_rate=1e-2", "precision=fp32", "eval_ifeval=false", "show_example=false",
            "display=plain", "sampler=auto", "vllm_compile=false", "vllm_kv_cache_gib=0.125", *extra]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, model_dir, prompt_file):
    # Its own process: this one may hold an engine for another model (one engine per process).
    log_path = tmp_path_factory.mktemp("one") / "run"
    proc = subprocess.run([sys.executable, "-m", "cookbook.recipes.preference.on_policy",
                           *args(log_path, model_dir, prompt_file)], env=environment(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Sampler: vllm (vLLM" in proc.stdout
    return log_path


def replies(log_path, index):
    return [record.replies for record in read_round(log_path, index).records]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_with_an_engine_each_sample_what_one_process_samples(tmp_path, model_dir, prompt_file,
                                                                       one_process, strategy, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(HERE))  # the ranks import this module's reward
    log_path = tmp_path / strategy
    proc = torchrun("-m", "cookbook.recipes.preference.on_policy",
                    *args(log_path, model_dir, prompt_file, f"distributed={strategy}"))
    assert "Sampler: vllm (vLLM" in proc.stdout and "an engine on each of 2 processes" in proc.stdout
    assert "Traceback" not in proc.stderr  # vLLM's groups were shut down before the trainer's
    for index in (0, 1):
        assert replies(log_path, index) == replies(one_process, index), f"round {index}"
        assert read_round(log_path, index).summary["samples/weight_sync_seconds"] > 0
    assert [r["step"] for r in train_records(log_path)] == [1, 2]
    for a, b in zip(train_records(one_process), train_records(log_path)):
        assert a["dpo_loss"] == pytest.approx(b["dpo_loss"], rel=1e-4), a["step"]
