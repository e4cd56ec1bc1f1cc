"""The SFT throughput benchmark's own side (benchmarks/sft_throughput.py), on a tiny model, so the
script cannot silently rot while the recipe's code changes under it. TRL is not needed here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "sft_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sft_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sft_throughput"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("sft_throughput", None)


@pytest.mark.parametrize("layout", ["packed", "packed_capped", "padded"])
def test_our_step_on_a_tiny_model(bench, tiny_model_dir, layout):
    """One timed step of our SFT step through the shared loop: it counts the scheduled
    conversations' tokens, trains (finite loss), and the figures it reports are consistent."""
    args = bench.parse_args(["--model", tiny_model_dir, "--impls", "ours", "--steps", "1", "--warmup-steps", "0",
                             "--batch-size", "4", "--micro-batch-size", "2", "--synthetic-words", "40",
                             "--synthetic-spread", "10", "--max-length", "100"])
    result = bench.run_ours(args, bench.Spec("ours", "synthetic", layout, "fp32"))

    from cookbook.models import load_tokenizer
    from cookbook.renderers import default_renderer_name, get_renderer

    tokenizer = load_tokenizer(tiny_model_dir)
    renderer = get_renderer(default_renderer_name(tokenizer), tokenizer)
    sequences = bench.tokenize_all(bench.load_conversations(args, "synthetic", tokenizer), renderer, args.max_length)
    step_ids = bench.make_schedule(args, len(sequences)).global_batch(0)
    assert result.steps == 1
    assert result.tokens_per_step == sum(len(sequences[i].tokens) for i in step_ids)
    assert result.trained_tokens_per_step == sum(sequences[i].num_trained_tokens for i in step_ids)
    assert 0 < result.first_loss < 20  # about ln(vocab) ~ 10.8 for a random-init model
    assert result.tokens_per_cpu_second == pytest.approx(result.tokens_per_step / result.cpu_seconds_per_step)
    assert result.host_peak_rss_bytes > 0


def test_synthetic_conversations_are_seeded_and_sized(bench, tokenizer):
    first = bench.synthetic_conversations(tokenizer, count=5, mean_words=60, spread=10, seed=1)
    assert first == bench.synthetic_conversations(tokenizer, count=5, mean_words=60, spread=10, seed=1)
    assert first != bench.synthetic_conversations(tokenizer, count=5, mean_words=60, spread=10, seed=2)
    for conversation in first:
        user, reply = (m["content"] for m in conversation.messages)
        ids = tokenizer(" " + user + " " + reply, add_special_tokens=False)["input_ids"]
        assert 50 <= len(ids) <= 70  # one token per word


def test_ratio_lines_name_ours_default_against_trls_best(bench):
    def result(impl, layout, precision, tokens_per_cpu_second):
        return bench.RunResult(impl, "demo", layout, precision, 3, 100.0, 10.0, 1.0, 1.0, 100.0,
                               tokens_per_cpu_second, 2**30, 1.0)

    results = [result("ours", "packed", "bf16-mixed", 300.0), result("ours", "packed", "fp32", 200.0),
               result("trl", "padding_free", "fp32", 150.0), result("trl", "padded", "fp32", 100.0)]
    lines = bench.format_ratios(results, default_precision="bf16-mixed").splitlines()
    assert lines[0].startswith("- ours default / TRL best (demo): tokens/CPU-s x2.00")
    assert "- ours packed / TRL padding_free, fp32 (demo): tokens/CPU-s x1.33" in lines[1]
    assert lines[-1] == "- ours bf16-mixed / fp32, packed (demo): tokens/CPU-s x1.50"
