"""Learning-rate schedules: a multiplier of the base rate for each optimizer step."""

from __future__ import annotations

import math
from typing import Literal

import torch

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
