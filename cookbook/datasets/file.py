"""`dataset=file path=...`: preference pairs from a local JSONL, JSON or Parquet file.

Two row layouts are accepted (a file may mix them):

- explicit prompt: `{"prompt": ..., "chosen": ..., "rejected": ...}` where `prompt` is a string (one
  user turn) or a message list, and `chosen`/`rejected` are strings (one assistant reply) or message
  lists (either just the reply, or the whole conversation starting with the prompt);
- implicit prompt: `{"chosen": [...], "rejected": [...]}`, two whole conversations that share the
  prompt and differ from the final assistant reply(s) on.

A malformed row stops the load with an error naming the file, line and field, before any pair is
returned; with `skip_malformed=true` it is counted as a `malformed` skip instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import chz

from cookbook.datasets.builder import DPODatasetBuilder
from cookbook.datasets.comparison import Comparison, Skip, comparison_from_conversations, to_messages
from cookbook.datasets.files import read_rows
from cookbook.datasets.registry import register_builder
from cookbook.errors import UserError


class MalformedRowError(UserError, ValueError):
    """A row of a local preference file that does not follow either layout."""


def row_to_comparison(row: dict[str, Any]) -> Comparison | Skip:
    """One row in either layout (see the module docstring) to a Comparison or a malformed Skip."""
    for field in ("chosen", "rejected"):
        if field not in row:
            return Skip("malformed", f"missing field {field!r}")
    try:
        if "prompt" not in row:
            chosen = to_messages(row["chosen"], "chosen")
            rejected = to_messages(row["rejected"], "rejected")
            return comparison_from_conversations(chosen, rejected)
        prompt = to_messages(row["prompt"], "prompt", default_role="user")
        chosen = _completion(to_messages(row["chosen"], "chosen", default_role="assistant"), prompt)
        rejected = _completion(to_messages(row["rejected"], "rejected", default_role="assistant"), prompt)
    except ValueError as error:
        return Skip("malformed", str(error))
    return Comparison(prompt=prompt, chosen=chosen, rejected=rejected)


def _completion(messages: list[Any], prompt: list[Any]) -> list[Any]:
    # A completion written as the whole conversation repeats the prompt first; keep only the reply.
    if len(messages) > len(prompt) and messages[: len(prompt)] == prompt:
        return messages[len(prompt) :]
    return messages


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
        return read_rows(self.test_path if split == "test" else self.path)

    def on_malformed(self, skip: Skip, where: str) -> None:
        if not self.skip_malformed:
            raise MalformedRowError(
                f"{where}: {skip.detail} (pass dataset.skip_malformed=true to skip such rows)"
            )


@register_builder("file")
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
