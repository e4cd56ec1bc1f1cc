"""The real bundled SmolLM2-135M-Instruct, trained with KTO on the demo pairs taken apart, separates
desirable from undesirable replies on held-out prompts in a few steps (slow: ~2 min on CPU)."""

import pytest

from cookbook.recipes.preference.kto import cli
from cookbook.training.metrics import read_metrics


@pytest.mark.slow
def test_real_model_moves_desirable_replies_above_undesirable_ones(tmp_path):
    cli([f"log_path={tmp_path / 'kto'}", "max_steps=8", "batch_size=8", "micro_batch_size=8",
         "dataset.preference.max_pairs=64", "dataset.preference.test_size=16", "learning_rate=2e-5",
         "lr_schedule=constant", "eval_every=0", "show_example=false"])
    evals = [r for r in read_metrics(tmp_path / "kto") if "test/loss" in r]
    assert [r["step"] for r in evals] == [0, 8]
    before, after = evals
    assert before["test/loss"] == pytest.approx(0.5, abs=1e-6) and before["test/reward_margin"] == 0
    assert after["test/reward_margin"] > 0.05 and after["test/loss"] < before["test/loss"]
