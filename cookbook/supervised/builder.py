"""`SupervisedDatasetBuilder`: the chz class every supervised (SFT) data set subclasses.

The supervised twin of `cookbook.datasets.DPODatasetBuilder`. A builder holds configuration only.
Calling it (`builder()`) reads the raw rows, turns each into a `Conversation` or a named `Skip`,
removes duplicates (within and across splits), shuffles deterministically with `seed`, and returns the train and test
conversations together with the count of every row it did not use.

A subclass writes two methods and is decorated with `@chz.chz`:

- `load_rows(split)`: the raw rows of one source split ("train", "test", ...), any iterable;
- `row_to_example(row)`: one row to a `Conversation`, or `Skip("malformed", why)`, `Skip("filtered")`...

and may override `split_names()` when the source has its own test split. Without one, `test_size`
conversations are carved out of the shuffled train conversations, so the two never overlap. The
reading, skip counting, deduplication and shuffling are `cookbook.datasets.split_builder.SplitBuilder`'s,
shared with the preference builders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import chz

from cookbook.datasets.comparison import Skip
from cookbook.datasets.split_builder import SkipCounts, SplitBuilder
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
class SupervisedDatasetBuilder(SplitBuilder[Conversation]):
    """Base class of supervised data sets. Configure with fields, build with `builder()`."""

    item_type: ClassVar[type] = Conversation
    item_noun: ClassVar[str] = "conversations"
    converter_name: ClassVar[str] = "row_to_example"
    limit_field: ClassVar[str] = "max_examples"
    duplicate_detail: ClassVar[str] = "same messages as an earlier row (of either split)"
    no_usable_error: ClassVar[type[Exception]] = NoUsableExamplesError
    # So no test conversation is also trained on (the chosen replies of preference pairs that share
    # a prompt and chosen reply across splits would otherwise be).
    dedupe_across_splits: ClassVar[bool] = True

    test_size: int | None = chz.field(
        default=200,
        doc="held-out conversations: the first test_size of the source's shuffled test split (None = all "
        "of it), or carved out of the train conversations when the source has none (0 = no test set)",
    )
    seed: int = chz.field(default=0, doc="seed of the deterministic shuffle of both splits")
    max_examples: int | None = chz.field(
        default=None, doc="use at most this many training conversations (None = all)"
    )

    # -- what a subclass writes, with load_rows (and maybe split_names, on_malformed, name) --------

    def row_to_example(self, row: Any) -> Conversation | Skip:
        raise NotImplementedError(f"{type(self).__name__} must define row_to_example(row)")

    # -- building ---------------------------------------------------------------------------------

    def convert_row(self, row: Any) -> Conversation | Skip:
        return self.row_to_example(row)

    def check_item(self, item: Conversation) -> Conversation | Skip:
        return check_conversation(item)

    def __call__(self) -> ExampleSplits:
        """Read, convert, deduplicate, shuffle and split. Deterministic for a given `seed`."""
        return self.build_splits(self.load_rows, SkipCounts())

    def build_splits(self, load_rows: Callable[[str], Iterable[Any]], skipped: SkipCounts) -> ExampleSplits:
        """`__call__` with the rows coming from `load_rows` and earlier skips already in `skipped`
        (a builder that reads all its splits at once passes them in here)."""
        if self.test_size is not None and self.test_size < 0:
            raise ValueError(f"dataset.test_size must be >= 0 or None, got {self.test_size}")
        splits = self.split_rows(load_rows, skipped, self.max_examples)
        return ExampleSplits(splits.train, splits.test, splits.rows_read, splits.skipped, splits.unused)
