"""The on-policy recipe on two CPU processes (gloo): under FSDP2 the sharded policy samples (every
rank its share, in lockstep) and computes each round's reference; under DDP, training on the same
round files gives what one process gives."""

import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import torchrun
from test_on_policy_recipe import PROMPTS, args, train_records

from cookbook.on_policy.rounds import read_round
from cookbook.recipes.preference.on_policy import cli
from cookbook.training.metrics import read_metrics

pytestmark = pytest.mark.distributed
HERE = Path(__file__).parent


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(f'"{p}"\n' for p in PROMPTS))
    return path


def test_fsdp_ranks_sample_their_share_and_start_each_round_at_the_reference(tmp_path, tiny_model_dir, prompt_file,
                                                                               monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(HERE))
    log_path = tmp_path / "fsdp"
    torchrun("-m", "cookbook.recipes.preference.on_policy",
             *args(log_path, tiny_model_dir, prompt_file, "distributed=fsdp", "precision=fp32"))
    for index in (0, 1):
        data = read_round(log_path, index)
        assert [r.messages[0]["content"] for r in data.records] == PROMPTS[6 * index : 6 * index + 6]
        assert all(len(r.replies) == 3 and r.replies[0].tokens for r in data.records)
        assert all(r.reference_logps is not None for r in data.paired)
    records = train_records(log_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for record in (records[0], records[2]):
        assert record["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert (log_path / "final" / "model.safetensors").exists()


def test_ddp_trains_on_the_rounds_as_one_process_does(tmp_path, tiny_model_dir, prompt_file, monkeypatch):
    sys.path.insert(0, str(HERE))
    monkeypatch.setenv("PYTHONPATH", str(HERE))
    single = tmp_path / "single"
    cli(args(single, tiny_model_dir, prompt_file, "precision=fp32"))
    # The two-rank run reads the rounds the single process sampled instead of sampling its own.
    log_path = tmp_path / "ddp"
    log_path.mkdir()
    shutil.copytree(single / "rounds", log_path / "rounds")
    torchrun("-m", "cookbook.recipes.preference.on_policy",
             *args(log_path, tiny_model_dir, prompt_file, "distributed=ddp", "precision=fp32",
                   "behavior_if_log_dir_exists=resume"))
    one, two = train_records(single), train_records(log_path)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        for key in ("dpo_loss", "margin", "num_pairs", "num_tokens"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert [r for r in read_metrics(log_path) if "samples/reward_mean" in r][0]["samples/reward_mean"] == \
        read_round(single, 0).summary["samples/reward_mean"]
    w1, w2 = load_file(single / "final" / "model.safetensors"), load_file(log_path / "final" / "model.safetensors")
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=5e-5, msg=name)
