"""`DPODatasetBuilder`: the chz class every preference data set subclasses.

A builder holds configuration only. Calling it (`builder()`) reads the raw rows, turns each into a
`Comparison` or a named `Skip`, removes duplicates, shuffles deterministically with `seed`, and
returns the train and test comparisons together with the count of every row it did not use.

A subclass writes two methods and is decorated with `@chz.chz` (chz requires it even when the
subclass adds no fields):

- `load_rows(split)`: the raw rows of one source split ("train", "test", ...), any iterable;
- `row_to_comparison(row)`: one row to a `Comparison`, or `Skip("tie")`, `Skip("malformed", why)`...

and may override `split_names()` when the source has its own test split. Without one, `test_size`
pairs are carved out of the shuffled train pairs, so the two never overlap.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import chz

from cookbook.datasets.comparison import Comparison, Skip, check_comparison
from cookbook.datasets.files import FileRow
from cookbook.errors import UserError

# Exceptions a row parser may raise on a row whose schema is not what it expects; they become
# `malformed` skips (with the error as the example) instead of stopping a long load halfway.
ROW_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError)


class NoUsablePairsError(UserError, ValueError):
    """Every row of a split was skipped, or too few remain for the requested test split."""


@dataclass
class SkipCounts:
    """How many rows were skipped for each reason, with the first example of each reason."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, skip: Skip, where: str = "") -> None:
        self.counts[skip.reason] += 1
        if skip.reason not in self.examples:
            self.examples[skip.reason] = f"{where}: {skip.detail}" if where else skip.detail

    def merge(self, other: SkipCounts) -> None:
        self.counts.update(other.counts)
        for reason, example in other.examples.items():
            self.examples.setdefault(reason, example)

    def total(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        if not self.counts:
            return "none"
        return ", ".join(
            f"{reason}={count} (e.g. {self.examples.get(reason, '')})"
            for reason, count in self.counts.items()
        )


@dataclass
class ComparisonSplits:
    """What a builder returns: the comparisons to train and test on, and what it left out."""

    train: list[Comparison]
    test: list[Comparison]
    rows_read: dict[str, int]  # per source split
    skipped: SkipCounts
    unused_pairs: int = 0  # usable pairs left out by max_pairs or test_size


@chz.chz
class DPODatasetBuilder:
    """Base class of preference data sets. Configure with fields, build with `builder()`."""

    test_size: int = chz.field(
        default=200,
        doc="held-out pairs: the first test_size of the source's shuffled test split, or carved out of "
        "the train pairs when the source has none (0 = no test set)",
    )
    seed: int = chz.field(default=0, doc="seed of the deterministic shuffle of both splits")
    max_pairs: int | None = chz.field(default=None, doc="use at most this many training pairs (None = all)")

    # -- what a subclass writes -------------------------------------------------------------------

    def split_names(self) -> tuple[str, str | None]:
        """(train split, test split or None). With None, the test pairs are carved out of train."""
        return ("train", None)

    def load_rows(self, split: str) -> Iterable[Any]:
        """Raw rows of one source split. Rows read from local files may be `FileRow`s: the base class
        hands their `data` to `row_to_comparison` and uses their location in error messages."""
        raise NotImplementedError(f"{type(self).__name__} must define load_rows(split)")

    def row_to_comparison(self, row: Any) -> Comparison | Skip:
        raise NotImplementedError(f"{type(self).__name__} must define row_to_comparison(row)")

    def on_malformed(self, skip: Skip, where: str) -> None:
        """Called for each malformed row before it is counted; raise here to make it fatal."""

    # -- building ---------------------------------------------------------------------------------

    def __call__(self) -> ComparisonSplits:
        """Read, convert, deduplicate, shuffle and split. Deterministic for a given `seed`."""
        if self.test_size < 0:
            raise ValueError(f"dataset.test_size must be >= 0, got {self.test_size}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"dataset.max_pairs must be >= 1 or None, got {self.max_pairs}")
        train_split, test_split = self.split_names()
        skipped = SkipCounts()
        rows_read: dict[str, int] = {}

        train, rows_read[train_split] = self._convert_split(train_split, skipped)
        _shuffle(train, self.seed, train_split)
        if test_split is None:
            if self.test_size and 0 < len(train) <= self.test_size:
                raise NoUsablePairsError(
                    f"{self.name()}: only {len(train)} usable pairs, so carving out dataset.test_size="
                    f"{self.test_size} test pairs leaves none to train on; lower dataset.test_size. "
                    f"Skipped rows: {skipped.describe()}"
                )
            test, train = train[: self.test_size], train[self.test_size :]
            unused = 0
        else:
            test, rows_read[test_split] = self._convert_split(test_split, skipped)
            _shuffle(test, self.seed, test_split)
            unused = max(0, len(test) - self.test_size)
            test = test[: self.test_size]
        if not train:
            raise NoUsablePairsError(
                f"{self.name()}: no usable training pairs in split {train_split!r} "
                f"({rows_read[train_split]} rows read). Skipped rows: {skipped.describe()}"
            )
        if self.max_pairs is not None and len(train) > self.max_pairs:
            unused += len(train) - self.max_pairs
            train = train[: self.max_pairs]
        return ComparisonSplits(train, test, rows_read, skipped, unused)

    def name(self) -> str:
        """How the summary names this data set."""
        return type(self).__name__

    def _convert_split(self, split: str, skipped: SkipCounts) -> tuple[list[Comparison], int]:
        comparisons: list[Comparison] = []
        seen: set[str] = set()
        rows_read = 0
        for rows_read, row in enumerate(self.load_rows(split), start=1):
            where = f"{split} row {rows_read - 1}"
            if isinstance(row, FileRow):  # rows from local files know their file and line
                where, row, result = row.location, row.data, Skip("malformed", row.error or "")
            if row is not None:
                try:
                    result = self.row_to_comparison(row)
                except ROW_ERRORS as error:
                    result = Skip("malformed", f"{type(error).__name__}: {error}")
            if isinstance(result, Comparison):
                result = check_comparison(result)
            if isinstance(result, Comparison):
                key = result.key()
                if key in seen:
                    result = Skip("duplicate", "same prompt, chosen and rejected as an earlier row")
                else:
                    seen.add(key)
            if isinstance(result, Skip):
                if result.reason == "malformed":
                    self.on_malformed(result, where)
                skipped.add(result, where)
            elif isinstance(result, Comparison):
                comparisons.append(result)
            else:
                raise TypeError(
                    f"{type(self).__name__}.row_to_comparison returned {type(result).__name__}; "
                    "expected a Comparison or a Skip"
                )
        return comparisons, rows_read


def _shuffle(comparisons: list[Comparison], seed: int, split: str) -> None:
    # A string seed (not hash()) so the order is the same in every process and Python version.
    random.Random(f"{seed}/{split}").shuffle(comparisons)
