"""Two CPU processes (gloo) train the reward model as one process with the same global batch does:
the same losses, accuracies and held-out metrics, and the same weights, head included."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import torchrun

from cookbook.recipes.reward_model.train import cli
from cookbook.training.metrics import read_metrics

pytestmark = pytest.mark.distributed

ARGS = ["dataset.max_pairs=32", "dataset.test_size=8", "max_length=128", "show_example=false", "max_steps=3",
        "batch_size=8", "micro_batch_size=2", "eval_every=2", "learning_rate=1e-3", "precision=fp32",
        "display=plain"]


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory, tiny_model_dir):
    log_path = tmp_path_factory.mktemp("rm-single") / "run"
    cli([f"log_path={log_path}", f"model_name={tiny_model_dir}", *ARGS])
    return log_path


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(tmp_path, tiny_model_dir, single_process_run, strategy):
    log_path = tmp_path / strategy
    torchrun("-m", "cookbook.recipes.reward_model.train", f"log_path={log_path}", f"model_name={tiny_model_dir}",
             *ARGS, f"distributed={strategy}")
    one, two = read_metrics(single_process_run), read_metrics(log_path)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    assert [r["step"] for r in one if "test/loss" in r] == [0, 2, 3]
    for a, b in zip(one, two):
        for key in ("loss", "accuracy", "margin", "score_mean", "num_pairs", "num_tokens", "test/loss",
                    "test/accuracy", "test/margin"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    w1 = load_file(single_process_run / "final" / "model.safetensors")
    w2 = load_file(log_path / "final" / "model.safetensors")
    assert w1.keys() == w2.keys() and "score.weight" in w1
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(w1[name], start[name]) for name in start)  # the decoder trained
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=5e-5, msg=name)
