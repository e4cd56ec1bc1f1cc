"""What every data set builder shares, whatever it turns rows into: `SplitBuilder` and the `Skip`.

A builder (`DPODatasetBuilder` makes `Comparison`s, `SupervisedDatasetBuilder` `Conversation`s)
writes how one raw row becomes an item; everything around that one conversion lives here: reading
each split, counting every unusable row as a named `Skip` (with the first example of each reason
and where it was), checking and deduplicating what was made, a seeded shuffle that is the same in
every process, carving a test set out of train when the source has none, and `max_*` limits.
`LocalFileRows` is the part of a local-file builder that is not its row format, and `to_messages`
parses the message lists every schema holds.

The two builder bases keep their own chz fields (`test_size`, `seed`, `max_pairs` / `max_examples`,
whose types and docs differ) and their own result types; `SplitBuilder` holds methods only and reads
the class variables below for the words its checks and messages use.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar, get_args

from cookbook.datasets.files import FileRow, count_lines, files_fingerprint, iter_rows
from cookbook.errors import UserError
from cookbook.renderers.base import Message

SkipReason = Literal["tie", "malformed", "empty", "identical", "duplicate", "filtered", "too_long"]


SKIP_REASONS: tuple[str, ...] = get_args(SkipReason)


@dataclass(frozen=True)
class Skip:
    """A row that was read but not used, and why. `detail` is shown in the summary as an example."""

    reason: SkipReason
    detail: str = ""

    def __post_init__(self):
        if self.reason not in SKIP_REASONS:
            raise ValueError(f"Skip reason {self.reason!r} is not one of {', '.join(SKIP_REASONS)}")


def user(content: str) -> Message:
    return {"role": "user", "content": content}


def assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


def to_messages(value: Any, field: str, default_role: str | None = None) -> list[Message]:
    """A message list from a list of {role, content} dicts, or from a string when `default_role` is
    given; raises ValueError naming `field`. Extra keys in a message are dropped."""
    if isinstance(value, str) and default_role is not None:
        return [{"role": default_role, "content": value}]
    if not isinstance(value, list):
        kinds = "a string or a list of messages" if default_role else "a list of messages"
        raise ValueError(f"field {field!r} must be {kinds}, got {type(value).__name__}")
    messages: list[Message] = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"field {field!r}[{index}] must be an object with 'role' and 'content'")
        if not isinstance(message["content"], str) or not isinstance(message["role"], str):
            raise ValueError(f"field {field!r}[{index}]: 'role' and 'content' must be strings")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


# Exceptions a row parser may raise on a row whose schema is not what it expects; they become
# `malformed` skips (with the error as the example) instead of stopping a long load halfway.
ROW_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError)


ItemT = TypeVar("ItemT")


ResultT = TypeVar("ResultT")


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

    def keep(self, results: Iterable[ResultT | Skip], label: str) -> list[ResultT]:
        """The results that are not skips; a skip at position i is counted at f"{label} {i}"."""
        kept = []
        for index, result in enumerate(results):
            if isinstance(result, Skip):
                self.add(result, f"{label} {index}")
            else:
                kept.append(result)
        return kept

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
class Splits(Generic[ItemT]):
    """What `SplitBuilder.split_rows` makes; each subclass hands it on in its own result type."""

    train: list[ItemT]
    test: list[ItemT]
    rows_read: dict[str, int]  # per source split
    skipped: SkipCounts
    unused: int  # usable items left out by the max_* limit or test_size


class SplitBuilder(Generic[ItemT]):
    """Rows -> checked, deduplicated, shuffled train and test items. Subclassed by the chz builder
    bases, which declare the fields read here: `seed` (int) and `test_size` (int, or None for all of
    the source's own test split)."""

    # How a subclass names what it makes, in its checks and error messages.
    item_type: ClassVar[type]  # what `convert_row` returns when a row is usable
    item_noun: ClassVar[str]  # "pairs", "conversations"
    converter_name: ClassVar[str]  # the method a data set writes, as `convert_row` calls it
    limit_field: ClassVar[str]  # the config field of the training-set limit ("max_pairs")
    duplicate_detail: ClassVar[str]  # the example text of a `duplicate` skip
    no_usable_error: ClassVar[type[Exception]]
    # True: a test item equal to a train item is a duplicate (so nothing is both trained and tested on);
    # False: each split is deduplicated on its own.
    dedupe_across_splits: ClassVar[bool]

    # -- what a data set writes -------------------------------------------------------------------

    def split_names(self) -> tuple[str, str | None]:
        """(train split, test split or None). With None, the test items are carved out of train."""
        return ("train", None)

    def load_rows(self, split: str) -> Iterable[Any]:
        """Raw rows of one source split. Rows read from local files may be `FileRow`s: the base class
        hands their `data` to the row converter and uses their location in error messages."""
        raise NotImplementedError(f"{type(self).__name__} must define load_rows(split)")

    def on_malformed(self, skip: Skip, where: str) -> None:
        """Called for each malformed row before it is counted; raise here to make it fatal."""

    def name(self) -> str:
        """How the summary names this data set."""
        return type(self).__name__

    def source_fingerprint(self) -> str | None:
        """A digest of the raw rows this builder reads (its files' bytes, the hub split's fingerprint),
        so the tokenized set can be cached under it; None (the default) when unknown: such a data set
        is tokenized again on every run."""
        return None

    def row_count(self, split: str) -> int | None:
        """How many rows `load_rows(split)` will give, when that is cheap to know (a progress bar's total)."""
        return None

    # -- what the builder base of each kind writes --------------------------------------------------

    def convert_row(self, row: Any) -> ItemT | Skip:
        """One row to an item or a Skip: the subclass's `converter_name` method."""
        raise NotImplementedError

    def check_item(self, item: ItemT) -> ItemT | Skip:
        """The item, or a Skip when it cannot be trained on."""
        raise NotImplementedError

    # -- building -----------------------------------------------------------------------------------

    def split_rows(
        self, load_rows: Callable[[str], Iterable[Any]], skipped: SkipCounts, max_items: int | None,
        keep: Callable[[ItemT], Any] | None = None,
    ) -> Splits[ItemT]:
        """Read, convert, deduplicate, shuffle and split the rows `load_rows` gives, counting skips
        into `skipped`; at most `max_items` training items. Deterministic for a given `seed`.

        `keep(item)` turns each usable item into what the splits hold (default: the item itself): a
        loader that tokenizes as it reads keeps only an index, so a large data set never sits in
        memory as Python objects."""
        if max_items is not None and max_items < 1:
            raise ValueError(f"dataset.{self.limit_field} must be >= 1 or None, got {max_items}")
        train_split, test_split = self.split_names()
        rows_read: dict[str, int] = {}
        seen: set[bytes] = set()
        keep = keep or (lambda item: item)
        train, rows_read[train_split] = self._convert_split(train_split, load_rows(train_split), skipped, seen, keep)
        shuffle_split(train, self.seed, train_split)
        unused = 0
        if test_split is None:
            test, train = self._carve_test(train, skipped)
        else:
            if not self.dedupe_across_splits:
                seen = set()
            test, rows_read[test_split] = self._convert_split(test_split, load_rows(test_split), skipped, seen, keep)
            shuffle_split(test, self.seed, test_split)
            if self.test_size is not None:
                unused = max(0, len(test) - self.test_size)
                test = test[: self.test_size]
        if not train:
            raise self.no_usable_error(
                f"{self.name()}: no usable training {self.item_noun} in split {train_split!r} "
                f"({rows_read[train_split]} rows read). Skipped rows: {skipped.describe()}"
            )
        if max_items is not None and len(train) > max_items:
            unused += len(train) - max_items
            train = train[:max_items]
        return Splits(train, test, rows_read, skipped, unused)

    def _carve_test(self, train: list[ItemT], skipped: SkipCounts) -> tuple[list[ItemT], list[ItemT]]:
        """(test, train): the first test_size of the shuffled train items held out."""
        if self.test_size is None:
            raise ValueError(
                f"{self.name()} has no test split of its own, so dataset.test_size=None (all of it) means "
                f"nothing; give the number of {self.item_noun} to carve out of the training rows"
            )
        # With no usable item at all, the "no usable training items" error below says more.
        if self.test_size and 0 < len(train) <= self.test_size:
            raise self.no_usable_error(
                f"{self.name()}: only {len(train)} usable {self.item_noun}, so carving out dataset.test_size="
                f"{self.test_size} test {self.item_noun} leaves none to train on; lower dataset.test_size. "
                f"Skipped rows: {skipped.describe()}"
            )
        return train[: self.test_size], train[self.test_size :]

    def _convert_split(
        self, split: str, rows: Iterable[Any], skipped: SkipCounts, seen: set[bytes], keep: Callable[[ItemT], Any]
    ) -> tuple[list[Any], int]:
        items: list[ItemT] = []
        rows_read = 0
        for rows_read, row in enumerate(rows, start=1):
            where = f"{split} row {rows_read - 1}"
            if isinstance(row, FileRow):  # rows from local files know their file and line
                where, row, result = row.location, row.data, Skip("malformed", row.error or "")
            if row is not None:
                try:
                    result = self.convert_row(row)
                except ROW_ERRORS as error:
                    result = Skip("malformed", f"{type(error).__name__}: {error}")
            if isinstance(result, self.item_type):
                result = self.check_item(result)
            if isinstance(result, self.item_type):
                # A 16-byte digest of the item stands for it: a million keys fit in memory.
                key = hashlib.blake2b(result.key().encode("utf-8"), digest_size=16).digest()
                if key in seen:
                    result = Skip("duplicate", self.duplicate_detail)
                else:
                    seen.add(key)
            if isinstance(result, Skip):
                if result.reason == "malformed":
                    self.on_malformed(result, where)
                skipped.add(result, where)
            elif isinstance(result, self.item_type):
                items.append(keep(result))
            else:
                raise TypeError(
                    f"{type(self).__name__}.{self.converter_name} returned {type(result).__name__}; "
                    f"expected a {self.item_type.__name__} or a Skip"
                )
        return items, rows_read


def builder_options(builder: Any) -> str:
    """A builder's class and every field, nested builders included, as one canonical string."""
    import chz

    def describe(value: Any) -> Any:
        if chz.is_chz(value):
            fields = {name: describe(getattr(value, name)) for name in chz.chz_fields(value)}
            return {"class": f"{type(value).__module__}:{type(value).__qualname__}", **fields}
        return value

    return json.dumps(describe(builder), sort_keys=True, default=str)


def shuffle_split(items: list[Any], seed: int, split: str) -> None:
    # A string seed (not hash()) so the order is the same in every process and Python version.
    random.Random(f"{seed}/{split}").shuffle(items)


class MalformedRowError(UserError, ValueError):
    """A row of a local preference file that does not follow either layout."""


class LocalFileRows:
    """What a builder of local files does besides converting a row: read `path` (and `test_path`),
    name itself by its file and stop on a malformed row unless `skip_malformed`. Shared by
    `FileBuilder` and `cookbook.supervised.SupervisedFileBuilder`, which declare those three fields
    with their own docs."""

    def name(self) -> str:
        return self.path

    def split_names(self) -> tuple[str, str | None]:
        return ("train", "test" if self.test_path is not None else None)

    def load_rows(self, split: str) -> Iterable[Any]:
        return iter_rows(self.test_path if split == "test" else self.path)

    def source_fingerprint(self) -> str | None:
        return files_fingerprint(self.path, self.test_path)

    def row_count(self, split: str) -> int | None:
        return count_lines(self.test_path if split == "test" else self.path)

    def on_malformed(self, skip: Skip, where: str) -> None:
        if not self.skip_malformed:
            raise MalformedRowError(
                f"{where}: {skip.detail} (pass dataset.skip_malformed=true to skip such rows)"
            )
