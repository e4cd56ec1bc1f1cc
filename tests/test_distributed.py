"""Two CPU processes (gloo) give the same losses and weights as one process with the same global
batch, under DDP and FSDP2, and every rank holds identical parameters and gradients."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cookbook.recipes.preference.train import cli
from cookbook.training.metrics import read_metrics

pytestmark = pytest.mark.distributed

ARGS = ["dataset.max_pairs=32", "dataset.test_size=8", "max_length=128", "show_example=false", "max_steps=3",
        "batch_size=8", "micro_batch_size=2", "eval_every=2", "learning_rate=1e-3"]


def torchrun(*args: str, cwd: Path | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory, tiny_model_dir):
    log_path = tmp_path_factory.mktemp("single") / "run"
    cli([f"log_path={log_path}", f"model_name={tiny_model_dir}", *ARGS])
    return log_path


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(tmp_path, tiny_model_dir, single_process_run, strategy):
    log_path = tmp_path / strategy
    torchrun("-m", "cookbook.recipes.preference.train", f"log_path={log_path}", f"model_name={tiny_model_dir}",
             *ARGS, f"distributed={strategy}")
    one, two = read_metrics(single_process_run), read_metrics(log_path)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        for key in ("dpo_loss", "margin", "accuracy", "num_pairs", "num_tokens", "test/dpo_loss", "test/accuracy"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    w1 = load_file(single_process_run / "final" / "model.safetensors")
    w2 = load_file(log_path / "final" / "model.safetensors")
    assert w1.keys() == w2.keys()
    # Adam turns float-noise-sized gradients of a few elements into lr-sized steps; 5e-5 on
    # weights of scale ~0.07 still catches any real difference in the update.
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=5e-5, msg=name)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_ranks_hold_identical_gradients_and_parameters(tmp_path, tiny_model_dir, strategy):
    out = tmp_path / "sync"
    worker = Path(__file__).with_name("rank_sync_worker.py")
    torchrun(str(worker), tiny_model_dir, strategy, str(out))
    rank0 = json.loads(Path(f"{out}.rank0.json").read_text())
    rank1 = json.loads(Path(f"{out}.rank1.json").read_text())
    assert rank0["grad_sums"] == pytest.approx(rank1["grad_sums"], rel=1e-6)
    assert rank0["param_sum"] == pytest.approx(rank1["param_sum"], rel=1e-7)
    assert rank0["grad_sums"][0] > 0
