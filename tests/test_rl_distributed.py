"""The RL recipe on two CPU processes (gloo, DDP): each rank samples its share and computes its
share of the old log-probs, every rank ends with all of them, and one process training on the same
round files ends with the same weights."""

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


def test_ddp_samples_its_shares_starts_each_round_on_policy_and_trains_as_one_process(
        tmp_path, tiny_model_dir, prompt_file, monkeypatch):
    sys.path.insert(0, str(HERE))
    monkeypatch.setenv("PYTHONPATH", str(HERE))
    ddp = tmp_path / "ddp"
    torchrun("-m", "cookbook.recipes.rl.train", *args(ddp, tiny_model_dir, prompt_file, "distributed=ddp",
                                                      "precision=fp32"))
    for index in (0, 1):
        data = read(ddp, index)
        assert [r.messages[0]["content"] for r in data.records] == PROMPTS[4 * index : 4 * index + 4]
        for record in data.records:
            if record.kept:
                assert [len(v) for v in record.old_logps] == [len(reply.tokens) for reply in record.replies]
    two = train_records(ddp)
    for first in (two[0], two[2]):
        # Each rank's old log-probs came back to the replies they belong to: every ratio is exactly 1.
        assert first["pg/ratio_min"] == first["pg/ratio_max"] == 1.0

    # One process reads the rounds the two ranks sampled instead of sampling its own.
    single = tmp_path / "single"
    single.mkdir()
    shutil.copytree(ddp / "rounds", single / "rounds")
    cli(args(single, tiny_model_dir, prompt_file, "precision=fp32", "behavior_if_log_dir_exists=resume"))
    one = train_records(single)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        for key in ("loss", "pg/ratio_mean", "pg/ratio_min", "pg/ratio_max", "pg/clip_fraction", "num_tokens",
                    "pg/replies"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    w1, w2 = load_file(single / "final" / "model.safetensors"), load_file(ddp / "final" / "model.safetensors")
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=5e-5, msg=name)
