"""The real bundled SmolLM2-135M-Instruct learns the demo preference in a few steps, and bf16-mixed
learns like fp32 (slow: ~3 min on CPU)."""

import pytest

from cookbook.recipes.preference.train import cli
from cookbook.training.metrics import read_metrics


def train(log_path, precision: str) -> list[dict]:
    cli([f"log_path={log_path}", "max_steps=4", "batch_size=8", "micro_batch_size=8", "dataset.max_pairs=64",
         "dataset.test_size=32", "learning_rate=2e-5", "eval_every=0", "show_example=false",
         f"precision={precision}"])
    return read_metrics(log_path)


@pytest.mark.slow
def test_real_model_learns_and_bf16_mixed_tracks_fp32(tmp_path):
    runs = {precision: train(tmp_path / precision, precision) for precision in ("fp32", "bf16-mixed")}
    for records in runs.values():
        evals = [r for r in records if "test/accuracy" in r]
        assert [r["step"] for r in evals] == [0, 4]
        before, after = evals[0], evals[-1]
        assert before["test/accuracy"] == 0.5  # policy == reference: all ties, in either precision
        assert after["test/accuracy"] >= before["test/accuracy"] + 0.2
        assert after["test/margin"] > 0 and after["test/dpo_loss"] < before["test/dpo_loss"]
    fp32, mixed = ([r for r in runs[p] if "dpo_loss" in r] for p in ("fp32", "bf16-mixed"))
    # The same pairs in the same order: bf16 matmuls move the loss curve by noise, not by a drift.
    for a, b in zip(fp32, mixed):
        assert b["dpo_loss"] == pytest.approx(a["dpo_loss"], abs=0.03), a["step"]
    final = {p: [r for r in runs[p] if "test/accuracy" in r][-1]["test/accuracy"] for p in runs}
    assert abs(final["bf16-mixed"] - final["fp32"]) <= 0.05 + 1e-9
