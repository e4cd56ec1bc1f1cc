"""The real bundled SmolLM2-135M-Instruct learns the demo preference in a few steps (slow: ~2 min on CPU)."""

import pytest

from cookbook.recipes.preference.train import cli
from cookbook.training.metrics import read_metrics


@pytest.mark.slow
def test_real_model_held_out_accuracy_rises(tmp_path):
    log_path = tmp_path / "run"
    cli([f"log_path={log_path}", "max_steps=4", "batch_size=8", "micro_batch_size=8", "dataset.max_pairs=64",
         "dataset.test_size=32", "learning_rate=2e-5", "eval_every=0", "show_example=false"])
    evals = [r for r in read_metrics(log_path) if "test/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 4]
    before, after = evals[0], evals[-1]
    assert before["test/accuracy"] == pytest.approx(0.5)  # policy == reference: all ties
    assert after["test/accuracy"] >= before["test/accuracy"] + 0.2
    assert after["test/margin"] > 0 and after["test/dpo_loss"] < before["test/dpo_loss"]
