"""Which pairs each rank trains on at each step.

The order is a pure function of (seed, epoch): a fresh seeded permutation per epoch. So the data
position of a run is just its step number, which is all that resume needs, and the reference
precompute can walk the very micro-batches training will use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, num_pairs: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(num_pairs, generator=generator).tolist())


@dataclass(frozen=True)
class BatchSchedule:
    num_pairs: int
    batch_size: int  # global, over all ranks
    micro_batch_size: int  # per rank and forward pass
    num_epochs: int
    max_steps: int | None
    seed: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        check_batch_sizes(self.batch_size, self.micro_batch_size, self.world_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch_size={self.batch_size} is larger than the {self.num_pairs} training pairs")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_pairs // self.batch_size  # the last partial batch of an epoch is left out

    @property
    def total_steps(self) -> int:
        total = self.steps_per_epoch * self.num_epochs
        return total if self.max_steps is None else min(total, self.max_steps)

    def global_batch(self, step: int) -> list[int]:
        epoch, offset = divmod(step, self.steps_per_epoch)
        order = epoch_order(self.seed, epoch, self.num_pairs)
        return list(order[offset * self.batch_size : (offset + 1) * self.batch_size])

    def micro_batches(self, step: int) -> list[list[int]]:
        """This rank's micro-batches at `step`: every world_size-th pair of the global batch."""
        return rank_micro_batches(self.global_batch(step), self.rank, self.world_size, self.micro_batch_size)

    def all_micro_batches(self) -> list[list[int]]:
        return [ids for step in range(self.total_steps) for ids in self.micro_batches(step)]


def check_batch_sizes(batch_size: int, micro_batch_size: int, world_size: int) -> None:
    if batch_size % (micro_batch_size * world_size):
        raise ValueError(f"batch_size={batch_size} must be a multiple of micro_batch_size x world_size "
                         f"= {micro_batch_size} x {world_size}")


def rank_micro_batches(global_ids: list[int], rank: int, world_size: int, micro_batch_size: int) -> list[list[int]]:
    """A rank's micro-batches of a global batch: every world_size-th id, `micro_batch_size` at a time."""
    mine = global_ids[rank::world_size]
    return [mine[i : i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]
