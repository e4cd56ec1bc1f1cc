"""Padding-free layouts of preference pairs: packed rows and prefix-shared rows.

`collate_padded` (batching.py) gives every sequence its own row, so a batch pays for
2P x max_length slots however short most sequences are. The two layouts here pay only for real tokens:

- `collate_packed`: the chosen and the rejected sequence of each pair sit side by side, pairs one
  after another, in one row (or rows of at most `max_row_tokens`). Position ids restart at 0 for each
  sequence and `attention_mask` is None. transformers (>= 4.56, read in masking_utils.py) then treats
  every place where the position id does not grow by exactly 1 as the start of a new document and
  builds a per-document causal mask itself, in the form the model's attention wants: an additive
  mask for eager, a BlockMask for flex_attention, varlen offsets for flash_attention_2. That
  detection is exact for our rows, because each sequence's ids start at 0 and so never continue the
  previous sequence's run. For sdpa (`attention="sdpa"`) the batch carries `AttentionSpans` instead
  (span_attention.py): one causal block per sequence rather than a dense row x row mask.
- `collate_prefix_shared`: per pair [prompt, chosen completion, rejected completion], the prompt
  stored once. Both completions see the prompt and themselves causally, never each other; the
  rejected completion's position ids continue from the prompt (prompt_length, prompt_length+1, ...),
  exactly as in its own row. The state of the prompt's last token predicts the first token of *both*
  completions. Position ids alone cannot express this, so the batch carries segment ids and builds
  an explicit mask: `AttentionSpans` for sdpa (the prompt+chosen block causal, the rejected block
  against the prompt's keys and its own; span_attention.py), a dense 4D mask for eager, a flex
  `BlockMask` for flex_attention (built on the device in `.to(device)`, since its mask function reads
  the segment ids there).

All layouts produce the same `PairBatch` contract (rows, LossTokens, chosen/rejected sequence
indices), so `preference_forward` and `SequenceLogprobModel` serve them unchanged, and every layout
gives the same per-pair log-probs as the padded one up to float rounding.

`place_segments` and `sequence_loss_tokens` are the layout-independent part (rows of segments,
loss tokens from token placements); supervised packing (cookbook/supervised/collate.py) uses them too.

`length_grouped_order` reorders an epoch so that each batch holds pairs of similar length (less
padding in padded rows, fuller packed rows); `pack_rows` fills rows of a token budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from cookbook.preference.batching import PairBatch, batch_to, real_token_count
from cookbook.preference.logprobs import LossTokens
from cookbook.preference.span_attention import SPAN_ATTENTION, segment_spans

Layout = Literal["padded", "packed", "prefix_shared"]
LAYOUTS: tuple[str, ...] = ("padded", "packed", "prefix_shared")
# Attention implementations whose mask we know how to build for a prefix-shared batch.
MASKED_ATTENTIONS: tuple[str, ...] = ("sdpa", "eager", "flex_attention")
# flex attention works on 128 x 128 blocks; rows of a multiple of that avoid a ragged last block and
# keep the number of distinct shapes (each a torch.compile specialisation) small.
FLEX_BLOCK_SIZE = 128
NO_PREFIX = -1  # prefix_segment_ids value of a token that sees no other segment


def attention_implementation(model: torch.nn.Module) -> str:
    """The attention implementation a (possibly wrapped) HF model runs: "sdpa", "flex_attention", ..."""
    inner = getattr(model, "causal_lm", model)
    inner = getattr(inner, "module", inner)  # DDP
    attention = getattr(inner.config, "_attn_implementation", None) or "sdpa"
    return "sdpa" if attention == SPAN_ATTENTION else attention  # sdpa that also takes spans


# ----------------------------------------------------------------------------------------------
# Masks: pure functions of segment ids. Token q may attend token kv iff kv <= q and kv's segment is
# q's own segment or q's shared prefix.


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
    _check_attention(attention)


def _check_attention(attention: str) -> None:
    if attention not in MASKED_ATTENTIONS:
        raise ValueError(
            f"a prefix-shared batch needs attention one of {', '.join(MASKED_ATTENTIONS)}, got {attention!r} "
            "(load the model with attn_implementation='sdpa' or 'flex_attention', or use layout=packed)"
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


# ----------------------------------------------------------------------------------------------
# Row filling and epoch ordering.


def pack_rows(sizes: Sequence[int], max_row_tokens: int | None) -> list[list[int]]:
    """Indices of `sizes` grouped into rows of at most `max_row_tokens` (first fit, largest first).

    An item larger than the budget gets a row of its own (the row grows) rather than an error, so a
    single long pair never stops training. None puts everything in one row. Ties keep input order,
    so the result is deterministic.
    """
    if max_row_tokens is None:
        return [list(range(len(sizes)))]
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        for row, free in enumerate(room):
            if sizes[index] <= free:
                rows[row].append(index)
                room[row] -= sizes[index]
                break
        else:
            rows.append([index])
            room.append(max_row_tokens - sizes[index])
    return [sorted(row) for row in rows]


def pair_token_count(pair, layout: Layout = "packed") -> int:
    """Slots one pair fills in a packed (prompt twice) or prefix-shared (prompt once) row."""
    total = len(pair.chosen.tokens) + len(pair.rejected.tokens)
    return total - pair.prompt_length if layout == "prefix_shared" else total


def length_grouped_order(
    order: Sequence[int], lengths: Sequence[int], batch_size: int, seed: int, batches_per_group: int = 16
) -> list[int]:
    """Reorder an epoch's `order` so each consecutive run of `batch_size` pairs has similar lengths.

    Windows of `batch_size * batches_per_group` pairs (in the given order, so the epoch's shuffle
    still decides which pairs meet) are sorted by `lengths[pair]` and cut into batches; the full
    batches are then shuffled with `seed` so long and short batches alternate. A trailing partial
    batch stays last. Same inputs and seed, same output; the result is a permutation of `order`.
    """
    if batch_size < 1 or batches_per_group < 1:
        raise ValueError(f"batch_size and batches_per_group must be >= 1, got {batch_size}, {batches_per_group}")
    order = list(order)
    window = batch_size * batches_per_group
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda pair: -lengths[pair])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    partial = [b for b in batches if len(b) < batch_size]
    full = [b for b in batches if len(b) == batch_size]
    generator = torch.Generator().manual_seed(seed)
    shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    return [pair for batch in shuffled + partial for pair in batch]


# ----------------------------------------------------------------------------------------------
# Collation. A "placement" of a sequence is the flat [R*T] slot of each of its tokens; LossTokens
# follow from it the same way for every layout: the state at slot(t-1) predicts token t.


@dataclass
class PackedSegment:
    """A run of tokens that attend to each other causally (and to their `prefix` segment)."""

    tokens: Tensor
    positions: Tensor
    prefix: int  # index (within its item) of the segment it may also see, or NO_PREFIX


@dataclass
class PlacedRows:
    """Rows filled by `place_segments`; `starts[i]` is the flat [R*T] slot of item i's first token."""

    input_ids: Tensor
    position_ids: Tensor
    segment_ids: Tensor
    prefix_segment_ids: Tensor
    starts: list[int]


def _as_long(values) -> Tensor:
    return torch.as_tensor(list(values) if not isinstance(values, Tensor) else values, dtype=torch.long)


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
        segments.append(PackedSegment(_as_long(seq.tokens), torch.arange(n), NO_PREFIX))
        offsets.append(start + torch.arange(n))
        start += n
    return segments, offsets


def _prefix_shared_segments(pair) -> tuple[list[PackedSegment], list[Tensor]]:
    """[prompt, chosen completion, rejected completion]; completions see segment 0 (the prompt)."""
    p = pair.prompt_length
    chosen, rejected = _as_long(pair.chosen.tokens), _as_long(pair.rejected.tokens)
    c, r = len(chosen) - p, len(rejected) - p
    segments = [
        PackedSegment(chosen[:p], torch.arange(p), NO_PREFIX),
        PackedSegment(chosen[p:], p + torch.arange(c), 0),
        PackedSegment(rejected[p:], p + torch.arange(r), 0),
    ]
    chosen_offsets = torch.arange(p + c)
    rejected_offsets = torch.cat([torch.arange(p), p + c + torch.arange(r)])
    return segments, [chosen_offsets, rejected_offsets]


def place_segments(
    items: Sequence[Sequence[PackedSegment]],
    pad_token_id: int,
    max_row_tokens: int | None,
    pad_to_multiple_of: int = 1,
) -> PlacedRows:
    """Lay out items (each a list of segments that stay together: a pair's sequences, or one
    supervised sequence) in rows of at most `max_row_tokens`, segment after segment.

    Every segment gets its own segment id; a segment's `prefix` (an index within its item) becomes
    that segment's id in `prefix_segment_ids`. Row length is the longest row, rounded up to a
    multiple of `pad_to_multiple_of`.
    """
    sizes = [sum(len(segment.tokens) for segment in segments) for segments in items]
    rows = pack_rows(sizes, max_row_tokens)
    row_length = max(sum(sizes[i] for i in row) for row in rows)
    row_length = -(-row_length // pad_to_multiple_of) * pad_to_multiple_of

    num_rows = len(rows)
    input_ids = torch.full((num_rows, row_length), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((num_rows, row_length), dtype=torch.long)
    segment_ids = torch.zeros((num_rows, row_length), dtype=torch.long)
    prefix_segment_ids = torch.full((num_rows, row_length), NO_PREFIX, dtype=torch.long)
    starts = [0] * len(items)
    for row, members in enumerate(rows):
        cursor, next_segment = 0, 0
        for item_index in members:
            starts[item_index] = row * row_length + cursor
            first_segment = next_segment
            for segment in items[item_index]:
                stop = cursor + len(segment.tokens)
                input_ids[row, cursor:stop] = segment.tokens
                position_ids[row, cursor:stop] = segment.positions
                segment_ids[row, cursor:stop] = next_segment
                if segment.prefix != NO_PREFIX:
                    prefix_segment_ids[row, cursor:stop] = first_segment + segment.prefix
                cursor, next_segment = stop, next_segment + 1
        # The padding tail is one more segment with its own positions: it attends only to itself,
        # so no row of the mask is empty (an all-masked softmax row would put NaN into backward).
        position_ids[row, cursor:] = torch.arange(row_length - cursor)
        segment_ids[row, cursor:] = next_segment
    return PlacedRows(input_ids, position_ids, segment_ids, prefix_segment_ids, starts)


def _collate_segments(
    pairs: Sequence,
    pair_ids: Sequence[int],
    pad_token_id: int,
    layout: Layout,
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


def sequence_loss_tokens(sequences: Sequence, placements: Sequence[Tensor]) -> LossTokens:
    """LossTokens of sequences (objects with .tokens and .weights) whose token t sits at flat slot
    `placements[s][t]`; sequence s is LossTokens sequence s."""
    hidden_index, target_ids, weights, sequence_index = [], [], [], []
    for index, (seq, slots) in enumerate(zip(sequences, placements)):
        seq_weights = torch.as_tensor(list(seq.weights), dtype=torch.float32)
        # Token t (t >= 1) with nonzero weight is predicted by the state at token t-1's slot.
        targets = torch.nonzero(seq_weights[1:], as_tuple=True)[0] + 1
        hidden_index.append(slots[targets - 1])
        target_ids.append(_as_long(seq.tokens)[targets])
        weights.append(seq_weights[targets])
        sequence_index.append(torch.full((len(targets),), index, dtype=torch.long))
    return LossTokens(
        hidden_index=torch.cat(hidden_index),
        target_ids=torch.cat(target_ids),
        weights=torch.cat(weights),
        sequence_index=torch.cat(sequence_index),
        num_sequences=len(sequences),
    )


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
    _check_attention(attention)
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
    from cookbook.preference.batching import collate_padded

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


__all__ = [
    "FLEX_BLOCK_SIZE",
    "LAYOUTS",
    "Layout",
    "PackedSegment",
    "PlacedRows",
    "SegmentedPairBatch",
    "attention_implementation",
    "build_attention_mask",
    "collate_packed",
    "collate_pairs",
    "collate_prefix_shared",
    "length_grouped_order",
    "pack_rows",
    "pair_token_count",
    "place_segments",
    "segment_attention_mask",
    "segment_block_mask",
    "sequence_loss_tokens",
]
