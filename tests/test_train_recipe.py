"""The DPO recipe through its real CLI, on a tiny random-init model and the bundled demo data."""

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
from cookbook.preference import step as preference_step
from cookbook.recipes.preference.train import cli
from cookbook.training import loop as loop_module
from cookbook.training import metrics as metrics_module
from cookbook.training.loop import TrainingDivergedError
from cookbook.training.metrics import read_metrics

# Small enough to run in seconds on 2 cores; test_size keeps eval cheap.
FAST = ["dataset.max_pairs=48", "dataset.test_size=16", "max_length=128", "show_example=false"]


def run(tmp_path: Path, tiny_model_dir: str, *args: str, name: str = "run") -> Path:
    log_path = tmp_path / name
    cli([f"log_path={log_path}", f"model_name={tiny_model_dir}", *FAST, *args])
    return log_path


def train_records(log_path: Path) -> list[dict]:
    return [r for r in read_metrics(log_path) if "dpo_loss" in r]


def test_smoke_writes_every_file(tmp_path, tiny_model_dir):
    log_path = run(tmp_path, tiny_model_dir, "max_steps=2", "batch_size=4", "micro_batch_size=2", "save_every=1")
    names = {p.name for p in log_path.iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoints.jsonl", "reference_logps.pt", "final", "step_000001"} <= names
    config = json.loads((log_path / "config.json").read_text())
    assert config["model_name"] == tiny_model_dir and config["dataset"]["builder"].endswith(":DemoBuilder")

    records = train_records(log_path)
    assert [r["step"] for r in records] == [1, 2]
    for key in ("accuracy", "batch_time", "chosen_reward", "rejected_reward", "dpo_loss", "learning_rate",
                "margin", "num_pairs", "num_tokens", "progress", "grad_norm"):
        assert key in records[0], key
    assert records[-1]["progress"] == 1.0 and records[0]["num_pairs"] == 4
    evals = [r for r in read_metrics(log_path) if "test/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 2]
    assert {"test/nll", "test/dpo_loss", "test/accuracy", "test/margin"} <= set(evals[0])

    # The final checkpoint is a plain HF directory with our metadata.
    from transformers import AutoModelForCausalLM

    final = log_path / "final"
    assert AutoModelForCausalLM.from_pretrained(final) is not None
    meta = json.loads((final / "cookbook_checkpoint.json").read_text())
    assert meta["renderer_name"] == "chatml" and meta["step"] == 2
    index = [json.loads(line) for line in (log_path / "checkpoints.jsonl").read_text().splitlines()]
    assert [e["name"] for e in index] == ["step_000001", "final"]
    assert not (log_path / "step_000001" / "training_state.pt").exists() or index[-1]["resumable"] is False


def test_step_zero_loss_is_ln2_and_eval_accuracy_starts_at_half(tmp_path, tiny_model_dir):
    """Policy == reference at step 0: every margin is 0, the DPO loss is ln 2, ties count half."""
    log_path = run(tmp_path, tiny_model_dir, "max_steps=1", "batch_size=4", "micro_batch_size=4")
    first_eval = next(r for r in read_metrics(log_path) if "test/accuracy" in r)
    assert first_eval["step"] == 0
    assert first_eval["test/dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first_eval["test/accuracy"] == pytest.approx(0.5)
    assert train_records(log_path)[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_training_raises_accuracy(tmp_path, tiny_model_dir):
    """A few epochs over 32 pairs: the model must learn to prefer chosen (fails if learning is broken)."""
    log_path = run(tmp_path, tiny_model_dir, "dataset.max_pairs=32", "num_epochs=6", "batch_size=8",
                   "micro_batch_size=8", "learning_rate=2e-3", "lr_schedule=constant", "eval_every=0",
                   "dpo_beta=0.5")
    records = train_records(log_path)
    first, last = records[:4], records[-4:]
    assert sum(r["accuracy"] for r in last) / 4 > sum(r["accuracy"] for r in first) / 4 + 0.3
    assert sum(r["dpo_loss"] for r in last) / 4 < math.log(2) - 0.2


@pytest.mark.parametrize("loss_type", ["ipo", "hinge", "simpo", "orpo"])
def test_other_losses_train(tmp_path, tiny_model_dir, loss_type):
    """Three epochs of two steps over the same 16 pairs: the last epoch's mean loss must be lower
    than the first's, and its margin higher (the same pairs, so only learning can change them)."""
    log_path = run(tmp_path, tiny_model_dir, f"loss_type={loss_type}", "dataset.max_pairs=16", "dataset.test_size=8",
                   "num_epochs=3", "batch_size=8", "micro_batch_size=4", "learning_rate=2e-3",
                   "lr_schedule=constant", "eval_every=0", "save_every=0")
    records = train_records(log_path)
    assert len(records) == 6 and all(math.isfinite(r["dpo_loss"]) for r in records)
    assert sum(r["num_pairs"] for r in records[:2]) == sum(r["num_pairs"] for r in records[-2:]) == 16
    first_loss, last_loss = (sum(r["dpo_loss"] for r in epoch) / 2 for epoch in (records[:2], records[-2:]))
    first_margin, last_margin = (sum(r["margin"] for r in epoch) / 2 for epoch in (records[:2], records[-2:]))
    assert last_loss < 0.97 * first_loss, (first_loss, last_loss)
    assert last_margin > max(first_margin, 0.0), (first_margin, last_margin)
    has_cache = (log_path / "reference_logps.pt").exists()
    assert has_cache == (loss_type in ("ipo", "hinge"))


def test_reference_in_step_equals_precomputed(tmp_path, tiny_model_dir):
    common = ("max_steps=2", "batch_size=4", "micro_batch_size=2", "eval_every=0")
    a = train_records(run(tmp_path, tiny_model_dir, *common, "precompute_reference=true", name="a"))
    b = train_records(run(tmp_path, tiny_model_dir, *common, "precompute_reference=false", name="b"))
    for ra, rb in zip(a, b):
        assert ra["dpo_loss"] == pytest.approx(rb["dpo_loss"], abs=1e-5)
        assert ra["margin"] == pytest.approx(rb["margin"], abs=1e-5)


def test_reference_auto_scores_first_only_up_to_its_limit(tmp_path, tiny_model_dir, monkeypatch):
    from cookbook.errors import InvalidOptionError
    from cookbook.preference import reference

    # 2 steps x 4 pairs + 16 test pairs = 24 pairs to score.
    assert reference.resolve_precompute("auto", reference.AUTO_PRECOMPUTE_MAX_PAIRS)
    assert not reference.resolve_precompute("auto", reference.AUTO_PRECOMPUTE_MAX_PAIRS + 1)
    assert reference.resolve_precompute("true", 10**9) and not reference.resolve_precompute(False, 1)
    with pytest.raises(InvalidOptionError, match="precompute_reference='yes'"):
        reference.resolve_precompute("yes", 1)
    common = ("max_steps=2", "batch_size=4", "micro_batch_size=2", "eval_every=0")
    monkeypatch.setattr(reference, "AUTO_PRECOMPUTE_MAX_PAIRS", 24)
    assert (run(tmp_path, tiny_model_dir, *common, name="under") / "reference_logps.pt").exists()
    monkeypatch.setattr(reference, "AUTO_PRECOMPUTE_MAX_PAIRS", 23)
    over = run(tmp_path, tiny_model_dir, *common, name="over")
    assert not (over / "reference_logps.pt").exists()
    # In the step or scored first, the same reference: the same losses.
    for a, b in zip(train_records(tmp_path / "under"), train_records(over), strict=True):
        assert a["dpo_loss"] == pytest.approx(b["dpo_loss"], abs=1e-5)


def _final_weights(log_path: Path) -> dict[str, torch.Tensor]:
    return load_file(log_path / "final" / "model.safetensors")


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, tiny_model_dir, monkeypatch, precision):
    """Resume restores weights, optimizer, schedule, data order and RNG, so the resumed run repeats
    the uninterrupted one bit for bit (same process, same shapes: nothing may round differently)."""
    common = ("max_steps=6", "batch_size=4", "micro_batch_size=2", "eval_every=3", "learning_rate=1e-3",
              "lr_schedule=cosine", "warmup_steps=2", f"precision={precision}")
    straight = run(tmp_path, tiny_model_dir, *common, name="straight")

    # Ctrl-C arrives while step 3 is being logged: the loop finishes that step's bookkeeping,
    # notices the request at the next step boundary, saves a resumable checkpoint and returns.
    original = metrics_module.MetricLogger.log_metrics

    def log_and_interrupt(self, metrics, step):
        original(self, metrics, step)
        if step == 3 and "dpo_loss" in metrics:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(metrics_module.MetricLogger, "log_metrics", log_and_interrupt)
    with pytest.raises(RunStopped):
        interrupted = run(tmp_path, tiny_model_dir, *common, name="resumed")
    interrupted = tmp_path / "resumed"
    monkeypatch.setattr(metrics_module.MetricLogger, "log_metrics", original)
    assert not (interrupted / "final").exists()
    stopped_at = max(r["step"] for r in train_records(interrupted))
    assert 3 <= stopped_at < 6 and (interrupted / f"step_{stopped_at:06d}" / "training_state.pt").exists()

    run(tmp_path, tiny_model_dir, *common, "behavior_if_log_dir_exists=resume", name="resumed")
    assert json.loads((interrupted / "config.json").read_text())["resolved_precision"] == precision
    a, b = _final_weights(straight), _final_weights(interrupted)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ra, rb = read_metrics(straight), read_metrics(interrupted)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    assert [r["step"] for r in ra if "dpo_loss" in r] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(ra, rb):
        for key in ("dpo_loss", "margin", "accuracy", "grad_norm", "learning_rate", "test/dpo_loss", "test/accuracy"):
            assert x.get(key) == y.get(key), (x["step"], key)


def test_existing_log_dir_without_tty_raises(tmp_path, tiny_model_dir):
    log_path = tmp_path / "run"
    log_path.mkdir()
    (log_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "dpo_loss": 0.6}) + "\n")
    with pytest.raises(RuntimeError, match="already holds a run.*behavior_if_log_dir_exists=resume"):
        run(tmp_path, tiny_model_dir, "max_steps=1")
    # delete starts over
    run(tmp_path, tiny_model_dir, "max_steps=1", "batch_size=4", "micro_batch_size=4", "eval_every=0",
        "behavior_if_log_dir_exists=delete")
    assert (log_path / "final").exists()


def test_nan_loss_stops_with_last_checkpoint_intact(tmp_path, tiny_model_dir, monkeypatch):
    real_forward = preference_step.preference_forward
    calls = {"n": 0}

    def poisoned(policy, batch, settings, reference_logps):
        calls["n"] += 1
        result = real_forward(policy, batch, settings, reference_logps)
        if calls["n"] > 2:  # steps 1 and 2 (one micro-batch each) are fine, step 3 diverges
            result.loss_sum = result.loss_sum * float("nan")
            result.metric_sums["loss"] = float("nan")
        return result

    monkeypatch.setattr(preference_step, "preference_forward", poisoned)
    with pytest.raises(TrainingDivergedError, match="step 2: loss=nan"):
        run(tmp_path, tiny_model_dir, "max_steps=5", "batch_size=4", "micro_batch_size=4", "eval_every=0",
            "save_every=2")
    log_path = tmp_path / "run"
    assert (log_path / "step_000002" / "training_state.pt").exists()
    assert not (log_path / "final").exists()
    assert not [p for p in log_path.iterdir() if p.name.startswith(".")]  # no half-written checkpoint


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("dpo_beta=0", "dpo_beta must be a finite number > 0"),
        ("dpo_beta=inf", "dpo_beta must be a finite number > 0, got inf"),
        ("learning_rate=-1", "learning_rate must be a finite number > 0"),
        ("micro_batch_size=3", "batch_size=16 must be a multiple of micro_batch_size=3"),
        ("label_smoothing=0.7", r"label_smoothing must be in \[0, 0.5\)"),
        ("loss_type=kto", "kto"),
        ("dataset=nope", "Unknown dataset 'nope'. Registered datasets: .*demo"),
    ],
)
def test_bad_config_fails_before_loading_a_model(tmp_path, arg, message, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("model loaded before config validation")

    monkeypatch.setattr(loop_module, "load_model_and_tokenizer", no_load)
    with pytest.raises(Exception, match=message):
        cli([f"log_path={tmp_path / 'x'}", arg])


def test_uncreatable_log_path_names_the_field(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(loop_module, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match="log_path=.*cannot be created"):
        cli([f"log_path={blocker / 'sub'}"])


def test_help_lists_fields_with_docs():
    # chz prints this and exits when run as a program; under pytest it raises the text.
    with pytest.raises(chz.blueprint.EntrypointHelpException) as help_text:
        cli(["--help"])
    out = str(help_text.value)
    for field in ("log_path", "dpo_beta", "behavior_if_log_dir_exists", "precompute_reference", "dataset"):
        assert field in out
    assert "Examples per optimizer step" in out and "precision" in out


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-5), ("bf16-mixed", 2e-4)])
def test_every_layout_trains_the_same(tmp_path, tiny_model_dir, precision, tolerance):
    """Padded, packed and prefix-shared batches are exact rewrites of each other: same losses (in
    bf16 the matmuls of differently shaped rows round differently, hence the looser tolerance)."""
    common = ("max_steps=3", "batch_size=4", "micro_batch_size=2", "eval_every=0", "learning_rate=1e-3",
              f"precision={precision}")
    runs = {layout: train_records(run(tmp_path, tiny_model_dir, *common, f"layout={layout}", name=layout))
            for layout in ("padded", "packed", "prefix_shared")}
    for layout in ("packed", "prefix_shared"):
        for a, b in zip(runs["padded"], runs[layout]):
            assert a["dpo_loss"] == pytest.approx(b["dpo_loss"], abs=tolerance), layout
            assert a["margin"] == pytest.approx(b["margin"], abs=tolerance), layout
    # Real tokens per slot the forward paid for: padded < 1, packed = 1, prefix-shared > 1 (prompt once).
    assert runs["padded"][0]["slot_fill"] < 1 == runs["packed"][0]["slot_fill"] < runs["prefix_shared"][0]["slot_fill"]


def test_trains_on_a_users_jsonl_given_only_its_path(tmp_path, tiny_model_dir):
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": str(2 * i), "rejected": str(2 * i + 1)} for i in range(12)]
    data_file = tmp_path / "prefs.jsonl"
    data_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    log_path = tmp_path / "own"
    cli([f"log_path={log_path}", f"model_name={tiny_model_dir}", f"dataset={data_file}", "dataset.test_size=4",
         "batch_size=4", "micro_batch_size=4", "max_steps=2", "show_example=false"])
    config = json.loads((log_path / "config.json").read_text())
    assert config["dataset"]["path"] == str(data_file) and config["dataset"]["builder"].endswith(":FileBuilder")
    summary = next(r for r in read_metrics(log_path) if "data/train_pairs" in r)
    assert summary["data/train_pairs"] == 8 and summary["data/test_pairs"] == 4
    assert (log_path / "final" / "model.safetensors").exists()


def test_a_renderer_that_disagrees_with_the_model_template_warns(tmp_path, tiny_model_dir):
    with pytest.warns(UserWarning, match="renderer 'role_colon' disagrees with the chat template"):
        run(tmp_path, tiny_model_dir, "renderer_name=role_colon", "max_steps=1", "batch_size=4",
            "micro_batch_size=4", "eval_every=0")


def test_resuming_a_finished_run_changes_nothing(tmp_path, tiny_model_dir, monkeypatch):
    args = ("max_steps=1", "batch_size=4", "micro_batch_size=4", "eval_every=0")
    log_path = run(tmp_path, tiny_model_dir, *args)
    before = (log_path / "metrics.jsonl").read_text(), (log_path / "final" / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(loop_module, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("model loaded"))
    assert cli([f"log_path={log_path}", f"model_name={tiny_model_dir}", *FAST, *args,
                "behavior_if_log_dir_exists=resume"]) == log_path / "final"
    after = (log_path / "metrics.jsonl").read_text(), (log_path / "final" / "model.safetensors").stat().st_mtime_ns
    assert before == after


def test_resume_without_a_checkpoint_starts_over_with_a_clean_log(tmp_path, tiny_model_dir):
    log_path = tmp_path / "run"
    log_path.mkdir()
    (log_path / "metrics.jsonl").write_text(json.dumps({"step": 7, "dpo_loss": 9.0}) + "\n")
    run(tmp_path, tiny_model_dir, "max_steps=1", "batch_size=4", "micro_batch_size=4", "eval_every=0",
        "behavior_if_log_dir_exists=resume")
    steps = [r["step"] for r in read_metrics(log_path)]
    assert 7 not in steps and steps[-1] == 1
