"""The RL recipe on two CPU processes (gloo, DDP and FSDP2): each rank samples its share and computes
its share of the old log-probs, every rank ends with all of them, and one process training on the
same round files ends with the same weights. Under FSDP2 the ranks hold different numbers of kept
replies, so the stand-ins that keep their forwards in step are exercised."""

import shutil
import sys
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import torchrun
from test_rl_recipe import PROMPTS, args, read, train_records

from cookbook.recipes.rl.train import cli
from cookbook.training.schedule import rank_micro_batches

pytestmark = pytest.mark.distributed
HERE = Path(__file__).parent


def constant_on_prompts_0_and_1(item, reply: str) -> float:
    """Groups of prompts 0 and 1 have zero variance; the others' replies (distinct texts) differ."""
    number = int(item.messages[-1]["content"].split()[-1].rstrip("."))
    return 1.0 if number < 2 else float(zlib.crc32(reply.encode()) % 1000)


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(f'"{p}"\n' for p in PROMPTS))
    return path


def assert_one_process_trains_alike(run_dir: Path, tmp_path: Path, tiny_model_dir, prompt_file, *extra: str):
    """One process reading the rounds the two ranks sampled (instead of sampling its own) logs the
    same step metrics and ends with the same weights."""
    single = tmp_path / "single"
    single.mkdir()
    shutil.copytree(run_dir / "rounds", single / "rounds")
    cli(args(single, tiny_model_dir, prompt_file, *extra, "behavior_if_log_dir_exists=resume"))
    one, two = train_records(single), train_records(run_dir)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        for key in ("loss", "pg/ratio_mean", "pg/ratio_min", "pg/ratio_max", "pg/clip_fraction", "num_tokens",
                    "pg/replies", "pg/kl"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    w1, w2 = load_file(single / "final" / "model.safetensors"), load_file(run_dir / "final" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=5e-5, msg=name)


def train_on_two_ranks(log_path: Path, tiny_model_dir, prompt_file, monkeypatch, *extra: str) -> Path:
    # The ranks import this file's reward functions by module name.
    sys.path.insert(0, str(HERE))
    monkeypatch.setenv("PYTHONPATH", str(HERE))
    torchrun("-m", "cookbook.recipes.rl.train", *args(log_path, tiny_model_dir, prompt_file, *extra))
    return log_path


def test_ddp_samples_its_shares_starts_each_round_on_policy_and_trains_as_one_process(
        tmp_path, tiny_model_dir, prompt_file, monkeypatch):
    ddp = train_on_two_ranks(tmp_path / "ddp", tiny_model_dir, prompt_file, monkeypatch, "distributed=ddp",
                             "precision=fp32")
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
    assert_one_process_trains_alike(ddp, tmp_path, tiny_model_dir, prompt_file, "precision=fp32")


# 5 prompts a round (an odd number: rank 0 samples 3, rank 1 2 and a stand-in), 3 of them kept: 9
# replies, 5 on rank 0 and 4 on rank 1, one per micro-batch. kl_coef > 0 runs the reference pass too.
FSDP_ARGS = ("reward=test_rl_distributed:constant_on_prompts_0_and_1", "batch_size=15", "micro_batch_size=1",
             "sampling_batch_size=4", "kl_coef=0.05", "precision=fp32")


def test_fsdp_ranks_with_different_numbers_of_replies_run_in_step_and_train_as_one_process(
        tmp_path, tiny_model_dir, prompt_file, monkeypatch):
    fsdp = train_on_two_ranks(tmp_path / "fsdp", tiny_model_dir, prompt_file, monkeypatch, "distributed=fsdp",
                              *FSDP_ARGS)
    for index, prompts in ((0, [0, 1, 2, 3, 4]), (1, [5, 6, 7, 0, 1])):
        data = read(fsdp, index)
        assert [r.messages[0]["content"] for r in data.records] == [PROMPTS[i] for i in prompts]
        assert [record.kept for record in data.records] == [i >= 2 for i in prompts]
        kept = [record for record in data.records if record.kept]
        for record in kept:
            assert [len(v) for v in record.old_logps] == [len(reply.tokens) for reply in record.replies]
            assert [len(v) for v in record.reference_logps] == [len(reply.tokens) for reply in record.replies]
        num_replies = sum(len(record.replies) for record in kept)
        # The precondition of the test: rank 1 runs fewer real micro-batches than rank 0.
        assert [len(rank_micro_batches(list(range(num_replies)), rank, 2, 1)) for rank in (0, 1)] == [5, 4]
    two = train_records(fsdp)
    assert [r["pg/replies"] for r in two] == [9] * 4
    for first in (two[0], two[2]):
        # The stand-ins left every old log-prob in place: the first update's ratios are exactly 1.
        assert first["pg/ratio_min"] == first["pg/ratio_max"] == 1.0
    assert_one_process_trains_alike(fsdp, tmp_path, tiny_model_dir, prompt_file, *FSDP_ARGS)
