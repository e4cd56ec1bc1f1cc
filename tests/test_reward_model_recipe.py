"""The reward-model recipe through its real CLI on a tiny random-init model: step-0 metrics, the
checkpoint transformers and the on-policy reward load, a run that lowers its loss, exact resume,
per-pair margins from the data, and the options it refuses."""

import json
import math
import os
import signal
from pathlib import Path

import chz
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from cookbook.datasets.load import load_preference_data
from cookbook.datasets.preference import DemoBuilder
from cookbook.errors import RunStopped
from cookbook.models import load_tokenizer
from cookbook.on_policy.prompts import PromptItem
from cookbook.on_policy.rewards import RewardModel
from cookbook.recipes.reward_model.train import cli
from cookbook.renderers import get_renderer
from cookbook.training import metrics as metrics_module
from cookbook.training.metrics import read_metrics

FAST = ["dataset.max_pairs=48", "dataset.test_size=16", "max_length=128", "show_example=false", "batch_size=8",
        "micro_batch_size=4", "display=plain"]


def run(tmp_path: Path, model: str, *args: str, name: str = "rm") -> Path:
    log_path = tmp_path / name
    cli([f"log_path={log_path}", f"model_name={model}", *FAST, *args])
    return log_path


def train_records(log_path: Path) -> list[dict]:
    return [r for r in read_metrics(log_path) if "loss" in r and "test/loss" not in r]


def eval_records(log_path: Path) -> list[dict]:
    return [r for r in read_metrics(log_path) if "test/loss" in r]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_model_dir):
    return run(tmp_path_factory.mktemp("short"), tiny_model_dir, "max_steps=2", "eval_every=1",
               "learning_rate=1e-3", "precision=fp32")


def test_step_0_scores_are_zero_and_the_loss_is_ln2(short_run):
    """A new head starts at zero: every score is 0, so the held-out loss is ln 2, accuracy 1/2 (ties
    count half), and the centering term adds nothing."""
    first = eval_records(short_run)[0]
    assert first["step"] == 0
    assert first["test/loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert first["test/accuracy"] == 0.5
    for key in ("test/chosen_score", "test/rejected_score", "test/margin", "test/score_mean"):
        assert first[key] == 0.0, key
    records = train_records(short_run)
    assert [r["step"] for r in records] == [1, 2]
    for key in ("loss", "accuracy", "chosen_score", "rejected_score", "margin", "score_mean", "num_pairs",
                "num_tokens", "learning_rate", "grad_norm"):
        assert key in records[0], key
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and records[0]["num_pairs"] == 8
    assert [r["step"] for r in eval_records(short_run)] == [0, 1, 2]
    assert records[1]["margin"] != 0.0  # the head moved after step 1


def test_the_checkpoint_is_a_sequence_classifier(short_run):
    config = json.loads((short_run / "final" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert len(config["id2label"]) == 1 and config["pad_token_id"] is not None
    weights = load_file(short_run / "final" / "model.safetensors")
    assert weights["score.weight"].shape[0] == 1 and weights["score.weight"].abs().sum() > 0
    assert not any(name.startswith(("classifier.", "lm_head")) for name in weights)
    meta = json.loads((short_run / "final" / "cookbook_checkpoint.json").read_text())
    assert meta["renderer_name"] == "chatml" and meta["step"] == 2


def _test_pairs(model_dir: str):
    tokenizer = load_tokenizer(model_dir)
    renderer = get_renderer("chatml", tokenizer)
    return load_preference_data(DemoBuilder(max_pairs=48, test_size=16), renderer, 128, verbose=False).test


def test_transformers_and_the_on_policy_reward_give_the_training_scores(short_run):
    """The final eval's mean scores, recomputed from the checkpoint by transformers' own classifier
    (one pair at a time) and by `reward=reward_model reward.model_name=<final>` (batched, from text)."""
    final = short_run / "final"
    last = eval_records(short_run)[-1]
    pairs = _test_pairs(str(final))
    classifier = AutoModelForSequenceClassification.from_pretrained(final, dtype=torch.float32).eval()
    with torch.no_grad():
        chosen = [classifier(input_ids=torch.tensor([p.chosen.tokens])).logits[0, 0].item() for p in pairs]
        rejected = [classifier(input_ids=torch.tensor([p.rejected.tokens])).logits[0, 0].item() for p in pairs]
    assert sum(chosen) / len(chosen) == pytest.approx(last["test/chosen_score"], abs=1e-5)
    assert sum(rejected) / len(rejected) == pytest.approx(last["test/rejected_score"], abs=1e-5)
    accuracy = sum((c > r) + 0.5 * (c == r) for c, r in zip(chosen, rejected)) / len(pairs)
    assert accuracy == pytest.approx(last["test/accuracy"])

    comparisons = DemoBuilder(max_pairs=48, test_size=16)().test
    scorer = RewardModel(model_name=str(final), batch_size=5).build("cpu")
    items = [PromptItem(f"test-{i}", tuple(c.prompt)) for i, c in enumerate(comparisons)]
    scored = scorer.score(items, [c.chosen[0]["content"] for c in comparisons])
    assert scored == pytest.approx(chosen, abs=1e-5)


def test_a_run_lowers_its_loss(tmp_path, tiny_model_dir):
    log_path = run(tmp_path, tiny_model_dir, "num_epochs=4", "learning_rate=1e-3", "lr_schedule=constant",
                   "eval_every=0", "precision=fp32")
    losses = [r["loss"] for r in train_records(log_path)]
    assert len(losses) == 24
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6 - 0.1
    evals = eval_records(log_path)  # 48 pairs for 4 epochs: the held-out loss overfits, the ranking still improves
    assert evals[-1]["test/accuracy"] > evals[0]["test/accuracy"] == 0.5


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, tiny_model_dir, monkeypatch):
    """A Ctrl-C after step 2 saves a resumable checkpoint (a sequence classifier, head included);
    resuming from it repeats the uninterrupted run exactly."""
    common = ("max_steps=5", "eval_every=2", "learning_rate=1e-3", "lr_schedule=cosine", "warmup_steps=1",
              "precision=fp32")
    straight = run(tmp_path, tiny_model_dir, *common, name="straight")

    original = metrics_module.MetricLogger.log_metrics

    def log_and_interrupt(self, metrics, step):
        original(self, metrics, step)
        if step == 2 and "loss" in metrics and "test/loss" not in metrics:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(metrics_module.MetricLogger, "log_metrics", log_and_interrupt)
    with pytest.raises(RunStopped):
        run(tmp_path, tiny_model_dir, *common, name="resumed")
    monkeypatch.setattr(metrics_module.MetricLogger, "log_metrics", original)
    interrupted = tmp_path / "resumed"
    stopped_at = max(r["step"] for r in train_records(interrupted))
    assert 2 <= stopped_at < 5 and not (interrupted / "final").exists()

    run(tmp_path, tiny_model_dir, *common, "behavior_if_log_dir_exists=resume", name="resumed")
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(interrupted / "final" / "model.safetensors")
    assert a.keys() == b.keys() and "score.weight" in a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ra, rb = read_metrics(straight), read_metrics(interrupted)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        for key in ("loss", "accuracy", "margin", "grad_norm", "learning_rate", "test/loss", "test/accuracy"):
            assert x.get(key) == y.get(key), (x["step"], key)


def _write_pairs(path: Path, margins: list[float | None]) -> Path:
    rows = []
    for i, margin in enumerate(margins):
        row = {"prompt": f"Name a number above {i}.", "chosen": f"{i + 1} is above {i}.", "rejected": f"{i - 1}"}
        if margin is not None:
            row["margin"] = margin
        rows.append(row)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_margins_from_the_data_enter_the_loss(tmp_path, tiny_model_dir):
    """With use_margin=true and every score 0 at step 0, pair i's loss is -log sigma(-m_i) = log(1 + e^m_i)
    (a pair without a margin uses 0); without use_margin the margins are ignored (ln 2)."""
    train = _write_pairs(tmp_path / "train.jsonl", [1.0] * 8)
    margins = [2.0, 0.5, None, 1.5]
    test = _write_pairs(tmp_path / "test.jsonl", margins)
    common = [f"dataset={train}", f"dataset.test_path={test}", "max_steps=1", "batch_size=4",
              "micro_batch_size=2", "show_example=false", "display=plain", f"model_name={tiny_model_dir}"]
    cli([f"log_path={tmp_path / 'with'}", *common, "use_margin=true"])
    cli([f"log_path={tmp_path / 'without'}", *common])
    expected = sum(math.log1p(math.exp(m or 0.0)) for m in margins) / len(margins)
    assert eval_records(tmp_path / "with")[0]["test/loss"] == pytest.approx(expected, abs=1e-6)
    assert eval_records(tmp_path / "without")[0]["test/loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert train_records(tmp_path / "with")[0]["loss"] == pytest.approx(math.log1p(math.e), abs=1e-6)


def test_a_malformed_margin_is_a_counted_skip(tmp_path):
    from cookbook.datasets.preference import row_to_comparison

    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    assert row_to_comparison({**row, "margin": 0.5}).margin == 0.5
    assert row_to_comparison(row).margin is None
    skip = row_to_comparison({**row, "margin": "big"})
    assert skip.reason == "malformed" and "margin" in skip.detail


def test_help_lists_fields_with_docs():
    with pytest.raises(chz.blueprint.EntrypointHelpException) as help_text:
        cli(["--help"])
    out = str(help_text.value)
    for field in ("center_coef", "use_margin", "layout", "dataset", "precision", "Examples per optimizer step"):
        assert field in out


@pytest.mark.parametrize(("argument", "message"), [
    ("center_coef=-1", "center_coef must be a finite number >= 0"),
])
def test_bad_options_are_refused(tmp_path, argument, message):
    with pytest.raises(ValueError, match=message):
        cli([f"log_path={tmp_path / 'x'}", argument])


def test_every_layout_trains_the_same(tmp_path, tiny_model_dir):
    """Prefix-shared, packed and padded rows give the same scores, so the same run (fp32)."""
    common = ("max_steps=3", "eval_every=0", "learning_rate=1e-3", "precision=fp32")
    runs = {layout: train_records(run(tmp_path, tiny_model_dir, *common, f"layout={layout}", name=layout))
            for layout in ("prefix_shared", "packed", "padded")}
    for layout in ("packed", "padded"):
        for a, b in zip(runs["prefix_shared"], runs[layout]):
            for key in ("loss", "margin", "accuracy"):
                assert a[key] == pytest.approx(b[key], abs=1e-5), (layout, a["step"], key)
    assert runs["prefix_shared"][0]["slot_fill"] > 1.0 > runs["padded"][0]["slot_fill"]


def test_lora_trains_the_head_too_and_final_merged_scores_as_training(tmp_path, tiny_model_dir):
    """With lora_rank the head trains in full beside the adapters (peft's SEQ_CLS task) and is saved
    with them; final/merged is a plain sequence classifier that scores as the final eval did."""
    log_path = run(tmp_path, tiny_model_dir, "max_steps=3", "eval_every=0", "learning_rate=1e-2", "lora_rank=4",
                   "precision=fp32")
    final = log_path / "final"
    adapter = load_file(final / "adapter_model.safetensors")
    assert any("score" in name for name in adapter) and any("lora_A" in name for name in adapter)
    merged = final / "merged"
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    classifier = AutoModelForSequenceClassification.from_pretrained(merged, dtype=torch.float32).eval()
    assert classifier.score.weight.abs().sum() > 0
    pairs = _test_pairs(str(merged))
    with torch.no_grad():
        chosen = [classifier(input_ids=torch.tensor([p.chosen.tokens])).logits[0, 0].item() for p in pairs]
    last = eval_records(log_path)[-1]
    assert last["test/loss"] < math.log(2)
    assert sum(chosen) / len(chosen) == pytest.approx(last["test/chosen_score"], abs=1e-5)


def test_lora_resume_matches_uninterrupted(tmp_path, tiny_model_dir, monkeypatch):
    """The resumed adapters and head come back (not a new zero head)."""
    common = ("max_steps=4", "eval_every=0", "learning_rate=1e-2", "lora_rank=4", "precision=fp32", "save_every=2",
              "write_merged_final=false")
    straight = run(tmp_path, tiny_model_dir, *common, name="straight")
    original = metrics_module.MetricLogger.log_metrics

    def log_and_interrupt(self, metrics, step):
        original(self, metrics, step)
        if step == 2 and "loss" in metrics and "test/loss" not in metrics:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(metrics_module.MetricLogger, "log_metrics", log_and_interrupt)
    with pytest.raises(RunStopped):
        run(tmp_path, tiny_model_dir, *common, name="resumed")
    monkeypatch.setattr(metrics_module.MetricLogger, "log_metrics", original)
    run(tmp_path, tiny_model_dir, *common, "behavior_if_log_dir_exists=resume", name="resumed")
    a = load_file(straight / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [r["loss"] for r in train_records(straight)] == [r["loss"] for r in train_records(tmp_path / "resumed")]
