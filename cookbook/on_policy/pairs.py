"""Choosing each prompt's training pair from its scored replies: best versus worst.

Pure functions of the rewards, so the choice is easy to test and a reader of `samples.jsonl` can
redo it by hand. Among equal rewards the earlier reply wins (sampling already made the order random).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PairSkip = Literal["tie", "small_gap"]


@dataclass(frozen=True)
class ChosenPair:
    chosen: int  # index of the best reply
    rejected: int  # index of the worst reply
    gap: float  # reward(chosen) - reward(rejected) > 0


def select_pair(rewards: list[float], min_reward_gap: float = 0.0) -> ChosenPair | PairSkip:
    """Best versus worst of one prompt's replies, or why there is no pair: `tie` when every reply
    has the same reward (nothing to learn from), `small_gap` when best - worst < min_reward_gap."""
    if len(rewards) < 2:
        raise ValueError(f"a pair needs at least 2 replies, got {len(rewards)}")
    best = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
    worst = min(range(len(rewards)), key=lambda i: (rewards[i], i))
    gap = rewards[best] - rewards[worst]
    if gap <= 0:
        return "tie"
    if gap < min_reward_gap:
        return "small_gap"
    return ChosenPair(chosen=best, rejected=worst, gap=gap)
