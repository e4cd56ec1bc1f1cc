"""`PromptItem`: one prompt the on-policy recipe samples replies to, and `PromptList`, what a prompt
source returns: the items plus the count of every row it did not use.

A prompt carries its conversation and, when it has verifiable instructions, the IFEval fields the
`ifeval` reward checks the replies against. Messages are plain `{"role", "content"}` dicts (the
renderer's `Message`), kept in a tuple so an item reads as a value that nothing downstream edits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cookbook.datasets.split_builder import SkipCounts
from cookbook.renderers.base import ROLES, Message


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
