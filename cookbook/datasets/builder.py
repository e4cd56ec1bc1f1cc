"""`DPODatasetBuilder`: the chz class every preference data set subclasses.

A builder holds configuration only. Calling it (`builder()`) reads the raw rows, turns each into a
`Comparison` or a named `Skip`, removes duplicates, shuffles deterministically with `seed`, and
returns the train and test comparisons together with the count of every row it did not use.

A subclass writes two methods and is decorated with `@chz.chz` (chz requires it even when the
subclass adds no fields):

- `load_rows(split)`: the raw rows of one source split ("train", "test", ...), any iterable;
- `row_to_comparison(row)`: one row to a `Comparison`, or `Skip("tie")`, `Skip("malformed", why)`...

and may override `split_names()` when the source has its own test split. Without one, `test_size`
pairs are carved out of the shuffled train pairs, so the two never overlap. The reading, skip
counting, deduplication and shuffling are `SplitBuilder`'s, shared with the supervised builders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import chz

from cookbook.datasets.comparison import Comparison, Skip, check_comparison
from cookbook.datasets.split_builder import ROW_ERRORS, SkipCounts, SplitBuilder
from cookbook.errors import UserError

# SkipCounts and ROW_ERRORS were first defined here; they stay importable from this module.
__all__ = ["ROW_ERRORS", "ComparisonSplits", "DPODatasetBuilder", "NoUsablePairsError", "SkipCounts"]


class NoUsablePairsError(UserError, ValueError):
    """Every row of a split was skipped, or too few remain for the requested test split."""


@dataclass
class ComparisonSplits:
    """What a builder returns: the comparisons to train and test on, and what it left out."""

    train: list[Comparison]
    test: list[Comparison]
    rows_read: dict[str, int]  # per source split
    skipped: SkipCounts
    unused_pairs: int = 0  # usable pairs left out by max_pairs or test_size


@chz.chz
class DPODatasetBuilder(SplitBuilder[Comparison]):
    """Base class of preference data sets. Configure with fields, build with `builder()`."""

    item_type: ClassVar[type] = Comparison
    item_noun: ClassVar[str] = "pairs"
    converter_name: ClassVar[str] = "row_to_comparison"
    limit_field: ClassVar[str] = "max_pairs"
    duplicate_detail: ClassVar[str] = "same prompt, chosen and rejected as an earlier row"
    no_usable_error: ClassVar[type[Exception]] = NoUsablePairsError
    # Each split on its own, as preference data has always been deduplicated: a source's own test
    # split stays whole, so test metrics stay comparable with earlier runs on the same data.
    dedupe_across_splits: ClassVar[bool] = False

    test_size: int = chz.field(
        default=200,
        doc="held-out pairs: the first test_size of the source's shuffled test split, or carved out of "
        "the train pairs when the source has none (0 = no test set)",
    )
    seed: int = chz.field(default=0, doc="seed of the deterministic shuffle of both splits")
    max_pairs: int | None = chz.field(default=None, doc="use at most this many training pairs (None = all)")

    # -- what a subclass writes, with load_rows (and maybe split_names, on_malformed, name) --------

    def row_to_comparison(self, row: Any) -> Comparison | Skip:
        raise NotImplementedError(f"{type(self).__name__} must define row_to_comparison(row)")

    # -- building ---------------------------------------------------------------------------------

    def convert_row(self, row: Any) -> Comparison | Skip:
        return self.row_to_comparison(row)

    def check_item(self, item: Comparison) -> Comparison | Skip:
        return check_comparison(item)

    def __call__(self) -> ComparisonSplits:
        """Read, convert, deduplicate, shuffle and split. Deterministic for a given `seed`."""
        if self.test_size < 0:
            raise ValueError(f"dataset.test_size must be >= 0, got {self.test_size}")
        splits = self.split_rows(self.load_rows, SkipCounts(), self.max_pairs)
        return ComparisonSplits(splits.train, splits.test, splits.rows_read, splits.skipped, splits.unused)
