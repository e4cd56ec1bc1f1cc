"""The sampling recipes with vLLM on two CPU processes (gloo), `sampler=auto`: every rank builds its
own engine (vLLM's external_launcher executor, inside the trainer's process group) and samples its
share of each round. The rounds hold exactly the replies one process samples, round 1's from the
weights trained in round 0, so neither the replies' seeds nor the weight sync depend on the number
of processes; the training after them matches one process's too. The on-policy recipe runs under
DDP, the RL recipe under FSDP2 (its ranks hold different numbers of kept replies); both share the
engine and its weight sync, and each recipe's other strategy is tested with the native sampler
(test_on_policy_distributed.py, test_rl_distributed.py). Skipped without vllm."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import save_tiny_model
from test_distributed import torchrun

from cookbook.on_policy.rounds import PromptRecord, read_round
from cookbook.rl.groups import GroupRecord
from cookbook.training.metrics import read_metrics

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


RECIPES = {"on_policy": "cookbook.recipes.preference.on_policy", "rl": "cookbook.recipes.rl.train"}
# What each recipe logs per step that one process must match (the RL loss is about 0 at ratio 1, but
# its token NLL is the policy's after the previous round), and its rounds' record type.
STEP_METRICS = {"on_policy": ("dpo_loss",), "rl": ("loss", "pg/token_nll", "pg/advantage_abs")}
RECORD = {"on_policy": PromptRecord, "rl": GroupRecord}


def args(recipe, log_path, model_dir, prompt_file, *extra):
    # A learning rate high enough that round 1's replies differ from the start model's.
    shape = (["prompts_per_round=4", "samples_per_prompt=2", "steps_per_round=1", "batch_size=4"]
             if recipe == "on_policy" else ["batch_size=12", "group_size=3", "cut_off_reward=None"])
    return [f"log_path={log_path}", f"model_name={model_dir}", f"prompts={prompt_file}",
            "reward=test_vllm_distributed:reply_length_reward", "rounds=2", *shape, "micro_batch_size=2",
            "max_new_tokens=12", "max_length=128", "learning_rate=1e-2", "precision=fp32", "eval_ifeval=false",
            "show_example=false", "display=plain", "sampler=auto", "vllm_compile=false", "vllm_kv_cache_gib=0.125",
            *extra]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, model_dir, prompt_file):
    """recipe -> the log path of its run in one process."""
    runs = {}

    def run(recipe):
        if recipe not in runs:
            # Its own process: this one may hold an engine for another model (one engine per process).
            log_path = tmp_path_factory.mktemp(f"one-{recipe}") / "run"
            proc = subprocess.run([sys.executable, "-m", RECIPES[recipe], *args(recipe, log_path, model_dir, prompt_file)],
                                  env=environment(), capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-4000:]
            assert "Sampler: vllm (vLLM" in proc.stdout
            runs[recipe] = log_path
        return runs[recipe]

    return run


def replies(recipe, log_path, index):
    return [record.replies for record in read_round(log_path, index, RECORD[recipe]).records]


def train_records(recipe, log_path):
    return [r for r in read_metrics(log_path) if STEP_METRICS[recipe][0] in r]


@pytest.mark.parametrize("recipe, strategy", [("on_policy", "ddp"), ("rl", "fsdp")])
def test_two_ranks_with_an_engine_each_sample_what_one_process_samples(tmp_path, model_dir, prompt_file,
                                                                       one_process, recipe, strategy, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(HERE))  # the ranks import this module's reward
    single, log_path = one_process(recipe), tmp_path / strategy
    proc = torchrun("-m", RECIPES[recipe], *args(recipe, log_path, model_dir, prompt_file, f"distributed={strategy}"))
    assert "Sampler: vllm (vLLM" in proc.stdout and "an engine on each of 2 processes" in proc.stdout
    assert "Traceback" not in proc.stderr  # vLLM's groups were shut down before the trainer's
    for index in (0, 1):
        assert replies(recipe, log_path, index) == replies(recipe, single, index), f"round {index}"
        assert read_round(log_path, index, RECORD[recipe]).summary["samples/weight_sync_seconds"] > 0
    one, two = train_records(recipe, single), train_records(recipe, log_path)
    assert [r["step"] for r in two] == [r["step"] for r in one] and len(one) == 2
    for a, b in zip(one, two):
        for key in STEP_METRICS[recipe]:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
