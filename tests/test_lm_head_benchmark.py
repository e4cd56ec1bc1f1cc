"""The LM-head precision benchmark's parts (benchmarks/lm_head_precision.py), without the real model."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import pytest
import torch

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "lm_head_precision.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("lm_head_precision", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_tokens_are_the_demo_conversations_cut_to_length(bench, tokenizer):
    tokens = bench.demo_tokens(tokenizer, 100)
    assert len(tokens) == 100
    assert tokenizer.decode(tokens).startswith("<|im_start|>")


def test_head_logprobs_in_fp32_are_the_log_softmax_and_bf16_is_close(bench):
    """log p[n] = log_softmax(h[n] @ W.T)[target[n]]; under bf16 autocast the logits are rounded."""
    generator = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(5, 16, generator=generator), torch.randn(40, 16, generator=generator)
    targets = torch.tensor([0, 3, 7, 39, 12])
    exact = torch.log_softmax(hidden @ weight.T, dim=-1)[torch.arange(5), targets]
    torch.testing.assert_close(bench.head_logprobs(hidden, weight, targets, contextlib.nullcontext), exact)
    rounded = bench.head_logprobs(hidden, weight, targets, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert not torch.equal(rounded, exact)
    torch.testing.assert_close(rounded, exact, atol=0.2, rtol=0.05)
