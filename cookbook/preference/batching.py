"""How preference pairs become the rows of one forward pass: padded, packed or prefix-shared.

A `PairBatch` is what one forward pass consumes: rows of tokens plus a `LossTokens` map that says
which hidden states score which completion, and for each pair the index of its chosen and rejected
sequence. Chosen and rejected therefore go through one forward together, however they are laid out:

- `collate_padded`: every sequence its own right-padded row, 2P x max_length slots however short
  most sequences are;
- `collate_packed`: the chosen and the rejected sequence of each pair side by side, pairs one after
  another, in one row (or rows of at most `max_row_tokens`). Position ids restart at 0 for each
  sequence and `attention_mask` is None. transformers (>= 4.56, read in masking_utils.py) then treats
  every place where the position id does not grow by exactly 1 as the start of a new document and
  builds a per-document causal mask itself, in the form the model's attention wants (an additive
  mask for eager, a BlockMask for flex_attention, varlen offsets for flash_attention_2). That
  detection is exact for our rows, because each sequence's ids start at 0 and so never continue the
  previous sequence's run. For sdpa the batch carries `AttentionSpans` instead (one causal block
  per sequence rather than a dense row x row mask; `cookbook/training/attention.py`);
- `collate_prefix_shared`: per pair [prompt, chosen completion, rejected completion], the prompt
  stored once. Both completions see the prompt and themselves causally, never each other; the
  rejected completion's position ids continue from the prompt, exactly as in its own row. The state
  of the prompt's last token predicts the first token of *both* completions. Position ids alone
  cannot express this, so the batch carries segment ids and an explicit mask (spans for sdpa, dense
  for eager, a flex `BlockMask` built on the device in `.to(device)`).

Every layout gives the same per-pair log-probs as the padded one up to float rounding. `auto`
(`choose_layout`) picks prefix sharing where the model's attention can take its mask: the prompt
is computed once per pair instead of twice, and no slot is padding; otherwise packing, and padded
rows as the last resort.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import torch
from torch import Tensor

from cookbook.training.attention import (
    FLEX_BLOCK_SIZE,
    MASKED_ATTENTIONS,
    NO_PREFIX,
    PACKABLE_ATTENTIONS,
    attention_implementation,
    build_attention_mask,
    check_masked_attention,
    segment_spans,
)
from cookbook.training.logprobs import LossTokens, pad_batch, padded_loss_tokens
from cookbook.training.packing import (
    CollatePlan,
    PackedSegment,
    as_long,
    batch_to,
    place_segments,
    sequence_loss_tokens,
)

Layout = Literal["auto", "padded", "packed", "prefix_shared"]
LAYOUTS: tuple[str, ...] = ("padded", "packed", "prefix_shared")
LAYOUT_CHOICES: tuple[str, ...] = ("auto", *LAYOUTS)


@dataclass
class PairBatch:
    input_ids: Tensor  # [R, T]
    attention_mask: Tensor | None  # [R, T] padding mask, a 4D mask, or None for packed rows
    position_ids: Tensor | None  # [R, T]; restarts at 0 for each packed document
    loss_tokens: LossTokens
    chosen_index: Tensor  # [P] sequence index of each pair's chosen completion
    rejected_index: Tensor  # [P]
    pair_ids: Tensor  # [P] dataset positions of the pairs (keys of the reference cache)
    num_real_tokens: int  # tokens of prompt+chosen and prompt+rejected, as a padded layout holds them
    num_slots: int  # R * T: what the forward pays for

    @property
    def num_pairs(self) -> int:
        return int(self.pair_ids.numel())

    def to(self, device: torch.device) -> PairBatch:
        return batch_to(self, device)


def real_token_count(pairs: Sequence) -> int:
    return sum(len(p.chosen.tokens) + len(p.rejected.tokens) for p in pairs)


def collate_padded(pairs: Sequence, pair_ids: Sequence[int], pad_token_id: int) -> PairBatch:
    """Rows 0..P-1 hold the chosen completions, rows P..2P-1 the rejected ones, right-padded."""
    num_pairs = len(pairs)
    sequences = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    input_ids, loss_weights, attention_mask = pad_batch(sequences, pad_token_id)
    return PairBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=None,
        loss_tokens=padded_loss_tokens(input_ids, loss_weights),
        chosen_index=torch.arange(num_pairs),
        rejected_index=torch.arange(num_pairs, 2 * num_pairs),
        pair_ids=torch.as_tensor(list(pair_ids), dtype=torch.long),
        num_real_tokens=real_token_count(pairs),
        num_slots=input_ids.numel(),
    )


@dataclass
class SegmentedPairBatch(PairBatch):
    """A PairBatch whose attention mask is derived from per-token segment ids.

    `segment_ids[r, t]` names the segment (prompt, completion, padding run) of each slot;
    `prefix_segment_ids[r, t]` the one other segment that token may see in full (its pair's prompt),
    or NO_PREFIX. The mask is rebuilt on the target device by `.to`, because a BlockMask cannot be
    moved with its mask function's tensors.
    """

    segment_ids: Tensor
    prefix_segment_ids: Tensor
    attention: str

    def to(self, device: torch.device) -> SegmentedPairBatch:
        moved = batch_to(replace(self, attention_mask=None), device)  # the segment ids move with the rest
        return replace(
            moved,
            attention_mask=build_attention_mask(moved.segment_ids, moved.prefix_segment_ids, self.attention),
        )


def _check_pair(pair, pair_id: int, need_shared_prompt: bool) -> None:
    prompt_length = pair.prompt_length
    for side in ("chosen", "rejected"):
        seq = getattr(pair, side)
        if len(seq.tokens) != len(seq.weights):
            raise ValueError(
                f"pair {pair_id}: {side} has {len(seq.tokens)} tokens but {len(seq.weights)} weights"
            )
        if need_shared_prompt and not 0 <= prompt_length <= len(seq.tokens):
            raise ValueError(f"pair {pair_id}: prompt_length={prompt_length} exceeds the {side} length {len(seq.tokens)}")
    if need_shared_prompt and list(pair.chosen.tokens[:prompt_length]) != list(pair.rejected.tokens[:prompt_length]):
        raise ValueError(
            f"pair {pair_id}: chosen and rejected differ within the first prompt_length={prompt_length} "
            "tokens, so the prompt cannot be shared (use layout=packed)"
        )


def _packed_segments(pair) -> tuple[list[PackedSegment], list[Tensor]]:
    """Two segments (chosen, rejected), each with positions from 0; placements are offsets into the pair."""
    segments, offsets, start = [], [], 0
    for seq in (pair.chosen, pair.rejected):
        n = len(seq.tokens)
        segments.append(PackedSegment(as_long(seq.tokens), torch.arange(n), NO_PREFIX))
        offsets.append(start + torch.arange(n))
        start += n
    return segments, offsets


def _prefix_shared_segments(pair) -> tuple[list[PackedSegment], list[Tensor]]:
    """[prompt, chosen completion, rejected completion]; completions see segment 0 (the prompt)."""
    p = pair.prompt_length
    chosen, rejected = as_long(pair.chosen.tokens), as_long(pair.rejected.tokens)
    c, r = len(chosen) - p, len(rejected) - p
    segments = [
        PackedSegment(chosen[:p], torch.arange(p), NO_PREFIX),
        PackedSegment(chosen[p:], p + torch.arange(c), 0),
        PackedSegment(rejected[p:], p + torch.arange(r), 0),
    ]
    chosen_offsets = torch.arange(p + c)
    rejected_offsets = torch.cat([torch.arange(p), p + c + torch.arange(r)])
    return segments, [chosen_offsets, rejected_offsets]


def _collate_segments(
    pairs: Sequence,
    pair_ids: Sequence[int],
    pad_token_id: int,
    layout: str,
    max_row_tokens: int | None,
    pad_to_multiple_of: int,
):
    if not pairs:
        raise ValueError("cannot collate an empty list of pairs")
    if len(pairs) != len(pair_ids):
        raise ValueError(f"{len(pairs)} pairs but {len(pair_ids)} pair_ids")
    make_segments = _prefix_shared_segments if layout == "prefix_shared" else _packed_segments
    for pair, pair_id in zip(pairs, pair_ids):
        _check_pair(pair, int(pair_id), need_shared_prompt=layout == "prefix_shared")
    laid_out = [make_segments(pair) for pair in pairs]
    placed = place_segments([segments for segments, _ in laid_out], pad_token_id, max_row_tokens, pad_to_multiple_of)
    placements = [[start + o for o in offsets] for start, (_, offsets) in zip(placed.starts, laid_out)]

    num_pairs = len(pairs)
    sequences = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    flat_placements = [pl[0] for pl in placements] + [pl[1] for pl in placements]
    loss_tokens = sequence_loss_tokens(sequences, flat_placements)
    fields = dict(
        input_ids=placed.input_ids,
        position_ids=placed.position_ids,
        loss_tokens=loss_tokens,
        chosen_index=torch.arange(num_pairs),
        rejected_index=torch.arange(num_pairs, 2 * num_pairs),
        pair_ids=torch.as_tensor([int(i) for i in pair_ids], dtype=torch.long),
        num_real_tokens=real_token_count(pairs),
        num_slots=placed.input_ids.numel(),
    )
    return fields, placed.segment_ids, placed.prefix_segment_ids


def collate_packed(
    pairs: Sequence,
    pair_ids: Sequence[int],
    pad_token_id: int,
    max_row_tokens: int | None = None,
    pad_to_multiple_of: int = 1,
    attention: str | None = None,
) -> PairBatch:
    """Pairs packed padding-free: [chosen_0, rejected_0, chosen_1, ...] per row, positions restarting
    at 0 per sequence. attention_mask is AttentionSpans (one causal span per sequence) for
    attention="sdpa", else None (the model derives per-sequence causal attention from the position
    ids; see the module docstring). `max_row_tokens` splits the pairs over several rows (a pair is
    never split); None puts them all in one row."""
    fields, segment_ids, prefix_segment_ids = _collate_segments(
        pairs, pair_ids, pad_token_id, "packed", max_row_tokens, pad_to_multiple_of
    )
    spans = segment_spans(segment_ids, prefix_segment_ids, NO_PREFIX) if attention == "sdpa" else None
    return PairBatch(attention_mask=spans, **fields)


def collate_prefix_shared(
    pairs: Sequence,
    pair_ids: Sequence[int],
    pad_token_id: int,
    attention: str = "sdpa",
    max_row_tokens: int | None = None,
    pad_to_multiple_of: int = 1,
) -> SegmentedPairBatch:
    """Pairs as [prompt, chosen completion, rejected completion], the prompt computed once per pair.

    `attention` is the model's attention implementation (`attention_implementation(model)`), which
    decides the mask's form: "sdpa" (AttentionSpans), "eager" (dense additive) or "flex_attention"
    (BlockMask; pass pad_to_multiple_of=FLEX_BLOCK_SIZE). Requires chosen.tokens[:prompt_length] ==
    rejected.tokens[:prompt_length]; raises ValueError naming the pair otherwise.
    """
    check_masked_attention(attention)
    fields, segment_ids, prefix_segment_ids = _collate_segments(
        pairs, pair_ids, pad_token_id, "prefix_shared", max_row_tokens, pad_to_multiple_of
    )
    return SegmentedPairBatch(
        attention_mask=build_attention_mask(segment_ids, prefix_segment_ids, attention),
        segment_ids=segment_ids,
        prefix_segment_ids=prefix_segment_ids,
        attention=attention,
        **fields,
    )


def collate_pairs(
    pairs: Sequence,
    pair_ids: Sequence[int],
    pad_token_id: int,
    layout: Layout = "padded",
    attention: str = "sdpa",
    max_row_tokens: int | None = None,
) -> PairBatch:
    """One entry point for the trainer: dispatch on `layout` (padded, packed, prefix_shared)."""
    multiple = FLEX_BLOCK_SIZE if attention == "flex_attention" else 1
    if layout == "padded":
        return collate_padded(pairs, pair_ids, pad_token_id)
    if layout == "packed":
        return collate_packed(pairs, pair_ids, pad_token_id, max_row_tokens, pad_to_multiple_of=multiple,
                              attention=attention)
    if layout == "prefix_shared":
        return collate_prefix_shared(
            pairs, pair_ids, pad_token_id, attention, max_row_tokens, pad_to_multiple_of=multiple
        )
    raise ValueError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")


def choose_layout(layout: Layout, attention: str) -> str:
    if layout not in LAYOUT_CHOICES:
        raise ValueError(f"layout={layout!r} is not one of {', '.join(LAYOUT_CHOICES)}")
    if layout == "prefix_shared" and attention not in MASKED_ATTENTIONS:
        raise ValueError(f"layout=prefix_shared needs attention {', '.join(MASKED_ATTENTIONS)}; "
                         f"the model uses {attention!r} (try layout=packed)")
    if layout != "auto":
        return layout
    if attention in MASKED_ATTENTIONS:
        return "prefix_shared"
    return "packed" if attention in PACKABLE_ATTENTIONS else "padded"


def make_collate(layout: Layout, pad_token_id: int, model) -> CollatePlan:
    attention = attention_implementation(model)
    name = choose_layout(layout, attention)
    return CollatePlan(name, partial(collate_pairs, pad_token_id=pad_token_id, layout=name, attention=attention))
