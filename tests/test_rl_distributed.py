"""The RL recipe on two CPU processes (gloo, DDP): each rank samples its share and computes its
share of the old log-probs, every rank ends with all of them; training on the same round files
gives what one process gives."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import torchrun
from test_rl_recipe import PROMPTS, args, read, train_records

from cookbook.recipes.rl.train import cli

pytestmark = pytest.mark.distributed
HERE = Path(__file__).parent


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(f'"{p}"\n' for p in PROMPTS))
    return path


def test_ddp_ranks_sample_their_share_and_the_first_update_is_on_policy(tmp_path, tiny_model_dir, prompt_file,
                                                                          monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(HERE))
    log_path = tmp_path / "ddp"
    argv = [a for a in args(log_path, tiny_model_dir, prompt_file) if not a.startswith("rounds=")]
    torchrun("-m", "cookbook.recipes.rl.train", *argv, "rounds=1", "distributed=ddp", "precision=fp32")
    data = read(log_path, 0)
    assert [r.messages[0]["content"] for r in data.records] == PROMPTS[:4]
    for record in data.records:
        if record.kept:
            assert [len(v) for v in record.old_logps] == [len(reply.tokens) for reply in record.replies]
    first = train_records(log_path)[0]
    # Each rank's old log-probs came back to the reply they belong to: every ratio is exactly 1.
    assert first["pg/ratio_min"] == first["pg/ratio_max"] == 1.0
    assert first["pg/replies"] == sum(len(r.replies) for r in data.records if r.kept)


def test_ddp_trains_on_the_rounds_as_one_process_does(tmp_path, tiny_model_dir, prompt_file, monkeypatch):
    sys.path.insert(0, str(HERE))
    monkeypatch.setenv("PYTHONPATH", str(HERE))
    single = tmp_path / "single"
    cli(args(single, tiny_model_dir, prompt_file, "precision=fp32"))
    # The two-rank run reads the rounds the single process sampled instead of sampling its own.
    log_path = tmp_path / "ddp"
    log_path.mkdir()
    shutil.copytree(single / "rounds", log_path / "rounds")
    torchrun("-m", "cookbook.recipes.rl.train", *args(log_path, tiny_model_dir, prompt_file, "distributed=ddp",
                                                      "precision=fp32", "behavior_if_log_dir_exists=resume"))
    one, two = train_records(single), train_records(log_path)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        for key in ("loss", "pg/ratio_mean", "pg/ratio_min", "pg/ratio_max", "pg/clip_fraction", "num_tokens"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    w1, w2 = load_file(single / "final" / "model.safetensors"), load_file(log_path / "final" / "model.safetensors")
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=5e-5, msg=name)
