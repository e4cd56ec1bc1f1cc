"""LoRA on two CPU processes (gloo): DDP and FSDP2 give the losses and adapters of one process with the
same global batch, with the reference run in-step as the adapter-off policy; bf16-true under FSDP2
(fp32 adapters beside a bf16 base) trains from an exact step 0."""

import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from cookbook.recipes.preference.train import cli
from cookbook.training.metrics import read_metrics

pytestmark = pytest.mark.distributed

ARGS = ["dataset.max_pairs=32", "dataset.test_size=8", "max_length=128", "show_example=false", "max_steps=3",
        "batch_size=8", "micro_batch_size=2", "eval_every=2", "learning_rate=5e-3", "lora_rank=4",
        "write_merged_final=false", "save_every=2"]  # step 2: a resumable checkpoint (adapters + optimizer gathered)


def torchrun(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory, tiny_model_dir):
    log_path = tmp_path_factory.mktemp("single") / "run"
    cli([f"log_path={log_path}", f"model_name={tiny_model_dir}", *ARGS, "precision=fp32"])
    return log_path


@pytest.mark.parametrize(("strategy", "reference"), [("ddp", "precompute_reference=false"),
                                                     ("fsdp", "precompute_reference=false"),
                                                     ("fsdp", "precompute_reference=true")])
def test_two_ranks_match_one_process(tmp_path, tiny_model_dir, single_process_run, strategy, reference):
    log_path = tmp_path / strategy
    torchrun("-m", "cookbook.recipes.preference.train", f"log_path={log_path}", f"model_name={tiny_model_dir}",
             *ARGS, f"distributed={strategy}", "precision=fp32", reference)
    one, two = read_metrics(single_process_run), read_metrics(log_path)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    assert next(r for r in two if "dpo_loss" in r)["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)
    for a, b in zip(one, two):
        for key in ("dpo_loss", "margin", "grad_norm", "num_tokens", "test/dpo_loss", "test/accuracy"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert (log_path / "step_000002" / "training_state.pt").exists()
    w1 = load_file(single_process_run / "final" / "adapter_model.safetensors")
    w2 = load_file(log_path / "final" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=5e-5, msg=name)


def test_fsdp_bf16_true_trains_fp32_adapters(tmp_path, tiny_model_dir):
    log_path = tmp_path / "bf16-true"
    torchrun("-m", "cookbook.recipes.preference.train", f"log_path={log_path}", f"model_name={tiny_model_dir}",
             *ARGS, "distributed=fsdp", "precision=bf16-true", "precompute_reference=false")
    records = [r for r in read_metrics(log_path) if "dpo_loss" in r]
    assert records[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert all(math.isfinite(r["dpo_loss"]) and r["grad_norm"] > 0 for r in records)
    adapters = load_file(log_path / "final" / "adapter_model.safetensors")
    assert all(w.dtype == torch.float32 for w in adapters.values())
    assert any(k.endswith("lora_B.weight") and w.abs().max() > 0 for k, w in adapters.items())
