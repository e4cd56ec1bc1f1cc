"""Turning tokenized supervised sequences into model inputs: packed (the default) or padded rows.

- `collate_packed`: sequences one after another in one row (or rows of at most `max_row_tokens`),
  no padding between them. Position ids restart at 0 for each sequence and `attention_mask` is None,
  so transformers builds a per-sequence causal mask from the position ids (see
  cookbook/preference/batching.py): no token sees another sequence. The rows come from the same
  `place_segments` and `sequence_loss_tokens` that pack preference pairs.
- `collate_padded`: one right-padded row per sequence, with a padding mask.

Both give a `SupervisedBatch` whose `loss_tokens` name, for every trained token, the hidden state
that predicts it and its sequence, so `SequenceLogprobModel` returns per-sequence log-prob sums and
trained-token counts whichever layout is used, equal up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import Tensor

from cookbook.training.attention import (
    FLEX_BLOCK_SIZE,
    NO_PREFIX,
    PACKABLE_ATTENTIONS,
    attention_implementation,
)
from cookbook.training.logprobs import LossTokens, pad_batch, padded_loss_tokens
from cookbook.training.packing import (
    CollatePlan,
    PackedSegment,
    batch_to,
    place_segments,
    sequence_loss_tokens,
)

SupervisedLayout = Literal["packed", "padded"]
SUPERVISED_LAYOUTS: tuple[str, ...] = ("packed", "padded")


@dataclass
class SupervisedBatch:
    input_ids: Tensor  # [R, T]
    attention_mask: Tensor | None  # [R, T] padding mask, or None for packed rows
    position_ids: Tensor | None  # [R, T]; restarts at 0 for each packed sequence
    loss_tokens: LossTokens  # sequence s of the batch is example_ids[s]
    example_ids: Tensor  # [S] dataset positions of the sequences
    num_real_tokens: int  # tokens of all sequences, without padding
    num_slots: int  # R * T: what the forward pays for

    @property
    def num_sequences(self) -> int:
        return int(self.example_ids.numel())

    def to(self, device: torch.device) -> SupervisedBatch:
        return batch_to(self, device)


def _check(sequences: Sequence, example_ids: Sequence[int]) -> None:
    if not sequences:
        raise ValueError("cannot collate an empty list of sequences")
    if len(sequences) != len(example_ids):
        raise ValueError(f"{len(sequences)} sequences but {len(example_ids)} example_ids")


def collate_padded(sequences: Sequence, example_ids: Sequence[int], pad_token_id: int) -> SupervisedBatch:
    """Row s holds sequence s, right-padded to the longest."""
    _check(sequences, example_ids)
    input_ids, loss_weights, attention_mask = pad_batch(sequences, pad_token_id)
    return SupervisedBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=None,
        loss_tokens=padded_loss_tokens(input_ids, loss_weights),
        example_ids=torch.as_tensor([int(i) for i in example_ids], dtype=torch.long),
        num_real_tokens=sum(len(sequence.tokens) for sequence in sequences),
        num_slots=input_ids.numel(),
    )


def collate_packed(
    sequences: Sequence,
    example_ids: Sequence[int],
    pad_token_id: int,
    max_row_tokens: int | None = None,
    pad_to_multiple_of: int = 1,
) -> SupervisedBatch:
    """Sequences packed padding-free, positions restarting at 0 per sequence, attention_mask None.
    `max_row_tokens` spreads them over several rows (a sequence is never split); None: one row."""
    _check(sequences, example_ids)
    segments = [
        [PackedSegment(torch.as_tensor(list(s.tokens), dtype=torch.long), torch.arange(len(s.tokens)), NO_PREFIX)]
        for s in sequences
    ]
    placed = place_segments(segments, pad_token_id, max_row_tokens, pad_to_multiple_of)
    placements = [start + torch.arange(len(s.tokens)) for start, s in zip(placed.starts, sequences)]
    return SupervisedBatch(
        input_ids=placed.input_ids,
        attention_mask=None,
        position_ids=placed.position_ids,
        loss_tokens=sequence_loss_tokens(sequences, placements),
        example_ids=torch.as_tensor([int(i) for i in example_ids], dtype=torch.long),
        num_real_tokens=sum(len(s.tokens) for s in sequences),
        num_slots=placed.input_ids.numel(),
    )


def collate_sequences(
    sequences: Sequence,
    example_ids: Sequence[int],
    pad_token_id: int,
    layout: SupervisedLayout = "packed",
    attention: str = "sdpa",
    max_row_tokens: int | None = None,
) -> SupervisedBatch:
    """Dispatch on `layout`. Under flex attention packed rows are padded to whole 128-token blocks."""
    if layout == "padded":
        return collate_padded(sequences, example_ids, pad_token_id)
    if layout == "packed":
        multiple = FLEX_BLOCK_SIZE if attention == "flex_attention" else 1
        return collate_packed(sequences, example_ids, pad_token_id, max_row_tokens, pad_to_multiple_of=multiple)
    raise ValueError(f"layout={layout!r} is not one of {', '.join(SUPERVISED_LAYOUTS)}")


def make_supervised_collate(
    layout: SupervisedLayout, pad_token_id: int, model, max_row_tokens: int | None = None
) -> CollatePlan:
    """The collate function for `model`: `plan.collate(sequences, example_ids) -> SupervisedBatch`.

    `max_row_tokens` caps a packed row (None: one row per micro-batch). Under sdpa or eager the
    per-sequence mask is dense, so a row's attention costs its length squared however many
    sequences share it; capping rows near `max_length` bounds that at the padded layout's cost.
    Flex attention skips the masked blocks, so one row is best there. Raises ValueError when
    packed rows are asked of an attention that cannot separate their sequences.
    """
    if layout not in SUPERVISED_LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {', '.join(SUPERVISED_LAYOUTS)}")
    attention = attention_implementation(model)
    if layout == "packed" and attention not in PACKABLE_ATTENTIONS:
        raise ValueError(
            f"layout=packed needs attention one of {', '.join(PACKABLE_ATTENTIONS)} (per-sequence masks from "
            f"position ids); the model uses {attention!r}: use layout=padded"
        )
    collate = partial(collate_sequences, pad_token_id=pad_token_id, layout=layout, attention=attention,
                      max_row_tokens=max_row_tokens)
    return CollatePlan(layout, collate)
