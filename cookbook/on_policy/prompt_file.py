"""`prompts=file prompts.path=...` (or just `prompts=prompts.jsonl`): prompts from a local JSONL file.

Each line is one prompt, in any of these forms (a file may mix them):

- a string: one user turn, `"Write a haiku about rust."`;
- a list of messages: `[{"role": "system", ...}, {"role": "user", ...}]`, ending with a user turn;
- an object with `prompt` (a string or a message list) or `messages` (a message list), and optionally
  `key` (the prompt's id in samples.jsonl; default `<file stem>-<line>`) and the IFEval fields
  `instruction_id_list` and `kwargs`, so that `reward=ifeval` can check the replies. The IFEval
  evaluation files (`cookbook/eval/data/ifeval_prompts.jsonl`) are in this form.

A line that is not valid JSON or has the wrong types stops the load with an error naming the file
and line. An empty prompt and a repeated one are counted skips, reported with the prompts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chz

from cookbook.datasets.comparison import Skip, to_messages
from cookbook.datasets.files import DataFileNotFoundError
from cookbook.on_policy.ifeval_fields import ifeval_row
from cookbook.on_policy.prompt import PromptItem
from cookbook.on_policy.prompt_registry import register_prompt_source
from cookbook.on_policy.prompt_source import PromptError, PromptSource

IFEVAL_FIELDS = ("instruction_id_list", "kwargs")


class PromptFileError(PromptError):
    """A prompt file, or one of its lines, that cannot be read; the message names the file (and line)."""


@register_prompt_source("file")
@chz.chz
class FilePrompts(PromptSource):
    """Prompts from a JSONL file (see the module docstring for the line forms)."""

    path: str = chz.field(doc="JSONL file: one prompt per line (a string, a message list, or an object)")
    max_prompts: int | None = chz.field(default=None, doc="use at most the first N prompts (None = all)")

    def name(self) -> str:
        return self.path

    def load_rows(self) -> Iterator[tuple[str, Any]]:
        yield from read_json_lines(Path(self.path).expanduser())

    def row_to_item(self, row: Any, where: str) -> PromptItem | Skip:
        line = where.rsplit(":", 1)[-1]
        return row_to_prompt(row, where, default_key=f"{Path(self.path).stem}-{line}")


def read_json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """("path:line", parsed JSON) for each non-blank line; PromptFileError naming the line otherwise."""
    if not path.exists():
        raise DataFileNotFoundError(f"prompt file {str(path)!r} does not exist")
    if path.is_dir():
        raise PromptFileError(f"{path} is a directory; give a .jsonl file of prompts")
    lines = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM some editors write
            except UnicodeDecodeError as error:
                raise PromptFileError(f"{where}: not valid UTF-8 (byte {error.start + 1} of the line); "
                                      "save the file as UTF-8") from None
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise PromptFileError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
            lines += 1
            yield where, value
    if not lines:
        raise PromptFileError(f"{path} is empty: it holds no prompts (one JSON value per line)")


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
