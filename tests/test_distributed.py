"""Two CPU processes (gloo) give the same losses and weights as one process with the same global
batch, for DPO and SFT, under DDP and FSDP2, and every rank holds identical parameters and gradients."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cookbook.recipes.preference.train import cli
from cookbook.recipes.sft.train import cli as sft_cli
from cookbook.training.metrics import read_metrics

pytestmark = pytest.mark.distributed

ARGS = ["dataset.max_pairs=32", "dataset.test_size=8", "max_length=128", "show_example=false", "max_steps=3",
        "batch_size=8", "micro_batch_size=2", "eval_every=2", "learning_rate=1e-3"]


def torchrun(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


# fp32 must match one process to float noise. In bf16 a rank's micro-batches hold other pairs than
# one process's, so rows are padded and multiplied in other shapes and round differently; FSDP2
# also gathers bf16 parameters (its mixed-precision policy), where one process autocasts fp32 ones.
TOLERANCES = {"fp32": 1e-4, "bf16-mixed": 2e-2}  # relative, on the logged metrics


@pytest.fixture(scope="module")
def single_process_runs(tmp_path_factory, tiny_model_dir):
    runs = {}
    for precision in TOLERANCES:
        log_path = tmp_path_factory.mktemp("single") / precision
        cli([f"log_path={log_path}", f"model_name={tiny_model_dir}", *ARGS, f"precision={precision}"])
        runs[precision] = log_path
    return runs


@pytest.mark.parametrize("precision", list(TOLERANCES))
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(tmp_path, tiny_model_dir, single_process_runs, strategy, precision):
    log_path = tmp_path / strategy
    torchrun("-m", "cookbook.recipes.preference.train", f"log_path={log_path}", f"model_name={tiny_model_dir}",
             *ARGS, f"distributed={strategy}", f"precision={precision}")
    single = single_process_runs[precision]
    tolerance = TOLERANCES[precision]
    one, two = read_metrics(single), read_metrics(log_path)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        for key in ("dpo_loss", "margin", "accuracy", "num_pairs", "num_tokens", "test/dpo_loss", "test/accuracy"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=tolerance, abs=1e-6), (a["step"], key)
    assert json.loads((log_path / "config.json").read_text())["resolved_precision"] == precision
    w1 = load_file(single / "final" / "model.safetensors")
    w2 = load_file(log_path / "final" / "model.safetensors")
    assert w1.keys() == w2.keys() and all(w.dtype == torch.float32 for w in w2.values())
    # Adam turns float-noise-sized gradients of a few elements into lr-sized steps (lr 1e-3, 3 steps):
    # in fp32 5e-5 on weights of scale ~0.07 still catches any real difference in the update. In bf16
    # the noise is larger, so a few elements whose gradient is near 0 take the opposite step: compare
    # the whole update's direction, and require all but a few elements to agree.
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    for name in w1:
        if precision == "fp32":
            torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=5e-5, msg=name)
            continue
        update1, update2 = (w1[name] - start[name]).flatten(), (w2[name] - start[name]).flatten()
        assert torch.nn.functional.cosine_similarity(update1, update2, dim=0) > 0.98, name
        assert ((w1[name] - w2[name]).abs() > 1e-4).float().mean() < 0.05, name


SFT_ARGS = ["dataset.preference.max_pairs=24", "dataset.preference.test_size=8", "max_length=128",
            "show_example=false", "max_steps=3", "batch_size=8", "micro_batch_size=2", "eval_every=2",
            "learning_rate=1e-3", "precision=fp32"]


@pytest.fixture(scope="module")
def sft_single_process_run(tmp_path_factory, tiny_model_dir):
    log_path = tmp_path_factory.mktemp("sft-single") / "run"
    sft_cli([f"log_path={log_path}", f"model_name={tiny_model_dir}", *SFT_ARGS])
    return log_path


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_sft_two_ranks_match_one_process(tmp_path, tiny_model_dir, sft_single_process_run, strategy):
    """SFT's loss is the mean NLL per trained token of the global batch, so splitting the batch over
    two ranks must not change it (fp32: the DPO test's tolerances)."""
    log_path = tmp_path / strategy
    torchrun("-m", "cookbook.recipes.sft.train", f"log_path={log_path}", f"model_name={tiny_model_dir}",
             *SFT_ARGS, f"distributed={strategy}")
    one, two = read_metrics(sft_single_process_run), read_metrics(log_path)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    assert [r["step"] for r in one if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in one if "test/nll" in r] == [0, 2, 3]
    for a, b in zip(one, two):
        for key in ("loss", "sequence_nll", "num_sequences", "num_trained_tokens", "num_tokens", "test/nll"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert json.loads((log_path / "config.json").read_text())["distributed"] == strategy
    w1 = load_file(sft_single_process_run / "final" / "model.safetensors")
    w2 = load_file(log_path / "final" / "model.safetensors")
    assert w1.keys() == w2.keys()
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(w1[name], start[name]) for name in w1)  # the runs trained
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


def test_a_second_epoch_uses_one_reference_value_per_pair(tmp_path, tiny_model_dir):
    """Over two epochs a pair is trained on one rank, then maybe the other: both compute its
    reference log-probs, and the shared table must hold one of them, not their sum."""
    epochs = ["dataset.max_pairs=24", "dataset.test_size=8", "max_length=128", "show_example=false", "num_epochs=2",
              "batch_size=8", "micro_batch_size=2", "eval_every=0", "learning_rate=1e-3", "precision=fp32"]
    single = tmp_path / "single"
    cli([f"log_path={single}", f"model_name={tiny_model_dir}", *epochs])
    ddp = tmp_path / "ddp"
    torchrun("-m", "cookbook.recipes.preference.train", f"log_path={ddp}", f"model_name={tiny_model_dir}", *epochs,
             "distributed=ddp")
    one = [r for r in read_metrics(single) if "dpo_loss" in r]
    two = [r for r in read_metrics(ddp) if "dpo_loss" in r]
    assert len(one) == len(two) == 6
    for a, b in zip(one, two):
        assert a["dpo_loss"] == pytest.approx(b["dpo_loss"], rel=1e-4), a["step"]
    table = torch.load(ddp / "reference_logps.pt", weights_only=True)
    expected = torch.load(single / "reference_logps.pt", weights_only=True)
    torch.testing.assert_close(table["train"], expected["train"], rtol=1e-5, atol=1e-4)


def test_bf16_true_under_fsdp_saves_the_fp32_start_plus_the_updates(tmp_path, tiny_model_dir):
    """FSDP2 shards the compensation that starts at what the bf16 cast dropped, like the weights: the
    checkpoint of 2 tiny steps is the fp32 start plus about fp32's update (see test_precision)."""
    from test_precision import _update_stats

    common = ["dataset.max_pairs=16", "dataset.test_size=4", "max_length=128", "show_example=false", "max_steps=2",
              "batch_size=4", "micro_batch_size=2", "eval_every=0", "save_every=0", "learning_rate=1e-6",
              "lr_schedule=constant"]
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    cli([f"log_path={tmp_path / 'fp32'}", f"model_name={tiny_model_dir}", *common, "precision=fp32"])
    torchrun("-m", "cookbook.recipes.preference.train", f"log_path={tmp_path / 'fsdp'}", f"model_name={tiny_model_dir}",
             *common, "distributed=fsdp", "precision=bf16-true")
    updates = {}
    for name in ("fp32", "fsdp"):
        final = load_file(tmp_path / name / "final" / "model.safetensors")
        updates[name] = {n: final[n].float() - start[n].float() for n in final}
    fraction, ratio, cosine = _update_stats(updates["fsdp"], updates["fp32"])
    assert fraction >= 0.9 and 0.8 <= ratio <= 1.25 and cosine >= 0.7, (fraction, ratio, cosine)


def test_a_process_group_of_one_keeps_the_plain_optimizer_state(tmp_path, tiny_model):
    """A vLLM engine in a single process makes a process group of one for itself: checkpoints then
    hold the same optimizer state as without it, so a run resumes with either sampler."""
    import torch.distributed as dist

    from cookbook.training.distributed import full_optimizer_state_dict, load_full_optimizer_state_dict

    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=1e-3)
    tiny_model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    plain = full_optimizer_state_dict(tiny_model, optimizer)
    made = not dist.is_initialized()  # else an engine of an earlier test in this process made one
    if made:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        in_group = full_optimizer_state_dict(tiny_model, optimizer)
        assert in_group.keys() == plain.keys() and in_group["state"].keys() == plain["state"].keys()
        fresh = torch.optim.AdamW(tiny_model.parameters(), lr=1e-3)
        load_full_optimizer_state_dict(tiny_model, fresh, plain)
        assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], plain["state"][0]["exp_avg"])
    finally:
        if made:
            dist.destroy_process_group()
