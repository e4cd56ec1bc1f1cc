"""Preference data: a `Comparison` of two completions to one prompt, the builders that make them,
and the `dataset=` family of the preference recipes.

Messages are plain `{"role": ..., "content": ...}` dicts (the renderer's `Message`); a completion is
a list of assistant messages, usually one. A builder holds configuration only; calling it
(`builder()`) reads the raw rows, turns each into a `Comparison` or a named `Skip`, removes
duplicates, shuffles deterministically with `seed`, and returns the train and test comparisons with
the count of every row it did not use. A subclass writes two methods and is decorated with
`@chz.chz` (chz requires it even when the subclass adds no fields):

- `load_rows(split)`: the raw rows of one source split ("train", "test", ...), any iterable;
- `row_to_comparison(row)`: one row to a `Comparison`, or `Skip("tie")`, `Skip("malformed", why)`...

and may override `split_names()` when the source has its own test split. Without one, `test_size`
pairs are carved out of the shuffled train pairs, so the two never overlap. `check_comparison` holds
the rules every builder shares, so a builder only parses its own schema.

Built in here: `dataset=demo` (the bundled pairs) and `dataset=file` (local files, or just
`dataset=prefs.jsonl`); the hub sets (`hhh`, `helpsteer3`, `ultrafeedback`) are in `hub.py`. A
user's builder is `dataset=my.module:MyBuilder`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import chz

from cookbook.datasets.builder import LocalFileRows, Skip, SkipCounts, SplitBuilder, to_messages
from cookbook.datasets.files import SUPPORTED_SUFFIXES, files_fingerprint, iter_rows
from cookbook.errors import UserError
from cookbook.registry import Registry
from cookbook.renderers.base import ROLES, Message


@dataclass(frozen=True)
class Comparison:
    """One preference pair: `chosen` is preferred over `rejected` as the reply to `prompt`; `margin`,
    when the data gives one, says by how much (a reward model can require that score gap)."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    margin: float | None = None

    def key(self) -> str:
        """A canonical text of the whole pair, for finding exact duplicates."""
        return json.dumps([self.prompt, self.chosen, self.rejected], sort_keys=True, ensure_ascii=False)


def check_comparison(comparison: Comparison) -> Comparison | Skip:
    """The comparison itself when usable; otherwise a Skip (malformed, empty or identical)."""
    problem = _structure_problem(comparison)
    if problem:
        return Skip("malformed", problem)
    for side in ("chosen", "rejected"):
        if not any(message["content"].strip() for message in getattr(comparison, side)):
            return Skip("empty", f"{side} completion is empty")
    if comparison.chosen == comparison.rejected:
        return Skip("identical", "chosen and rejected are the same")
    return comparison


def _structure_problem(comparison: Comparison) -> str | None:
    if not isinstance(comparison.prompt, list) or not comparison.prompt:
        return "prompt must be a non-empty list of messages"
    for side in ("prompt", "chosen", "rejected"):
        messages = getattr(comparison, side)
        if not isinstance(messages, list):
            return f"{side} must be a list of messages, got {type(messages).__name__}"
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                return f"{side}[{index}] must be a message with a string 'content'"
            if message.get("role") not in ROLES:
                return f"{side}[{index}] has unknown role {message.get('role')!r}"
    if comparison.prompt[-1]["role"] == "assistant":
        return "prompt ends with an assistant message (nothing left to answer)"
    for side in ("chosen", "rejected"):
        roles = {message["role"] for message in getattr(comparison, side)}
        if roles - {"assistant"}:
            return f"{side} completion holds non-assistant messages ({', '.join(sorted(roles))})"
    return None


def comparison_from_conversations(chosen: list[Message], rejected: list[Message]) -> Comparison | Skip:
    """Split two whole conversations into their shared prompt and the two completions.

    The prompt is the longest shared prefix that ends with a non-assistant message, so each
    completion starts at an assistant reply; what follows must be assistant messages only.
    """
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared > 0 and chosen[shared - 1]["role"] == "assistant":
        shared -= 1
    if shared == 0:
        return Skip("malformed", "chosen and rejected share no prompt (they differ from the first message)")
    return Comparison(prompt=chosen[:shared], chosen=chosen[shared:], rejected=rejected[shared:])


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

    def __call__(self, keep: Callable[[Comparison], Any] | None = None) -> ComparisonSplits:
        """Read, convert, deduplicate, shuffle and split. Deterministic for a given `seed`. With `keep`
        the splits hold what it returns for each comparison (see `SplitBuilder.split_rows`)."""
        if self.test_size < 0:
            raise ValueError(f"dataset.test_size must be >= 0, got {self.test_size}")
        splits = self.split_rows(self.load_rows, SkipCounts(), self.max_pairs, keep)
        return ComparisonSplits(splits.train, splits.test, splits.rows_read, splits.skipped, splits.unused)


def row_to_comparison(row: dict[str, Any]) -> Comparison | Skip:
    """One row in either layout (see the module docstring) to a Comparison or a malformed Skip; an
    optional numeric `margin` field is kept on the Comparison."""
    for field in ("chosen", "rejected"):
        if field not in row:
            return Skip("malformed", f"missing field {field!r}")
    margin = row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                               or not math.isfinite(margin)):
        return Skip("malformed", f"margin must be a finite number, got {margin!r}")
    try:
        if "prompt" not in row:
            chosen = to_messages(row["chosen"], "chosen")
            rejected = to_messages(row["rejected"], "rejected")
            split = comparison_from_conversations(chosen, rejected)
            return split if isinstance(split, Skip) or margin is None else replace(split, margin=float(margin))
        prompt = to_messages(row["prompt"], "prompt", default_role="user")
        chosen = _completion(to_messages(row["chosen"], "chosen", default_role="assistant"), prompt)
        rejected = _completion(to_messages(row["rejected"], "rejected", default_role="assistant"), prompt)
    except ValueError as error:
        return Skip("malformed", str(error))
    return Comparison(prompt=prompt, chosen=chosen, rejected=rejected,
                      margin=None if margin is None else float(margin))


def _completion(messages: list[Any], prompt: list[Any]) -> list[Any]:
    # A completion written as the whole conversation repeats the prompt first; keep only the reply.
    if len(messages) > len(prompt) and messages[: len(prompt)] == prompt:
        return messages[len(prompt) :]
    return messages


@chz.chz
class FileBuilder(LocalFileRows, DPODatasetBuilder):
    """Pairs from local files; see the module docstring for the accepted row layouts."""

    path: str = chz.field(doc="JSONL, JSON or Parquet file of training pairs")
    test_path: str | None = chz.field(
        default=None, doc="file of test pairs; without it, test_size pairs are carved out of `path`"
    )
    skip_malformed: bool = chz.field(
        default=False, doc="count malformed rows as skips instead of failing on the first one"
    )

    def row_to_comparison(self, row: dict[str, Any]) -> Comparison | Skip:
        return row_to_comparison(row)


DEMO_DATA_DIR = Path(__file__).resolve().parent / "data"


DEMO_FILES = {"train": DEMO_DATA_DIR / "demo_train.jsonl", "test": DEMO_DATA_DIR / "demo_test.jsonl"}


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
        return iter_rows(DEMO_FILES[split])

    def source_fingerprint(self) -> str | None:
        return files_fingerprint(DEMO_FILES["train"], DEMO_FILES["test"])

    def row_to_comparison(self, row: dict[str, Any]) -> Comparison | Skip:
        return row_to_comparison(row)


PREFERENCE_DATASETS: Registry[DPODatasetBuilder] = Registry(
    DPODatasetBuilder, "dataset", "demo", base_path="cookbook.datasets.DPODatasetBuilder",
    unknown="Unknown dataset {spec!r}. Registered datasets: {names}. For your own builder give module:Class "
            "(e.g. dataset=my_package.prefs:MyBuilder).",
    file_builder="file", file_suffixes=SUPPORTED_SUFFIXES,
)
PREFERENCE_DATASETS.add({"demo": DemoBuilder, "file": FileBuilder})
