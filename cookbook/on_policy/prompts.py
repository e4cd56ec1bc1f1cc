"""The prompts the on-policy recipe samples on: `PromptItem`, the `PromptSource`s that make them, and
the `prompts=` family.

A prompt carries its conversation and, when it has verifiable instructions, the IFEval fields the
`ifeval` reward checks the replies against. Messages are plain `{"role", "content"}` dicts (the
renderer's `Message`), kept in a tuple so an item reads as a value that nothing downstream edits.

Like a dataset builder, a source holds configuration only; calling it (`source()`) gives a
`PromptList`: the items, in the source's deterministic order, plus what was read and what was left
out (`describe()`). A subclass writes two methods and is decorated with `@chz.chz`:

- `load_rows()`: `(where, raw row)` pairs, `where` naming the row in messages ("prompts.jsonl:3");
- `row_to_item(row, where)`: one row to a `PromptItem`, or a named `Skip("empty", ...)`.

The base class does what every source shares: it checks each item's messages, drops repeated
prompts as counted `duplicate` skips (never silently), refuses two different prompts with one key
(keys name prompts in samples.jsonl), applies a `max_prompts` field, and fails with the counts when
no prompt is left.

The forms of `prompts=`:

- `ifeval_synthetic` (the default; `ifeval_synthetic.py`): made-up prompts with IFEval instructions;
- `file prompts.path=...`, or just `prompts=prompts.jsonl`: one prompt per line, as a string (one user
  turn), a list of messages ending with a user turn, or an object with `prompt` (a string or a
  message list) or `messages`, and optionally `key` (the prompt's id in samples.jsonl; default
  `<file stem>-<line>`) and the IFEval fields `instruction_id_list` and `kwargs` (the bundled IFEval
  evaluation file, `cookbook/eval/data/ifeval_prompts.jsonl`, is in this form). A line with the
  wrong types stops the load naming the file and line; an empty or repeated prompt is a counted skip;
- `prompts:<preference data set>` (`prompts:demo`, `prompts:hhh`, `prompts:prefs.jsonl`): the distinct
  prompts of one split of any preference builder, its replies left aside (its train split by
  default, so the pairs it holds out stay prompts the policy never trained on). `prompts.dataset.
  local_path=...` then sets fields of that builder; keys are `<dataset>-<hash of the messages>`, so
  a prompt keeps its key whatever the order or seed;
- `module:MySource`: a user's subclass of `PromptSource`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import chz

from cookbook.datasets.builder import Skip, SkipCounts, to_messages
from cookbook.datasets.files import read_rows
from cookbook.datasets.preference import (
    PREFERENCE_DATASETS,
    Comparison,
    ComparisonSplits,
    DemoBuilder,
    DPODatasetBuilder,
)
from cookbook.errors import UserError
from cookbook.eval.ifeval import ifeval_row
from cookbook.registry import Registry
from cookbook.renderers.base import ROLES, Message

PREFERENCE_PREFIX = "prompts:"


@dataclass(frozen=True)
class PromptItem:
    """A conversation to reply to, ending with a user turn."""

    key: str  # stable id: names the prompt in samples.jsonl and in error messages
    messages: tuple[Message, ...]
    # {"instruction_id_list": [...], "kwargs": [...], "prompt": <text>} when the prompt carries IFEval
    # instructions: the row `cookbook.eval.ifeval.score_response` takes.
    ifeval: dict[str, Any] | None = None


def message_problem(messages: Any) -> str | None:
    """Why `messages` cannot be replied to (None when it can): a non-empty list of messages with a
    known role and string content, ending with a user turn."""
    if not isinstance(messages, (list, tuple)) or not messages:
        return "the prompt must be a non-empty list of messages"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return f"message {index} must be an object with a string 'content'"
        if message.get("role") not in ROLES:
            return f"message {index} has unknown role {message.get('role')!r} (expected one of {', '.join(ROLES)})"
    if messages[-1]["role"] != "user":
        return f"the last message must be a user turn to reply to, not {messages[-1]['role']!r}"
    return None


class PromptList(list[PromptItem]):
    """The prompts of a source, in order, with what was read and what was left out (and why), so a
    recipe can report it: `prompts.describe()`."""

    def __init__(self, items: Iterable[PromptItem], source: str, rows_read: int,
                 skipped: SkipCounts | None = None, unused: int = 0) -> None:
        super().__init__(items)
        self.source = source
        self.rows_read = rows_read
        self.skipped = skipped if skipped is not None else SkipCounts()
        self.unused = unused  # usable prompts left out by max_prompts

    def describe(self) -> str:
        """One line: "prompts from demo: 120 of 1,200 rows; skipped: duplicate=1080 (e.g. ...)"."""
        text = f"{len(self):,} prompts from {self.source} ({self.rows_read:,} rows read)"
        if self.unused:
            text += f"; {self.unused:,} more left out by max_prompts"
        if self.skipped.total():
            text += f"; skipped: {self.skipped.describe()}"
        return text


class PromptError(UserError, ValueError):
    """A prompt row that cannot be used (bad messages, a key used twice); the message names the row."""


class NoPromptsError(UserError, ValueError):
    """A prompt source that gave no usable prompt."""


@chz.chz
class PromptSource:
    """Base class of prompt sources. Configure with fields, build with `source()`."""

    def name(self) -> str:
        """How messages and summaries name this source."""
        return type(self).__name__

    def load_rows(self) -> Iterable[tuple[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} must define load_rows()")

    def row_to_item(self, row: Any, where: str) -> PromptItem | Skip:
        raise NotImplementedError(f"{type(self).__name__} must define row_to_item(row, where)")

    def prompt_limit(self) -> int | None:
        """Keep at most this many prompts (None: all): the `max_prompts` field of a source that has one."""
        return getattr(self, "max_prompts", None)

    def __call__(self) -> PromptList:
        """The prompts, in the source's (deterministic) order, with the counts of what was left out."""
        return self.build_prompts(self.load_rows())

    def build_prompts(self, rows: Iterable[tuple[str, Any]]) -> PromptList:
        """`rows` converted, checked and deduplicated (what `__call__` does with `load_rows()`)."""
        skipped = SkipCounts()
        items: list[PromptItem] = []
        where_by_content: dict[str, str] = {}
        where_by_key: dict[str, str] = {}
        rows_read = 0
        for where, row in rows:
            rows_read += 1
            item = self.row_to_item(row, where)
            if isinstance(item, Skip):
                skipped.add(item, where)
                continue
            check_item(item, where)
            content = json.dumps([item.messages, item.ifeval], sort_keys=True, ensure_ascii=False)
            if content in where_by_content:
                skipped.add(Skip("duplicate", f"same prompt as {where_by_content[content]}"), where)
                continue
            if item.key in where_by_key:
                raise PromptError(f"{where}: key {item.key!r} is already used by {where_by_key[item.key]} "
                                  "for a different prompt; keys must be unique")
            where_by_content[content] = where_by_key[item.key] = where
            items.append(item)
        if not items:
            raise NoPromptsError(f"prompts={self.name()}: no usable prompts ({rows_read:,} rows read; "
                                 f"skipped: {skipped.describe()})")
        limit = self.prompt_limit()
        if limit is not None and limit < 1:
            raise NoPromptsError(f"prompts.max_prompts must be >= 1 (or None for all), got {limit}")
        kept = items if limit is None else items[:limit]
        return PromptList(kept, self.name(), rows_read, skipped, unused=len(items) - len(kept))


def check_item(item: PromptItem, where: str) -> None:
    """Raise PromptError naming `where` when the item is not a usable prompt."""
    if not isinstance(item, PromptItem):
        raise TypeError(f"{where}: row_to_item must return a PromptItem or a Skip, got {type(item).__name__}")
    if not isinstance(item.key, str) or not item.key:
        raise PromptError(f"{where}: the prompt's key must be a non-empty string, got {item.key!r}")
    problem = message_problem(item.messages)
    if problem:
        raise PromptError(f"{where}: {problem}")


IFEVAL_FIELDS = ("instruction_id_list", "kwargs")


class PromptFileError(PromptError):
    """A prompt file, or one of its lines, that cannot be read; the message names the file (and line)."""


@chz.chz
class FilePrompts(PromptSource):
    """Prompts from a JSONL file (see the module docstring for the line forms)."""

    path: str = chz.field(doc="JSONL file: one prompt per line (a string, a message list, or an object)")
    max_prompts: int | None = chz.field(default=None, doc="use at most the first N prompts (None = all)")

    def name(self) -> str:
        return self.path

    def load_rows(self) -> Iterator[tuple[str, Any]]:
        for row in read_rows(self.path, objects_only=False, noun="prompts (one JSON value per line)"):
            if row.error is not None:
                raise PromptFileError(f"{row.location}: {row.error}")
            yield row.location, row.data

    def row_to_item(self, row: Any, where: str) -> PromptItem | Skip:
        line = where.rsplit(":", 1)[-1]
        return row_to_prompt(row, where, default_key=f"{Path(self.path).stem}-{line}")


def row_to_prompt(row: Any, where: str, default_key: str) -> PromptItem | Skip:
    """One line's value (any form of the module docstring) as a PromptItem; PromptFileError naming
    `where` when its types are wrong, Skip("empty") when it has no text."""
    try:
        if isinstance(row, dict):
            return _object_to_prompt(row, where, default_key)
        if isinstance(row, (str, list)):
            messages = to_messages(row, "prompt", default_role="user")
            return _item(default_key, messages, None)
    except ValueError as error:
        message = str(error)
        raise PromptFileError(message if message.startswith(where) else f"{where}: {message}") from None
    raise PromptFileError(f"{where}: expected a string, a list of messages or an object with 'prompt' or "
                          f"'messages', got {type(row).__name__}")


def _object_to_prompt(row: dict[str, Any], where: str, default_key: str) -> PromptItem | Skip:
    if ("prompt" in row) == ("messages" in row):
        raise ValueError("an object needs exactly one of 'prompt' (a string or message list) or 'messages'")
    if "prompt" in row:
        messages = to_messages(row["prompt"], "prompt", default_role="user")
    else:
        messages = to_messages(row["messages"], "messages")
    key = row.get("key", default_key)
    if isinstance(key, bool) or not isinstance(key, (str, int)) or str(key) == "":
        raise ValueError(f"field 'key' must be a non-empty string or an integer, got {key!r}")
    present = [name for name in IFEVAL_FIELDS if name in row]
    if len(present) == 1:
        missing = next(name for name in IFEVAL_FIELDS if name not in row)
        raise ValueError(f"field {present[0]!r} needs {missing!r} beside it (the IFEval fields go together)")
    ifeval = None
    if present and messages and messages[-1]["content"].strip():
        ifeval = ifeval_row(row["instruction_id_list"], row["kwargs"], messages[-1]["content"], where)
    return _item(str(key), messages, ifeval)


def _item(key: str, messages: list, ifeval: dict[str, Any] | None) -> PromptItem | Skip:
    if not any(message["content"].strip() for message in messages):
        return Skip("empty", "the prompt has no text")
    return PromptItem(key=key, messages=tuple(messages), ifeval=ifeval)


@chz.chz
class PreferencePrompts(PromptSource):
    """The distinct prompts of one split of a preference data set."""

    dataset: DPODatasetBuilder = chz.field(
        default_factory=DemoBuilder,
        meta_factory=PREFERENCE_DATASETS.meta_factory(),
        doc="the preference data set whose prompts are sampled on (a name, file or module:Class)",
    )
    split: Literal["train", "test"] = chz.field(default="train", doc="which of its splits gives the prompts")
    max_prompts: int | None = chz.field(default=None, doc="use at most the first N distinct prompts (None = all)")

    def name(self) -> str:
        return f"{PREFERENCE_PREFIX}{self.dataset.name()}"

    def load_rows(self) -> Iterator[tuple[str, Any]]:
        return self._rows(self.dataset())

    def row_to_item(self, row: Any, where: str) -> PromptItem | Skip:
        text = json.dumps(row, sort_keys=True, ensure_ascii=False)
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]
        label = Path(self.dataset.name()).name  # "demo", "hh-rlhf", "prefs.jsonl"
        return PromptItem(key=f"{label}-{digest}", messages=tuple(row))

    def __call__(self) -> PromptList:
        splits = self.dataset()
        prompts = self.build_prompts(self._rows(splits))
        # Report the preference builder's own skips (ties, malformed rows...) with the prompts'.
        skipped = SkipCounts()
        skipped.merge(splits.skipped)
        skipped.merge(prompts.skipped)
        prompts.skipped = skipped
        return prompts

    def _rows(self, splits: ComparisonSplits) -> Iterator[tuple[str, Any]]:
        comparisons: list[Comparison] = getattr(splits, self.split)
        for index, comparison in enumerate(comparisons):
            yield f"{self.dataset.name()} {self.split} pair {index}", comparison.prompt


PROMPT_SOURCES: Registry[PromptSource] = Registry(
    PromptSource, "prompts", "ifeval_synthetic", base_path="cookbook.on_policy.PromptSource",
    unknown="Unknown prompts {spec!r}. Registered prompt sources: {names}; or " + PREFERENCE_PREFIX + "<preference "
            "dataset> (e.g. " + PREFERENCE_PREFIX + "demo), a .jsonl file, or module:Class for your own PromptSource "
            "subclass.",
    file_builder="file", file_suffixes=(".jsonl",),
)
PROMPT_SOURCES.add_prefix(PREFERENCE_PREFIX, PreferencePrompts, "dataset", PREFERENCE_DATASETS,
                          doc="the preference data set whose prompts are sampled on")
PROMPT_SOURCES.add({"file": FilePrompts, "preference": PreferencePrompts})
