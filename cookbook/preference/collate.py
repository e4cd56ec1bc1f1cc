"""Choosing how pairs are laid out for the forward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

from cookbook.preference.batching import PairBatch, collate_padded

Layout = Literal["auto", "padded", "packed", "prefix_shared"]
LAYOUTS: tuple[str, ...] = ("auto", "padded", "packed", "prefix_shared")


@dataclass(frozen=True)
class CollatePlan:
    name: str
    collate: Callable[[Sequence, Sequence[int]], PairBatch]


def make_collate(layout: Layout, pad_token_id: int, model=None) -> CollatePlan:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    if layout in ("auto", "padded"):
        return CollatePlan("padded", partial(collate_padded, pad_token_id=pad_token_id))
    raise ValueError(f"layout={layout!r} is not available yet")
