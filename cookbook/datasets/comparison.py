"""The unit every dataset builder produces: a `Comparison` of two completions to one prompt, or a
named `Skip` saying why a raw row could not become one.

Messages are plain `{"role": ..., "content": ...}` dicts (the renderer's `Message`). A completion is a
list of assistant messages, usually one. `check_comparison` holds the rules every builder shares, so
a builder only has to parse its own schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

from cookbook.renderers.base import ROLES, Message

SkipReason = Literal["tie", "malformed", "empty", "identical", "duplicate", "filtered", "too_long"]
SKIP_REASONS: tuple[str, ...] = get_args(SkipReason)


@dataclass(frozen=True)
class Comparison:
    """One preference pair: `chosen` is preferred over `rejected` as the reply to `prompt`."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]

    def key(self) -> str:
        """A canonical text of the whole pair, for finding exact duplicates."""
        return json.dumps([self.prompt, self.chosen, self.rejected], sort_keys=True, ensure_ascii=False)


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
