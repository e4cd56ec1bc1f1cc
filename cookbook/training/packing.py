"""Laying sequences out in rows for one forward pass, without padding between them.

An item is a list of segments that stay together in one row (a pair's two sequences, or one
supervised sequence); `place_segments` lays items end to end in rows of at most `max_row_tokens`,
each segment with its own id and its positions, so the attention (`attention.py`) can keep the
segments apart. A "placement" of a sequence is the flat [R*T] slot of each of its tokens;
`sequence_loss_tokens` derives the `LossTokens` from placements the same way for every layout: the
state at slot(t-1) predicts token t. The preference and supervised batches are built on these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import torch
from torch import Tensor

from cookbook.training.attention import NO_PREFIX
from cookbook.training.logprobs import LossTokens

BatchT = TypeVar("BatchT")


def batch_to(batch: BatchT, device: torch.device) -> BatchT:
    """A copy of a batch dataclass with every field that can move (tensors, `LossTokens`, any other
    value with a `.to(device)`) on `device`; the rest (counts, names, None) as they are. The `.to` of
    every batch type: pairs, supervised sequences."""
    moved: dict[str, Any] = {}
    for batch_field in fields(batch):
        value = getattr(batch, batch_field.name)
        if isinstance(value, Tensor):
            moved[batch_field.name] = value.to(device, non_blocking=True)
        elif callable(getattr(value, "to", None)):
            moved[batch_field.name] = value.to(device)
    return replace(batch, **moved)


@dataclass(frozen=True)
class CollatePlan:
    """A layout's name and its collate function: (examples, their dataset ids) -> a batch."""

    name: str
    collate: Callable[[Sequence, Sequence[int]], Any]


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


def as_long(values) -> Tensor:
    return torch.as_tensor(list(values) if not isinstance(values, Tensor) else values, dtype=torch.long)


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


def sequence_loss_tokens(sequences: Sequence, placements: Sequence[Tensor]) -> LossTokens:
    """LossTokens of sequences (objects with .tokens and .weights) whose token t sits at flat slot
    `placements[s][t]`; sequence s is LossTokens sequence s."""
    hidden_index, target_ids, weights, sequence_index = [], [], [], []
    for index, (seq, slots) in enumerate(zip(sequences, placements)):
        seq_weights = torch.as_tensor(list(seq.weights), dtype=torch.float32)
        # Token t (t >= 1) with nonzero weight is predicted by the state at token t-1's slot.
        targets = torch.nonzero(seq_weights[1:], as_tuple=True)[0] + 1
        hidden_index.append(slots[targets - 1])
        target_ids.append(as_long(seq.tokens)[targets])
        weights.append(seq_weights[targets])
        sequence_index.append(torch.full((len(targets),), index, dtype=torch.long))
    return LossTokens(
        hidden_index=torch.cat(hidden_index),
        target_ids=torch.cat(target_ids),
        weights=torch.cat(weights),
        sequence_index=torch.cat(sequence_index),
        num_sequences=len(sequences),
    )
