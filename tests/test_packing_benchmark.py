"""The throughput benchmark's synthetic pairs: text that tokenizes back to exactly the token ids we
train on (so TRL, which tokenizes text, sees the same tokens), with the lengths asked for."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "dpo_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("dpo_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dpo_throughput"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("dpo_throughput", None)


def test_synthetic_pairs_round_trip_through_the_tokenizer(bench, tokenizer):
    pairs, texts = bench.make_pairs(tokenizer, count=6, max_length=64, min_frac=0.25, prompt_frac=0.3, seed=3)
    again, _ = bench.make_pairs(tokenizer, count=6, max_length=64, min_frac=0.25, prompt_frac=0.3, seed=3)
    assert pairs == again
    for pair, text in zip(pairs, texts):
        p = pair.prompt_length
        assert pair.chosen.tokens[:p] == pair.rejected.tokens[:p]
        for sequence, completion in ((pair.chosen, text.chosen), (pair.rejected, text.rejected)):
            assert 16 <= len(sequence.tokens) <= 64
            assert tokenizer(text.prompt + completion, add_special_tokens=False)["input_ids"] == sequence.tokens
            assert sequence.weights == [0.0] * p + [1.0] * (len(sequence.tokens) - p)
            assert sequence.tokens[-1] == tokenizer.eos_token_id
        assert tokenizer(text.prompt, add_special_tokens=False)["input_ids"] == pair.chosen.tokens[:p]


def test_cli_rejects_an_unknown_layout(bench):
    with pytest.raises(SystemExit, match="--layouts: unknown ragged"):
        bench.main(["--layouts", "padded,ragged", "--device", "cpu"])


def test_matmul_parameters_count_a_tied_table_once(bench, tiny_model):
    embedding = tiny_model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in tiny_model.parameters())
    assert bench.matmul_parameters(tiny_model) == total  # tied: the table is the LM head
    assert embedding < total


def _result(bench, impl, precision, tokens_per_cpu_second, layout="prefix_shared"):
    return bench.RunResult(impl=impl, layout=layout if impl == "ours" else "padded", reference="precomputed",
                           precision=precision, steps=2, step_seconds=1.0, tokens_per_second=tokens_per_cpu_second,
                           pairs_per_second=1.0, mfu=None, reference_seconds=0.0, gpu_peak_bytes=None,
                           host_peak_rss_bytes=1, slot_fill=1.0, real_tokens_per_step=100.0, cpu_seconds_per_step=1.0,
                           tokens_per_cpu_second=tokens_per_cpu_second)


def test_headline_compares_our_default_with_trls_fastest_precision(bench):
    results = [_result(bench, "ours", "fp32", 90.0), _result(bench, "ours", "bf16-mixed", 120.0),
               _result(bench, "trl", "fp32", 40.0), _result(bench, "trl", "bf16-mixed", 60.0)]
    lines = bench.format_ratios(results, "prefix_shared", "bf16-mixed", 512).splitlines()
    assert "- ours default / TRL best (512 tokens): tokens/CPU-s x2.00 (TRL best: bf16=True)" in lines
    assert "- ours bf16-mixed / fp32 (prefix_shared, precomputed): tokens/s x1.33, tokens/CPU-s x1.33" in lines
    assert "| trl | padded | bf16=True | precomputed |" in bench.format_table(results)


def test_cli_rejects_an_unknown_precision(bench):
    with pytest.raises(SystemExit, match="--precision: unknown fp8"):
        bench.main(["--precision", "fp32,fp8", "--device", "cpu"])
