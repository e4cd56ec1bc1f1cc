"""`RoundSchedule`: which pairs each rank trains on at each step of an on-policy run.

Step s belongs to round s // steps_per_round. A round's pairs exist only once the policy has
sampled them, so asking for the first batch of a round makes the `RoundStore` sample (or read back)
that round: the shared loop needs no notion of rounds, it just walks the steps.

Within a round, batches walk seeded permutations of the round's pairs, one after another, so a
round with fewer pairs than it has batch slots cycles through them. A pair id carries its round:
round * ROUND_STRIDE + index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cookbook.training.data_order import check_batch_sizes, epoch_order, rank_micro_batches

ROUND_STRIDE = 1_000_000_000


class RoundSource(Protocol):
    def num_pairs(self, round_index: int, step: int) -> int:
        """How many pairs round `round_index` has, sampling it first if needed (asked at `step`)."""


def split_pair_id(pair_id: int) -> tuple[int, int]:
    return divmod(pair_id, ROUND_STRIDE)


@dataclass
class RoundSchedule:
    source: RoundSource
    rounds: int
    steps_per_round: int
    batch_size: int  # global, over all ranks
    micro_batch_size: int  # per rank and forward pass
    max_steps: int | None
    seed: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        check_batch_sizes(self.batch_size, self.micro_batch_size, self.world_size)

    @property
    def steps_per_epoch(self) -> int:  # the loop logs `epoch`: here, the round
        return self.steps_per_round

    @property
    def total_steps(self) -> int:
        total = self.rounds * self.steps_per_round
        return total if self.max_steps is None else min(total, self.max_steps)

    def round_of(self, step: int) -> int:
        return step // self.steps_per_round

    def global_batch(self, step: int) -> list[int]:
        round_index, offset = divmod(step, self.steps_per_round)
        local = round_batch(self.seed, round_index, self.source.num_pairs(round_index, step), self.batch_size, offset)
        return [round_index * ROUND_STRIDE + i for i in local]

    def micro_batches(self, step: int) -> list[list[int]]:
        """This rank's micro-batches at `step`: every world_size-th pair of the global batch."""
        return rank_micro_batches(self.global_batch(step), self.rank, self.world_size, self.micro_batch_size)

    def round_micro_batches(self, round_index: int, num_pairs: int) -> list[list[int]]:
        """This rank's micro-batches of every step of the round, as pair indices within the round."""
        steps = range(round_index * self.steps_per_round,
                      min((round_index + 1) * self.steps_per_round, self.total_steps))
        offsets = [step - round_index * self.steps_per_round for step in steps]
        return [ids for offset in offsets for ids in rank_micro_batches(
            round_batch(self.seed, round_index, num_pairs, self.batch_size, offset),
            self.rank, self.world_size, self.micro_batch_size)]


def round_batch(seed: int, round_index: int, num_pairs: int, batch_size: int, offset: int) -> list[int]:
    """Pair indices of the `offset`-th batch of a round: slots [offset*B, (offset+1)*B) of the round's
    seeded permutations laid end to end."""
    if num_pairs < 1:
        raise ValueError(f"round {round_index} has no pairs")
    start = offset * batch_size
    ids = []
    for slot in range(start, start + batch_size):
        cycle, position = divmod(slot, num_pairs)
        ids.append(epoch_order(seed * 7_919 + round_index, cycle, num_pairs)[position])
    return ids
