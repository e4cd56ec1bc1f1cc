"""`dataset=demo` (the default): the small preference set bundled with cookbook.

1,200 training and 200 test pairs written by `scripts/make_demo_data.py` (deterministic; rerun it
to regenerate `cookbook/datasets/data/demo_{train,test}.jsonl`). Each prompt asks a short question
with a stated answer format; the chosen reply is correct and follows the format, the rejected one
is wrong, evasive or ignores the format. Pairs are a few dozen tokens long, so a 135M model learns
the preference in minutes on a CPU with no download.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import chz

from cookbook.datasets.builder import DPODatasetBuilder
from cookbook.datasets.comparison import Comparison, Skip
from cookbook.datasets.file import row_to_comparison
from cookbook.datasets.files import read_rows
from cookbook.datasets.registry import register_builder

DEMO_DATA_DIR = Path(__file__).resolve().parent / "data"
DEMO_FILES = {"train": DEMO_DATA_DIR / "demo_train.jsonl", "test": DEMO_DATA_DIR / "demo_test.jsonl"}


@register_builder("demo")
@chz.chz
class DemoBuilder(DPODatasetBuilder):
    """The bundled demo pairs (explicit-prompt JSON Lines, splits train and test).

    Its defaults size the no-argument quickstart for a 2-core CPU: 320 of the 1,200 training pairs
    (20 steps of 16) already move held-out accuracy far from 0.5. `dataset.max_pairs=None` uses all.
    """

    test_size: int = chz.field(default=64, doc="held-out pairs from the bundled test split (200 available)")
    max_pairs: int | None = chz.field(default=320, doc="training pairs to use (1,200 available; None = all)")

    def name(self) -> str:
        return "demo"

    def split_names(self) -> tuple[str, str | None]:
        return ("train", "test")

    def load_rows(self, split: str) -> Iterable[Any]:
        return read_rows(DEMO_FILES[split])

    def row_to_comparison(self, row: dict[str, Any]) -> Comparison | Skip:
        return row_to_comparison(row)
