"""The schedule of a run: which examples each rank trains on at each step, and the learning rate.

The order is a pure function of (seed, epoch): a fresh seeded permutation per epoch. So the data
position of a run is just its step number, which is all that resume needs, and the reference
precompute can walk the very micro-batches training will use.

The learning-rate schedules are a multiplier of the base rate for each optimizer step.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

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


LRSchedule = Literal["linear", "cosine", "constant"]


def lr_multiplier(step: int, total_steps: int, schedule: LRSchedule, warmup_steps: int = 0) -> float:
    """Linear warmup from 1/(warmup+1) to 1 over `warmup_steps`, then the schedule's decay to 0."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"lr_schedule={schedule!r} is not one of linear, cosine, constant")


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, schedule: LRSchedule, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps, schedule, warmup_steps)
    )


def eval_batches(num_pairs: int, micro_batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """This rank's eval micro-batches. Every rank gets the same number (possibly ending with an
    empty one): FSDP gathers weights collectively, so all ranks must run the same forwards."""
    my_ids = list(range(rank, num_pairs, world_size))
    num_batches = -(-num_pairs // (micro_batch_size * world_size))
    return [my_ids[i * micro_batch_size : (i + 1) * micro_batch_size] for i in range(num_batches)]
