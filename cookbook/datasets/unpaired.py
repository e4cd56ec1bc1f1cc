"""Unpaired feedback: one completion to a prompt, marked desirable or undesirable, the builders that
make them, and the `dataset=` family of the KTO recipe.

An `UnpairedExample` is (prompt messages, completion messages, desirable). A builder holds
configuration only; calling it reads the raw rows, turns each into an example or a named `Skip`,
removes duplicates (within and across splits), shuffles with `seed` and returns the train and test
examples with the count of every row it did not use (`SplitBuilder` does all of that). A subclass
writes `load_rows(split)` and `row_to_example(row)`, decorated with `@chz.chz`.

The forms of `dataset=`:

- `file` (or just `dataset=feedback.jsonl`): rows of `prompt`, `completion` and a boolean `label`
  (true: desirable), the shape of unpaired feedback elsewhere. `prompt` is a string (one user turn)
  or a message list; `completion` a string (one assistant reply) or assistant messages. A `label`
  that is not a boolean is always an error naming the file, the row and the field: a wrong label
  silently trained on teaches the opposite of the data;
- `unpaired:<preference data set>` (`unpaired:demo`, `unpaired:hhh`, `unpaired:prefs.jsonl`): every
  pair gives two examples, its chosen reply desirable and its rejected one undesirable;
- `module:Class`, a user's subclass of `UnpairedDatasetBuilder`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import chz

from cookbook.datasets.builder import (
    LocalFileRows,
    Skip,
    SkipCounts,
    SplitBuilder,
    builder_options,
    to_messages,
)
from cookbook.datasets.files import SUPPORTED_SUFFIXES
from cookbook.datasets.preference import PREFERENCE_DATASETS, Comparison, DemoBuilder, DPODatasetBuilder
from cookbook.errors import UserError
from cookbook.registry import Registry
from cookbook.renderers.base import ROLES, Message

UNPAIRED_PREFIX = "unpaired:"
LABEL_PROBLEM = "field 'label'"  # how a bad label's Skip detail starts (a file builder makes it fatal)


@dataclass(frozen=True)
class UnpairedExample:
    """One completion to `prompt`, and whether it is a desirable reply."""

    prompt: list[Message]
    completion: list[Message]
    desirable: bool

    def key(self) -> str:
        """A canonical text of the example, for finding exact duplicates."""
        return json.dumps([self.prompt, self.completion, self.desirable], sort_keys=True, ensure_ascii=False)


def check_example(example: UnpairedExample) -> UnpairedExample | Skip:
    """The example when usable; a `malformed` or `empty` Skip otherwise."""
    if not isinstance(example.desirable, bool):
        return Skip("malformed", f"{LABEL_PROBLEM} must be true or false, got {example.desirable!r}")
    for side in ("prompt", "completion"):
        messages = getattr(example, side)
        if not isinstance(messages, list) or not messages:
            return Skip("malformed", f"{side} must be a non-empty list of messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                return Skip("malformed", f"{side}[{index}] must be a message with a string 'content'")
            if message.get("role") not in ROLES:
                return Skip("malformed", f"{side}[{index}] has unknown role {message.get('role')!r}")
    if example.prompt[-1]["role"] == "assistant":
        return Skip("malformed", "prompt ends with an assistant message (nothing left to answer)")
    roles = {message["role"] for message in example.completion}
    if roles - {"assistant"}:
        return Skip("malformed", f"completion holds non-assistant messages ({', '.join(sorted(roles))})")
    if not any(message["content"].strip() for message in example.completion):
        return Skip("empty", "completion is empty")
    return example


def row_to_unpaired(row: dict[str, Any]) -> UnpairedExample | Skip:
    """A {prompt, completion, label} row to an example, or a malformed Skip naming the field."""
    for field in ("prompt", "completion", "label"):
        if field not in row:
            return Skip("malformed", f"missing field {field!r}")
    label = row["label"]
    if not isinstance(label, bool):
        return Skip("malformed", f"{LABEL_PROBLEM} must be a boolean (true or false), got {label!r}")
    try:
        prompt = to_messages(row["prompt"], "prompt", default_role="user")
        completion = to_messages(row["completion"], "completion", default_role="assistant")
    except ValueError as error:
        return Skip("malformed", str(error))
    if len(completion) > len(prompt) and completion[: len(prompt)] == prompt:
        completion = completion[len(prompt) :]  # a completion written as the whole conversation
    return UnpairedExample(prompt, completion, label)


class NoUsableFeedbackError(UserError, ValueError):
    """Every row of a split was skipped, or too few remain for the requested test split."""


class BadLabelError(UserError, ValueError):
    """A row of a local file whose `label` is not a boolean."""


@dataclass
class UnpairedSplits:
    """What a builder returns: the examples to train and test on, and what it left out."""

    train: list[UnpairedExample]
    test: list[UnpairedExample]
    rows_read: dict[str, int]  # per source split
    skipped: SkipCounts
    unused_examples: int = 0  # usable examples left out by max_examples or test_size


@chz.chz
class UnpairedDatasetBuilder(SplitBuilder[UnpairedExample]):
    """Base class of unpaired feedback data sets. Configure with fields, build with `builder()`."""

    item_type: ClassVar[type] = UnpairedExample
    item_noun: ClassVar[str] = "examples"
    converter_name: ClassVar[str] = "row_to_example"
    limit_field: ClassVar[str] = "max_examples"
    duplicate_detail: ClassVar[str] = "same prompt, completion and label as an earlier row (of either split)"
    no_usable_error: ClassVar[type[Exception]] = NoUsableFeedbackError
    # So no test example is also trained on (the two sides of a pair seen in both splits would be).
    dedupe_across_splits: ClassVar[bool] = True

    test_size: int | None = chz.field(
        default=200,
        doc="held-out examples: the first test_size of the source's shuffled test split (None = all of it), "
        "or carved out of the train examples when the source has none (0 = no test set)",
    )
    seed: int = chz.field(default=0, doc="seed of the deterministic shuffle of both splits")
    max_examples: int | None = chz.field(default=None, doc="use at most this many training examples (None = all)")

    def row_to_example(self, row: Any) -> UnpairedExample | Skip:
        raise NotImplementedError(f"{type(self).__name__} must define row_to_example(row)")

    def convert_row(self, row: Any) -> UnpairedExample | Skip:
        return self.row_to_example(row)

    def check_item(self, item: UnpairedExample) -> UnpairedExample | Skip:
        return check_example(item)

    def __call__(self, keep: Callable[[UnpairedExample], Any] | None = None) -> UnpairedSplits:
        """Read, convert, deduplicate, shuffle and split; deterministic for a given `seed`."""
        return self.build_splits(self.load_rows, SkipCounts(), keep)

    def build_splits(self, load_rows: Callable[[str], Iterable[Any]], skipped: SkipCounts,
                     keep: Callable[[UnpairedExample], Any] | None = None) -> UnpairedSplits:
        if self.test_size is not None and self.test_size < 0:
            raise ValueError(f"dataset.test_size must be >= 0 or None, got {self.test_size}")
        splits = self.split_rows(load_rows, skipped, self.max_examples, keep)
        return UnpairedSplits(splits.train, splits.test, splits.rows_read, splits.skipped, splits.unused)


@chz.chz
class UnpairedFileBuilder(LocalFileRows, UnpairedDatasetBuilder):
    """Examples from local files of {prompt, completion, label} rows (see the module docstring)."""

    path: str = chz.field(doc="JSONL, JSON or Parquet file of training rows: prompt, completion, label")
    test_path: str | None = chz.field(
        default=None, doc="file of test rows; without it, test_size examples are carved out of `path`"
    )
    skip_malformed: bool = chz.field(
        default=False, doc="count malformed rows as skips instead of failing on the first one (a bad label always fails)"
    )

    def row_to_example(self, row: dict[str, Any]) -> UnpairedExample | Skip:
        return row_to_unpaired(row)

    def on_malformed(self, skip: Skip, where: str) -> None:
        if skip.detail.startswith(LABEL_PROBLEM):
            raise BadLabelError(f"{where}: {skip.detail}")
        super().on_malformed(skip, where)


@chz.chz
class UnpairedFromPreference(UnpairedDatasetBuilder):
    """Both replies of every pair of a preference data set: chosen desirable, rejected undesirable."""

    preference: DPODatasetBuilder = chz.field(
        default_factory=DemoBuilder,
        meta_factory=PREFERENCE_DATASETS.meta_factory(),
        doc="the preference data set whose pairs are split into examples (a name, file or module:Class)",
    )
    test_size: int | None = chz.field(
        default=None,
        doc="held-out examples: None keeps both sides of all the preference builder's test pairs "
        "(its own test_size decides how many)",
    )

    def name(self) -> str:
        return f"{UNPAIRED_PREFIX}{self.preference.name()}"

    def split_names(self) -> tuple[str, str | None]:
        return ("train", "test")

    def row_to_example(self, row: tuple[Comparison, bool]) -> UnpairedExample:
        comparison, desirable = row
        return UnpairedExample(comparison.prompt, comparison.chosen if desirable else comparison.rejected, desirable)

    def source_fingerprint(self) -> str | None:
        inner = self.preference.source_fingerprint()
        return None if inner is None else hashlib.sha256(f"{inner}|{builder_options(self.preference)}".encode()).hexdigest()

    def __call__(self, keep: Callable[[UnpairedExample], Any] | None = None) -> UnpairedSplits:
        pairs = self.preference()  # built once (load_rows would build it per split)
        skipped = SkipCounts()
        skipped.merge(pairs.skipped)
        # One row per side of each pair: the two sides become two examples.
        rows = {split: [(pair, side) for pair in getattr(pairs, split) for side in (True, False)]
                for split in ("train", "test")}
        splits = self.build_splits(rows.__getitem__, skipped, keep)
        return dataclasses.replace(splits, rows_read=dict(pairs.rows_read),
                                   unused_examples=splits.unused_examples + 2 * pairs.unused_pairs)


UNPAIRED_DATASETS: Registry[UnpairedDatasetBuilder] = Registry(
    UnpairedDatasetBuilder, "dataset", "unpaired:demo", base_path="cookbook.datasets.UnpairedDatasetBuilder",
    unknown="Unknown unpaired dataset {spec!r}. Registered datasets: {names}; or " + UNPAIRED_PREFIX + "<preference "
            "dataset> (e.g. " + UNPAIRED_PREFIX + "demo), a .jsonl/.json/.parquet file of prompt, completion, label "
            "rows, or module:Class for your own builder.",
    file_builder="file", file_suffixes=SUPPORTED_SUFFIXES,
)
UNPAIRED_DATASETS.add_prefix(UNPAIRED_PREFIX, UnpairedFromPreference, "preference", PREFERENCE_DATASETS,
                             doc="the preference data set whose pairs are split into examples")
UNPAIRED_DATASETS.add({"unpaired": UnpairedFromPreference, "file": UnpairedFileBuilder})
