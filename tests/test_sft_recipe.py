"""The SFT recipe through its real CLI on a tiny random-init model, its exact resume, and the
SFT -> DPO chain."""

import json
import math
import os
import signal
from pathlib import Path

import chz
import pytest
import torch
from safetensors.torch import load_file

from cookbook.errors import RunStopped
from cookbook.recipes.preference.train import cli as dpo_cli
from cookbook.recipes.sft.train import cli
from cookbook.training import metrics as metrics_module
from cookbook.training.metrics import read_metrics

FAST = ["dataset.preference.max_pairs=48", "dataset.preference.test_size=16", "max_length=128",
        "show_example=false", "batch_size=8", "micro_batch_size=4"]


def run(tmp_path: Path, model: str, *args: str, name: str = "sft") -> Path:
    log_path = tmp_path / name
    cli([f"log_path={log_path}", f"model_name={model}", *FAST, *args])
    return log_path


def train_records(log_path: Path) -> list[dict]:
    return [r for r in read_metrics(log_path) if "nll" in r and "test/nll" not in r]


def test_smoke_logs_the_sft_metrics_and_writes_a_checkpoint(tmp_path, tiny_model_dir):
    log_path = run(tmp_path, tiny_model_dir, "max_steps=2", "eval_every=1")
    records = train_records(log_path)
    assert [r["step"] for r in records] == [1, 2]
    for key in ("loss", "nll", "num_sequences", "num_trained_tokens", "num_tokens", "learning_rate", "grad_norm",
                "tokens_per_second", "progress"):
        assert key in records[0], key
    assert records[0]["loss"] == records[0]["nll"] and records[0]["num_sequences"] == 8
    assert records[0]["num_trained_tokens"] < records[0]["num_tokens"]  # prompts carry no loss
    evals = [r for r in read_metrics(log_path) if "test/nll" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]
    assert math.isfinite(evals[0]["test/nll"]) and evals[0]["test/ppl"] == pytest.approx(math.exp(evals[0]["test/nll"]))
    config = json.loads((log_path / "config.json").read_text())
    assert config["dataset"]["builder"].startswith("cookbook.datasets.supervised:ChosenBuilder")
    meta = json.loads((log_path / "final" / "cookbook_checkpoint.json").read_text())
    assert meta["renderer_name"] == "chatml" and meta["step"] == 2
    assert (log_path / "metrics.png").exists()


def test_sft_lowers_held_out_nll(tmp_path, tiny_model_dir):
    log_path = run(tmp_path, tiny_model_dir, "num_epochs=3", "learning_rate=3e-3", "lr_schedule=constant",
                   "eval_every=0")
    evals = [r["test/nll"] for r in read_metrics(log_path) if "test/nll" in r]
    assert evals[-1] < evals[0] - 1.0


def test_packed_and_padded_rows_train_the_same(tmp_path, tiny_model_dir):
    common = ("max_steps=3", "eval_every=0", "learning_rate=1e-3", "precision=fp32")
    packed = train_records(run(tmp_path, tiny_model_dir, *common, "layout=packed", name="packed"))
    padded = train_records(run(tmp_path, tiny_model_dir, *common, "layout=padded", name="padded"))
    for a, b in zip(packed, padded):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert packed[0]["slot_fill"] == 1.0 > padded[0]["slot_fill"]


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, tiny_model_dir, monkeypatch):
    """A Ctrl-C after step 2 saves a resumable checkpoint; resuming from it repeats the uninterrupted
    run exactly (weights, optimizer, schedule, data order and RNG all come back)."""
    common = ("max_steps=5", "eval_every=2", "learning_rate=1e-3", "lr_schedule=cosine", "warmup_steps=1",
              "precision=fp32")
    straight = run(tmp_path, tiny_model_dir, *common, name="straight")

    original = metrics_module.MetricLogger.log_metrics

    def log_and_interrupt(self, metrics, step):
        original(self, metrics, step)
        if step == 2 and "nll" in metrics and "test/nll" not in metrics:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(metrics_module.MetricLogger, "log_metrics", log_and_interrupt)
    with pytest.raises(RunStopped):
        run(tmp_path, tiny_model_dir, *common, name="resumed")
    monkeypatch.setattr(metrics_module.MetricLogger, "log_metrics", original)
    interrupted = tmp_path / "resumed"
    assert not (interrupted / "final").exists()
    stopped_at = max(r["step"] for r in train_records(interrupted))
    assert 2 <= stopped_at < 5 and (interrupted / f"step_{stopped_at:06d}" / "training_state.pt").exists()

    run(tmp_path, tiny_model_dir, *common, "behavior_if_log_dir_exists=resume", name="resumed")
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(interrupted / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ra, rb = read_metrics(straight), read_metrics(interrupted)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    assert [r["step"] for r in train_records(straight)] == [1, 2, 3, 4, 5]
    for x, y in zip(ra, rb):
        for key in ("loss", "nll", "sequence_nll", "num_trained_tokens", "grad_norm", "learning_rate", "test/nll"):
            assert x.get(key) == y.get(key), (x["step"], key)


def test_trains_on_a_messages_file_given_only_its_path(tmp_path, tiny_model_dir):
    rows = [{"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": str(i)}]}
            for i in range(12)]
    data_file = tmp_path / "chats.jsonl"
    data_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    log_path = tmp_path / "own"
    cli([f"log_path={log_path}", f"model_name={tiny_model_dir}", f"dataset={data_file}", "dataset.test_size=4",
         "batch_size=4", "micro_batch_size=4", "max_steps=2", "show_example=false"])
    summary = next(r for r in read_metrics(log_path) if "data/train_examples" in r)
    assert summary["data/train_examples"] == 8 and summary["data/test_examples"] == 4


def test_sft_then_dpo_from_its_checkpoint(tmp_path, tiny_model_dir):
    """The chain the SFT recipe README shows: SFT on the chosen replies, then DPO starting from (and anchored to)
    the SFT checkpoint, whose renderer it inherits; at DPO's step 0 policy = reference."""
    sft = run(tmp_path, tiny_model_dir, "max_steps=3", "eval_every=0", "learning_rate=1e-3")
    dpo = tmp_path / "dpo"
    dpo_cli([f"log_path={dpo}", f"model_name={sft / 'final'}", "dataset.max_pairs=48", "dataset.test_size=16",
             "max_length=128", "show_example=false", "batch_size=4", "micro_batch_size=4", "max_steps=2",
             "eval_every=0"])
    first_eval = next(r for r in read_metrics(dpo) if "test/dpo_loss" in r)
    assert first_eval["test/dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)
    meta = json.loads((dpo / "final" / "cookbook_checkpoint.json").read_text())
    assert meta["base_model_name"] == str(sft / "final") and meta["renderer_name"] == "chatml"


def test_help_lists_fields_with_docs():
    with pytest.raises(chz.blueprint.EntrypointHelpException) as help_text:
        cli(["--help"])
    out = str(help_text.value)
    for field in ("train_on", "layout", "precision", "dataset", "Examples per optimizer step"):
        assert field in out
