"""Attention over rows that hold several sequences: packed rows (each sequence causal over its own
slots) and prefix-shared rows (two completions that both see one prompt, never each other).

The mask is a pure function of per-token segment ids (`segment_attention_mask`, a dense mask for
eager; `segment_block_mask`, a flex BlockMask that skips masked blocks), built in the form the
model's attention takes (`build_attention_mask`). For sdpa it is spans instead: given a dense [T, T]
mask, sdpa computes every
query of the row against every key (about 2,200 x 2,200 per head and layer for four 512-token pairs)
and, with a mask, cannot skip the blocks above the diagonal; that was half of a CPU training step.
Yet the mask is made of a few blocks: a pair's prompt and chosen completion are plain causal
attention over their slots; the rejected completion sees the prompt in full and itself causally;
a packed sequence is causal over its own slots. `AttentionSpans` lists those blocks, and
`span_sdpa_attention` runs sdpa once per block: `is_causal` (the kernel's block-skipping path) for
a causal span, and a small [L, P + L] mask over the prompt's keys and its own for a completion. The
work is then the sum of the blocks' areas, several times less than the row's square.

The spans reach the attention layers as a keyword argument of the decoder's forward (transformers
passes extra forward kwargs down to the attention function); `SequenceLogprobModel` turns a batch
whose `attention_mask` is an `AttentionSpans` into that argument and switches the model's attention
to `SPAN_ATTENTION`, which is plain sdpa (same function, same masks) whenever no spans are given.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

SPAN_ATTENTION = "sdpa_spans"
# Attention implementations whose mask we know how to build for a prefix-shared batch.
MASKED_ATTENTIONS: tuple[str, ...] = ("sdpa", "eager", "flex_attention")
# flex attention works on 128 x 128 blocks; rows of a multiple of that avoid a ragged last block and
# keep the number of distinct shapes (each a torch.compile specialisation) small.
FLEX_BLOCK_SIZE = 128
NO_PREFIX = -1  # prefix_segment_ids value of a token that sees no other segment
# Attention implementations for which transformers turns restarting position ids into
# per-document masks.
PACKABLE_ATTENTIONS: tuple[str, ...] = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


@dataclass(frozen=True)
class Span:
    """Queries at slots [start, stop) of `row` attend causally to themselves and, in full, to the
    keys at [prefix_start, prefix_stop) (an empty range: plain causal attention)."""

    row: int
    start: int
    stop: int
    prefix_start: int = 0
    prefix_stop: int = 0


@dataclass(frozen=True)
class AttentionSpans:
    """Spans that cover every slot of every row exactly once, in row-major order."""

    spans: tuple[Span, ...]

    def to(self, device: torch.device) -> AttentionSpans:  # plain integers: nothing to move
        return self


def segment_spans(segment_ids: Tensor, prefix_segment_ids: Tensor, no_prefix: int = -1) -> AttentionSpans:
    """The spans of rows of segments (segment ids [R, T] and prefix ids [R, T], as `place_segments` lays them).

    A segment whose prefix is the causal span just before it (a prompt followed by its chosen
    completion) extends that span: attending causally over [prompt, chosen] is what its mask says.
    Any other segment with a prefix (the rejected completion) gets a span of its own.
    """
    spans: list[Span] = []
    for row, (row_segments, row_prefixes) in enumerate(zip(segment_ids.cpu(), prefix_segment_ids.cpu())):
        segments, lengths = torch.unique_consecutive(row_segments, return_counts=True)
        bounds: dict[int, tuple[int, int]] = {}
        start = 0
        for segment, length in zip(segments.tolist(), lengths.tolist()):
            stop = start + length
            bounds[segment] = (start, stop)
            prefix = int(row_prefixes[start])
            last = spans[-1] if spans and spans[-1].row == row else None
            if prefix == no_prefix:
                spans.append(Span(row, start, stop))
            elif last and last.prefix_stop == last.prefix_start and (last.start, last.stop) == bounds[prefix]:
                spans[-1] = Span(row, last.start, stop)
            else:
                spans.append(Span(row, start, stop, *bounds[prefix]))
            start = stop
    return AttentionSpans(tuple(spans))


@functools.lru_cache(maxsize=64)  # a step has a few distinct span shapes, reused by every layer
def _prefix_causal_mask(length: int, prefix_length: int, device: torch.device) -> Tensor:
    """[length, prefix_length + length] bool: every prefix key, then causal over the span's own keys."""
    return torch.ones(length, prefix_length + length, dtype=torch.bool, device=device).tril(diagonal=prefix_length)


def span_sdpa_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                        dropout: float = 0.0, scaling: float | None = None,
                        attention_spans: AttentionSpans | None = None, **kwargs) -> tuple[Tensor, None]:
    """transformers' attention-function signature: query [B, H, T, D], key/value [B, Hkv, T, D];
    returns [B, T, H, D]. Without `attention_spans` it is transformers' own sdpa."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if attention_spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    rows: list[list[Tensor]] = [[] for _ in range(query.shape[0])]
    for span in attention_spans.spans:
        q = query[span.row : span.row + 1, :, span.start : span.stop]
        k = key[span.row : span.row + 1, :, span.start : span.stop]
        v = value[span.row : span.row + 1, :, span.start : span.stop]
        prefix_length = span.prefix_stop - span.prefix_start
        if prefix_length == 0:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True,
                                                                   scale=scaling)
        else:
            prefix = slice(span.prefix_start, span.prefix_stop)
            k = torch.cat([key[span.row : span.row + 1, :, prefix], k], dim=2)
            v = torch.cat([value[span.row : span.row + 1, :, prefix], v], dim=2)
            mask = _prefix_causal_mask(span.stop - span.start, prefix_length, query.device)
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                                   scale=scaling)
        rows[span.row].append(out)
    output = torch.cat([torch.cat(pieces, dim=2) for pieces in rows], dim=0)
    return output.transpose(1, 2).contiguous(), None


@functools.cache
def register_span_attention() -> None:
    """Make SPAN_ATTENTION known to transformers: our function, and sdpa's mask builder for the
    calls that come without spans (generation, padded rows)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SPAN_ATTENTION, span_sdpa_attention)
    AttentionMaskInterface.register(SPAN_ATTENTION, sdpa_mask)


def use_span_attention(causal_lm: nn.Module) -> None:
    """Switch an sdpa model to SPAN_ATTENTION (idempotent); any other attention cannot take spans."""
    attention = getattr(causal_lm.config, "_attn_implementation", None)
    if attention == SPAN_ATTENTION:
        return
    if attention != "sdpa":
        raise ValueError(f"a batch with attention spans needs an sdpa model; this one uses {attention!r}")
    register_span_attention()
    causal_lm.set_attn_implementation(SPAN_ATTENTION)


def segment_attention_mask(segment_ids: Tensor, prefix_segment_ids: Tensor) -> Tensor:
    """Dense bool mask [R, 1, T, T] (True = attend) from segment ids [R, T] and prefix ids [R, T]."""
    length = segment_ids.shape[1]
    kv_segment = segment_ids[:, None, :]
    visible = (kv_segment == segment_ids[:, :, None]) | (kv_segment == prefix_segment_ids[:, :, None])
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    return (visible & causal)[:, None]


def segment_block_mask(segment_ids: Tensor, prefix_segment_ids: Tensor):
    """The same mask as a flex-attention BlockMask, built on segment_ids' device; blocks that are
    fully masked (other pairs, the other completion) are skipped by the kernel, not computed."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(batch, head, q_index, kv_index):
        kv_segment = segment_ids[batch, kv_index]
        same_or_prefix = (kv_segment == segment_ids[batch, q_index]) | (
            kv_segment == prefix_segment_ids[batch, q_index]
        )
        return (kv_index <= q_index) & same_or_prefix

    rows, length = segment_ids.shape
    return create_block_mask(mask_mod, B=rows, H=None, Q_LEN=length, KV_LEN=length, device=segment_ids.device)


def build_attention_mask(segment_ids: Tensor, prefix_segment_ids: Tensor, attention: str, dtype=torch.float32):
    """The mask `attention` expects: spans for sdpa, additive float for eager, BlockMask for flex."""
    if attention == "sdpa":
        return segment_spans(segment_ids, prefix_segment_ids, NO_PREFIX)
    if attention == "eager":
        allowed = segment_attention_mask(segment_ids, prefix_segment_ids)
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    if attention == "flex_attention":
        return segment_block_mask(segment_ids, prefix_segment_ids)
    check_masked_attention(attention)


def check_masked_attention(attention: str) -> None:
    if attention not in MASKED_ATTENTIONS:
        raise ValueError(
            f"a prefix-shared batch needs attention one of {', '.join(MASKED_ATTENTIONS)}, got {attention!r} "
            "(load the model with attn_implementation='sdpa' or 'flex_attention', or use layout=packed)"
        )


def attention_implementation(model: torch.nn.Module) -> str:
    """The attention implementation a (possibly wrapped) HF model runs: "sdpa", "flex_attention", ..."""
    inner = getattr(model, "causal_lm", model)
    inner = getattr(inner, "module", inner)  # DDP
    attention = getattr(inner.config, "_attn_implementation", None) or "sdpa"
    return "sdpa" if attention == SPAN_ATTENTION else attention  # sdpa that also takes spans
