"""Choosing how pairs are laid out for the forward pass (see packing.py for the layouts).

`auto` picks prefix sharing where the model's attention can take its mask: the prompt is computed
once per pair instead of twice, and no slot is padding. Otherwise packing (padding-free rows whose
per-document attention transformers derives from the position ids), and padded rows as the last
resort for attention implementations that accept neither.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

from cookbook.preference.batching import PairBatch
from cookbook.preference.packing import MASKED_ATTENTIONS, attention_implementation, collate_pairs

Layout = Literal["auto", "padded", "packed", "prefix_shared"]
LAYOUT_CHOICES: tuple[str, ...] = ("auto", "padded", "packed", "prefix_shared")
# Attention implementations for which transformers turns restarting position ids into
# per-document masks.
PACKABLE_ATTENTIONS: tuple[str, ...] = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


@dataclass(frozen=True)
class CollatePlan:
    name: str
    collate: Callable[[Sequence, Sequence[int]], PairBatch]


def choose_layout(layout: Layout, attention: str) -> str:
    if layout not in LAYOUT_CHOICES:
        raise ValueError(f"layout={layout!r} is not one of {', '.join(LAYOUT_CHOICES)}")
    if layout == "prefix_shared" and attention not in MASKED_ATTENTIONS:
        raise ValueError(f"layout=prefix_shared needs attention {', '.join(MASKED_ATTENTIONS)}; "
                         f"the model uses {attention!r} (try layout=packed)")
    if layout != "auto":
        return layout
    if attention in MASKED_ATTENTIONS:
        return "prefix_shared"
    return "packed" if attention in PACKABLE_ATTENTIONS else "padded"


def make_collate(layout: Layout, pad_token_id: int, model) -> CollatePlan:
    attention = attention_implementation(model)
    name = choose_layout(layout, attention)
    return CollatePlan(name, partial(collate_pairs, pad_token_id=pad_token_id, layout=name, attention=attention))
