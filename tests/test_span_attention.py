"""Span attention gives exactly what sdpa gives with the dense segment mask, forward and backward,
and the spans of a row describe that mask."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cookbook.training.attention import (
    NO_PREFIX,
    SPAN_ATTENTION,
    AttentionSpans,
    Span,
    segment_attention_mask,
    segment_spans,
    span_sdpa_attention,
    use_span_attention,
)

# Two rows: [prompt, chosen, rejected, prompt, chosen, rejected, padding] and
# [seq, seq, padding] (a packed row), each segment id unique within its row.
SEGMENTS = torch.tensor([
    [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6],
    [0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2],
])
PREFIXES = torch.tensor([
    [-1, -1, -1, 0, 0, 0, 0, 0, -1, -1, 3, 3, 3, -1],
    [-1] * 14,
])


def dense_reference(query, key, value, mask):
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    return out.transpose(1, 2)


def test_spans_of_prefix_shared_and_packed_rows():
    spans = segment_spans(SEGMENTS, PREFIXES, NO_PREFIX).spans
    assert spans == (
        Span(0, 0, 5),  # prompt + chosen: one causal block
        Span(0, 5, 8, 0, 3),  # rejected: the prompt's keys, then itself causally
        Span(0, 8, 11),  # second pair's prompt + chosen
        Span(0, 11, 13, 8, 10),
        Span(0, 13, 14),  # padding sees itself
        Span(1, 0, 4), Span(1, 4, 9), Span(1, 9, 14),  # packed: one causal block per sequence
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_span_attention_equals_sdpa_with_the_dense_mask(dtype):
    """out[q] = softmax(q.K_visible / sqrt(d)) V_visible, visible = segment_attention_mask; with GQA
    (6 query heads over 2 key/value heads); gradients of q, k, v agree too."""
    generator = torch.Generator().manual_seed(0)
    rows, length, dim = SEGMENTS.shape[0], SEGMENTS.shape[1], 8
    query, key, value = (torch.randn(rows, heads, length, dim, generator=generator, dtype=dtype).requires_grad_()
                         for heads in (6, 2, 2))
    mask = segment_attention_mask(SEGMENTS, PREFIXES)
    module = SimpleNamespace(num_key_value_groups=3, training=False)
    spans = segment_spans(SEGMENTS, PREFIXES, NO_PREFIX)

    actual, _ = span_sdpa_attention(module, query, key, value, None, attention_spans=spans)
    expected = dense_reference(query, key, value, mask)
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(actual, expected, **tolerance)

    upstream = torch.randn(actual.shape, generator=generator, dtype=dtype)
    grads_actual = torch.autograd.grad(actual, (query, key, value), upstream)
    grads_expected = torch.autograd.grad(expected, (query, key, value), upstream)
    for got, want in zip(grads_actual, grads_expected):
        torch.testing.assert_close(got, want, **tolerance)


def test_without_spans_it_is_transformers_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    generator = torch.Generator().manual_seed(1)
    query, key, value = (torch.randn(1, heads, 5, 4, generator=generator) for heads in (4, 2, 2))
    module = SimpleNamespace(num_key_value_groups=2, training=False, is_causal=True)
    actual, _ = span_sdpa_attention(module, query, key, value, None)
    expected, _ = sdpa_attention_forward(module, query, key, value, None)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_only_an_sdpa_model_takes_spans(tiny_model):
    use_span_attention(tiny_model)
    assert tiny_model.config._attn_implementation == SPAN_ATTENTION
    use_span_attention(tiny_model)  # idempotent
    tiny_model.set_attn_implementation("eager")
    with pytest.raises(ValueError, match="needs an sdpa model; this one uses 'eager'"):
        use_span_attention(tiny_model)
    assert AttentionSpans(()).to(torch.device("cpu")) == AttentionSpans(())
