"""The KTO recipe through its real CLI on a tiny random-init model: the step-0 invariant, a run that
lowers its loss, one reference point per global batch, exact resume, the help and the warnings."""

import json
import os
import signal
from pathlib import Path

import chz
import pytest
import torch
from safetensors.torch import load_file

from cookbook.datasets.unpaired import BadLabelError
from cookbook.errors import RunStopped
from cookbook.recipes.preference.kto import cli
from cookbook.training import metrics as metrics_module
from cookbook.training.metrics import read_metrics

FAST = ["dataset.preference.max_pairs=24", "dataset.preference.test_size=8", "max_length=128",
        "show_example=false", "batch_size=8", "micro_batch_size=4"]


def run(tmp_path: Path, model: str, *args: str, name: str = "kto") -> Path:
    log_path = tmp_path / name
    cli([f"log_path={log_path}", f"model_name={model}", *FAST, *args])
    return log_path


def train_records(log_path: Path) -> list[dict]:
    return [r for r in read_metrics(log_path) if "kl" in r]


def eval_records(log_path: Path) -> list[dict]:
    return [r for r in read_metrics(log_path) if "test/loss" in r]


@pytest.mark.parametrize(("precompute", "precision"),
                         [("true", "fp32"), ("true", "bf16-mixed"), ("false", "bf16-mixed")])
def test_at_step_zero_every_example_costs_one_half(tmp_path, tiny_model_dir, precompute, precision):
    """Policy = reference before the first update: r = 0 and KL = 0, so each loss is 1 - sigmoid(0),
    exactly, in any precision: the trained pass lays out each row as the reference saw it."""
    log_path = run(tmp_path, tiny_model_dir, "max_steps=2", "eval_every=0", f"precompute_reference={precompute}",
                   f"precision={precision}")
    first = train_records(log_path)[0]
    assert first["step"] == 1 and first["loss"] == 0.5 and first["kl"] == 0.0
    assert first["desirable_reward"] == first["undesirable_reward"] == first["reward_margin"] == 0.0
    assert first["num_desirable"] + first["num_undesirable"] == 8
    start = eval_records(log_path)[0]
    assert start["step"] == 0 and start["test/loss"] == 0.5
    assert start["test/num_desirable"] == start["test/num_undesirable"] == 8
    for key in ("test/kl", "test/desirable_reward", "test/undesirable_reward", "test/reward_margin"):
        assert start[key] == 0.0, key
    summary = next(r for r in read_metrics(log_path) if "data/train_examples" in r)
    assert summary["data/train_examples"] == 48 and summary["data/train_desirable"] == 24
    assert (log_path / "final" / "model.safetensors").exists()


@pytest.mark.parametrize("precompute", ["true", "false"])
def test_with_lora_the_reference_is_the_policy_with_its_adapters_off(tmp_path, tiny_model_dir, precompute):
    log_path = run(tmp_path, tiny_model_dir, "max_steps=3", "eval_every=0", "lora_rank=4", "learning_rate=1e-2",
                   "precision=fp32", f"precompute_reference={precompute}")
    records = train_records(log_path)
    assert records[0]["loss"] == 0.5 and records[0]["kl"] == 0.0
    assert records[-1]["loss"] != pytest.approx(0.5, abs=1e-4)  # the adapters moved the policy off the reference
    assert eval_records(log_path)[0]["test/loss"] == 0.5


def test_a_run_lowers_its_loss_and_separates_the_rewards(tmp_path, tiny_model_dir):
    log_path = run(tmp_path, tiny_model_dir, "num_epochs=2", "learning_rate=1e-3", "lr_schedule=constant",
                   "kto_beta=0.5", "eval_every=0")
    losses = [r["loss"] for r in train_records(log_path)]
    assert len(losses) == 12
    assert sum(losses[-4:]) / 4 < 0.45 < losses[0]
    last = train_records(log_path)[-1]
    assert last["reward_margin"] > 0 and last["desirable_reward"] > last["undesirable_reward"]
    evals = eval_records(log_path)
    assert evals[-1]["test/loss"] < evals[0]["test/loss"]


def test_the_reference_point_is_one_per_global_batch_whatever_the_micro_batch(tmp_path, tiny_model_dir):
    common = ("max_steps=3", "eval_every=0", "learning_rate=1e-3", "precision=fp32")
    whole = train_records(run(tmp_path, tiny_model_dir, *common, "micro_batch_size=8", name="whole"))
    split = train_records(run(tmp_path, tiny_model_dir, *common, "micro_batch_size=2", name="split"))
    assert whole[1]["kl"] > 0  # after an update the KL estimate moves off 0
    for a, b in zip(whole, split):
        for key in ("loss", "kl", "desirable_reward", "undesirable_reward"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, tiny_model_dir, monkeypatch):
    """A Ctrl-C after step 2 saves a resumable checkpoint; resuming repeats the uninterrupted run exactly
    (the reference point of each step is a function of the weights and the step's batch)."""
    common = ("max_steps=4", "eval_every=2", "learning_rate=1e-3", "lr_schedule=cosine", "warmup_steps=1",
              "precision=fp32")
    straight = run(tmp_path, tiny_model_dir, *common, name="straight")
    original = metrics_module.MetricLogger.log_metrics

    def log_and_interrupt(self, metrics, step):
        original(self, metrics, step)
        if step == 2 and "kl" in metrics:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(metrics_module.MetricLogger, "log_metrics", log_and_interrupt)
    with pytest.raises(RunStopped):
        run(tmp_path, tiny_model_dir, *common, name="resumed")
    monkeypatch.setattr(metrics_module.MetricLogger, "log_metrics", original)
    interrupted = tmp_path / "resumed"
    assert not (interrupted / "final").exists()
    stopped_at = max(r["step"] for r in train_records(interrupted))
    assert 2 <= stopped_at < 4 and (interrupted / f"step_{stopped_at:06d}" / "training_state.pt").exists()

    run(tmp_path, tiny_model_dir, *common, "behavior_if_log_dir_exists=resume", name="resumed")
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(interrupted / "final" / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ra, rb = read_metrics(straight), read_metrics(interrupted)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        for key in ("loss", "kl", "desirable_reward", "grad_norm", "learning_rate", "test/loss", "test/kl"):
            assert x.get(key) == y.get(key), (x["step"], key)


def feedback_file(tmp_path: Path, n: int = 16, desirable_every: int = 2) -> Path:
    rows = [{"prompt": f"Say {i}.", "completion": f"{i} it is.", "label": i % desirable_every == 0} for i in range(n)]
    path = tmp_path / "feedback.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_trains_on_a_labelled_file_given_only_its_path_and_warns_once_of_unbalanced_weights(
        tmp_path, tiny_model_dir, capsys):
    path = feedback_file(tmp_path, n=20, desirable_every=5)  # 4 desirable of 20
    log_path = tmp_path / "own"
    cli([f"log_path={log_path}", f"model_name={tiny_model_dir}", f"dataset={path}", "dataset.test_size=4",
         "batch_size=4", "micro_batch_size=4", "max_steps=2", "show_example=false"])
    summary = next(r for r in read_metrics(log_path) if "data/train_examples" in r)
    assert summary["data/train_examples"] == 16 and summary["data/test_examples"] == 4
    out = capsys.readouterr().out
    assert out.count("far outside the KTO paper's recommended [1, 4/3]") == 1
    assert json.loads((log_path / "config.json").read_text())["dataset"]["builder"].endswith(":UnpairedFileBuilder")


def test_a_file_with_a_bad_label_stops_with_the_file_row_and_field(tmp_path, tiny_model_dir):
    path = feedback_file(tmp_path)
    lines = path.read_text().splitlines()
    lines[5] = lines[5].replace('"label": true', '"label": "yes"').replace('"label": false', '"label": "yes"')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadLabelError, match=r"feedback\.jsonl:6: field 'label' must be a boolean"):
        cli([f"log_path={tmp_path / 'bad'}", f"model_name={tiny_model_dir}", f"dataset={path}", "max_steps=1"])


def test_help_lists_every_field_with_its_doc():
    with pytest.raises(chz.blueprint.EntrypointHelpException) as help_text:
        cli(["--help"])
    out = str(help_text.value)
    for field in ("kto_beta", "desirable_weight", "undesirable_weight", "precompute_reference", "layout",
                  "unpaired:<preference set>", "Examples per optimizer step"):
        assert field in out, field


def test_bad_option_values_are_refused():
    with pytest.raises(ValueError, match="kto_beta must be a finite number > 0"):
        cli(["kto_beta=0"])
    with pytest.raises(ValueError, match="undesirable_weight must be a finite number > 0"):
        cli(["undesirable_weight=-1"])
