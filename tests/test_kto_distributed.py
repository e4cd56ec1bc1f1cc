"""KTO on two CPU processes (gloo) gives the losses, reference points and weights of one process
with the same global batch: z0 is taken over the step's whole batch, not per rank."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import torchrun

from cookbook.recipes.preference.kto import cli
from cookbook.training.metrics import read_metrics

pytestmark = pytest.mark.distributed

ARGS = ["dataset.preference.max_pairs=16", "dataset.preference.test_size=6", "max_length=128", "show_example=false",
        "max_steps=3", "batch_size=8", "micro_batch_size=2", "eval_every=2", "learning_rate=1e-3", "precision=fp32"]
KEYS = ("loss", "kl", "desirable_reward", "undesirable_reward", "num_desirable", "num_undesirable", "num_tokens",
        "test/loss", "test/kl", "test/reward_margin")


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory, tiny_model_dir):
    single = tmp_path_factory.mktemp("single") / "kto"
    cli([f"log_path={single}", f"model_name={tiny_model_dir}", *ARGS])
    return single


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(tmp_path, tiny_model_dir, single_process_run, strategy):
    single = single_process_run
    two_ranks = tmp_path / strategy
    torchrun("-m", "cookbook.recipes.preference.kto", f"log_path={two_ranks}", f"model_name={tiny_model_dir}", *ARGS,
             f"distributed={strategy}")
    one, two = read_metrics(single), read_metrics(two_ranks)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    assert any(r.get("kl", 0) > 0 for r in one)  # the reference point is not trivially 0
    for a, b in zip(one, two):
        for key in KEYS:
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    w1, w2 = load_file(single / "final" / "model.safetensors"), load_file(two_ranks / "final" / "model.safetensors")
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(w1[name], start[name]) for name in w1)
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=5e-5, msg=name)
