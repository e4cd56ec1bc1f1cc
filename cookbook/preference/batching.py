"""Turning tokenized preference pairs into model inputs.

A `PairBatch` is what one forward pass consumes: rows of tokens plus a `LossTokens` map that says
which hidden states score which completion, and for each pair the index of its chosen and rejected
sequence. Chosen and rejected therefore go through one forward together, however they are laid
out (padded rows here; packed or prefix-shared buffers in `packing.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import torch
from torch import Tensor

from cookbook.preference.logprobs import LossTokens, pad_batch, padded_loss_tokens


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
