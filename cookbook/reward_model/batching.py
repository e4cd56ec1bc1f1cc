"""Pairs laid out for a reward model: the rows of the preference recipe (padded, packed or
prefix-shared, `cookbook/preference/batching.py`), plus, for every sequence, the flat [R*T] slot whose
hidden state the head scores.

The scored token of a sequence is its last token that is not the pad token: that is how transformers'
`...ForSequenceClassification` pools (the rightmost token != `config.pad_token_id`), so a checkpoint
loaded with `AutoModelForSequenceClassification` scores a sequence exactly as training did, even
where the pad token is also the end-of-turn token (SmolLM2: `<|im_end|>`; a chat-template reply ends
in `<|im_end|>\\n`, so the scored token is that final newline, which has seen the whole reply).

The slots follow from each layout's placement of the sequences (one row of pairs end to end for
packed and prefix-shared, a row per sequence for padded); `score_slots` checks that the token at
every slot is the one it expects, so a change of layout fails loudly instead of scoring the wrong
token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cookbook.preference.batching import PairBatch, make_collate
from cookbook.training.packing import CollatePlan


@dataclass
class ScoreBatch:
    pairs: PairBatch
    score_slots: Tensor  # [2P]: chosen sequences 0..P-1, then rejected P..2P-1 (the PairBatch's order)

    @property
    def num_pairs(self) -> int:
        return self.pairs.num_pairs

    def to(self, device: torch.device) -> ScoreBatch:
        return ScoreBatch(self.pairs.to(device), self.score_slots.to(device))


def scored_index(tokens: Sequence[int], pad_token_id: int) -> int:
    """Position of the last token that is not `pad_token_id` (the last token when all are)."""
    for index in range(len(tokens) - 1, -1, -1):
        if tokens[index] != pad_token_id:
            return index
    return len(tokens) - 1


def score_slots(pairs: Sequence, batch: PairBatch, layout: str, pad_token_id: int) -> Tensor:
    """The flat slot of each sequence's scored token in `batch`, collated from `pairs` with `layout`."""
    chosen, rejected, expected = [], [], []
    if layout == "padded":
        width = batch.input_ids.shape[1]
        count = len(pairs)
        for i, pair in enumerate(pairs):
            chosen.append(i * width + scored_index(pair.chosen.tokens, pad_token_id))
            rejected.append((count + i) * width + scored_index(pair.rejected.tokens, pad_token_id))
    else:
        if batch.input_ids.shape[0] != 1:
            raise ValueError(f"layout={layout}: expected the pairs in one row, got {batch.input_ids.shape[0]}")
        start = 0
        for pair in pairs:
            c, r = len(pair.chosen.tokens), len(pair.rejected.tokens)
            chosen.append(start + scored_index(pair.chosen.tokens, pad_token_id))
            index = scored_index(pair.rejected.tokens, pad_token_id)
            if layout == "prefix_shared":
                # [prompt, chosen completion, rejected completion]: the rejected reply follows the chosen one.
                p = pair.prompt_length
                rejected.append(start + index if index < p else start + c + (index - p))
                start += c + r - p
            else:
                rejected.append(start + c + index)
                start += c + r
    for pair in pairs:
        expected.append(pair.chosen.tokens[scored_index(pair.chosen.tokens, pad_token_id)])
    for pair in pairs:
        expected.append(pair.rejected.tokens[scored_index(pair.rejected.tokens, pad_token_id)])
    slots = torch.tensor(chosen + rejected, dtype=torch.long)
    found = batch.input_ids.reshape(-1)[slots]
    if not torch.equal(found, torch.tensor(expected, dtype=torch.long)):
        raise ValueError(f"layout={layout}: the scored slots do not hold the sequences' last tokens")
    return slots


def make_score_collate(layout: str, pad_token_id: int, model) -> CollatePlan:
    """The preference layout `layout` (auto picks as for DPO) with the scored slots added."""
    pair_plan = make_collate(layout, pad_token_id, model)

    def collate(pairs: Sequence, pair_ids: Sequence[int]) -> ScoreBatch:
        batch = pair_plan.collate(pairs, pair_ids)
        return ScoreBatch(batch, score_slots(pairs, batch, pair_plan.name, pad_token_id))

    return CollatePlan(pair_plan.name, collate)
