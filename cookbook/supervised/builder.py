"""`SupervisedDatasetBuilder`: the chz class every supervised (SFT) data set subclasses.

The supervised twin of `cookbook.datasets.DPODatasetBuilder`. A builder holds configuration only.
Calling it (`builder()`) reads the raw rows, turns each into a `Conversation` or a named `Skip`,
removes duplicates (within and across splits), shuffles deterministically with `seed`, and returns the train and test
conversations together with the count of every row it did not use.

A subclass writes two methods and is decorated with `@chz.chz`:

- `load_rows(split)`: the raw rows of one source split ("train", "test", ...), any iterable;
- `row_to_example(row)`: one row to a `Conversation`, or `Skip("malformed", why)`, `Skip("filtered")`...

and may override `split_names()` when the source has its own test split. Without one, `test_size`
conversations are carved out of the shuffled train conversations, so the two never overlap.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import chz

from cookbook.datasets.builder import ROW_ERRORS, SkipCounts
from cookbook.datasets.comparison import Skip
from cookbook.datasets.files import FileRow
from cookbook.errors import UserError
from cookbook.supervised.example import Conversation, check_conversation


class NoUsableExamplesError(UserError, ValueError):
    """Every row of a split was skipped, or too few remain for the requested test split."""


@dataclass
class ExampleSplits:
    """What a builder returns: the conversations to train and test on, and what it left out."""

    train: list[Conversation]
    test: list[Conversation]
    rows_read: dict[str, int]  # per source split
    skipped: SkipCounts
    unused_examples: int = 0  # usable conversations left out by max_examples or test_size


@chz.chz
class SupervisedDatasetBuilder:
    """Base class of supervised data sets. Configure with fields, build with `builder()`."""

    test_size: int | None = chz.field(
        default=200,
        doc="held-out conversations: the first test_size of the source's shuffled test split (None = all "
        "of it), or carved out of the train conversations when the source has none (0 = no test set)",
    )
    seed: int = chz.field(default=0, doc="seed of the deterministic shuffle of both splits")
    max_examples: int | None = chz.field(
        default=None, doc="use at most this many training conversations (None = all)"
    )

    # -- what a subclass writes -------------------------------------------------------------------

    def split_names(self) -> tuple[str, str | None]:
        """(train split, test split or None). With None, the test examples are carved out of train."""
        return ("train", None)

    def load_rows(self, split: str) -> Iterable[Any]:
        """Raw rows of one source split. Rows read from local files may be `FileRow`s: the base class
        hands their `data` to `row_to_example` and uses their location in error messages."""
        raise NotImplementedError(f"{type(self).__name__} must define load_rows(split)")

    def row_to_example(self, row: Any) -> Conversation | Skip:
        raise NotImplementedError(f"{type(self).__name__} must define row_to_example(row)")

    def on_malformed(self, skip: Skip, where: str) -> None:
        """Called for each malformed row before it is counted; raise here to make it fatal."""

    def name(self) -> str:
        """How the summary names this data set."""
        return type(self).__name__

    # -- building ---------------------------------------------------------------------------------

    def __call__(self) -> ExampleSplits:
        """Read, convert, deduplicate, shuffle and split. Deterministic for a given `seed`."""
        return self.build_splits(self.load_rows, SkipCounts())

    def build_splits(self, load_rows: Callable[[str], Iterable[Any]], skipped: SkipCounts) -> ExampleSplits:
        """`__call__` with the rows coming from `load_rows` and earlier skips already in `skipped`
        (a builder that reads all its splits at once passes them in here)."""
        if self.test_size is not None and self.test_size < 0:
            raise ValueError(f"dataset.test_size must be >= 0 or None, got {self.test_size}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"dataset.max_examples must be >= 1 or None, got {self.max_examples}")
        train_split, test_split = self.split_names()
        rows_read: dict[str, int] = {}
        seen: set[str] = set()  # shared by both splits, so no test conversation is also trained on
        train, rows_read[train_split] = self._convert_split(train_split, load_rows(train_split), skipped, seen)
        _shuffle(train, self.seed, train_split)
        unused = 0
        if test_split is None:
            if self.test_size is None:
                raise ValueError(
                    f"{self.name()} has no test split of its own, so dataset.test_size=None (all of it) means "
                    "nothing; give the number of conversations to carve out of the training rows"
                )
            if self.test_size and len(train) <= self.test_size:
                raise NoUsableExamplesError(
                    f"{self.name()}: only {len(train)} usable conversations, so carving out dataset.test_size="
                    f"{self.test_size} leaves none to train on; lower dataset.test_size. "
                    f"Skipped rows: {skipped.describe()}"
                )
            test, train = train[: self.test_size], train[self.test_size :]
        else:
            test, rows_read[test_split] = self._convert_split(test_split, load_rows(test_split), skipped, seen)
            _shuffle(test, self.seed, test_split)
            if self.test_size is not None:
                unused = max(0, len(test) - self.test_size)
                test = test[: self.test_size]
        if not train:
            raise NoUsableExamplesError(
                f"{self.name()}: no usable training conversations in split {train_split!r} "
                f"({rows_read[train_split]} rows read). Skipped rows: {skipped.describe()}"
            )
        if self.max_examples is not None and len(train) > self.max_examples:
            unused += len(train) - self.max_examples
            train = train[: self.max_examples]
        return ExampleSplits(train, test, rows_read, skipped, unused)

    def _convert_split(
        self, split: str, rows: Iterable[Any], skipped: SkipCounts, seen: set[str]
    ) -> tuple[list[Conversation], int]:
        conversations: list[Conversation] = []
        rows_read = 0
        for rows_read, row in enumerate(rows, start=1):
            where = f"{split} row {rows_read - 1}"
            if isinstance(row, FileRow):  # rows from local files know their file and line
                where, row, result = row.location, row.data, Skip("malformed", row.error or "")
            if row is not None:
                try:
                    result = self.row_to_example(row)
                except ROW_ERRORS as error:
                    result = Skip("malformed", f"{type(error).__name__}: {error}")
            if isinstance(result, Conversation):
                result = check_conversation(result)
            if isinstance(result, Conversation):
                key = result.key()
                if key in seen:
                    result = Skip("duplicate", "same messages as an earlier row (of either split)")
                else:
                    seen.add(key)
            if isinstance(result, Skip):
                if result.reason == "malformed":
                    self.on_malformed(result, where)
                skipped.add(result, where)
            elif isinstance(result, Conversation):
                conversations.append(result)
            else:
                raise TypeError(
                    f"{type(self).__name__}.row_to_example returned {type(result).__name__}; "
                    "expected a Conversation or a Skip"
                )
        return conversations, rows_read


def _shuffle(conversations: list[Conversation], seed: int, split: str) -> None:
    # A string seed (not hash()) so the order is the same in every process and Python version.
    random.Random(f"{seed}/{split}").shuffle(conversations)
