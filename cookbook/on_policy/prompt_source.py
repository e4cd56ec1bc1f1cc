"""`PromptSource`: the chz class every prompt source of the on-policy recipe subclasses.

Like a dataset builder, a source holds configuration only; calling it (`source()`) makes the
prompts. A subclass writes two methods and is decorated with `@chz.chz`:

- `load_rows()`: `(where, raw row)` pairs, `where` naming the row in messages ("prompts.jsonl:3");
- `row_to_item(row, where)`: one row to a `PromptItem`, or a named `Skip("empty", ...)`.

The base class does what every source shares: it checks each item's messages, drops repeated
prompts as counted `duplicate` skips (never silently), refuses two different prompts with one key
(keys name prompts in samples.jsonl), applies a `max_prompts` field, and fails with the counts when no
prompt is left.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import chz

from cookbook.datasets.comparison import Skip
from cookbook.datasets.split_builder import SkipCounts
from cookbook.errors import UserError
from cookbook.on_policy.prompt import PromptItem, PromptList, message_problem


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
