"""The unit every supervised builder produces: a `Conversation` to train on, or a named `Skip`.

A conversation is a list of `{"role": ..., "content": ...}` messages (the renderer's `Message`)
with at least one assistant reply. Which replies carry loss (`train_on=last_assistant` or
`all_assistant`) is decided at tokenization, not here, so one builder serves both.
`check_conversation` holds the rules every builder shares, so a builder only parses its schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cookbook.datasets.comparison import Skip, to_messages
from cookbook.renderers.base import ROLES, Message


@dataclass(frozen=True)
class Conversation:
    """Messages to train on; the assistant replies are the targets."""

    messages: list[Message]

    def key(self) -> str:
        """A canonical text of the conversation, for finding exact duplicates."""
        return json.dumps(self.messages, sort_keys=True, ensure_ascii=False)


def check_conversation(conversation: Conversation) -> Conversation | Skip:
    """The conversation, trimmed of trailing non-assistant turns, when usable; otherwise a Skip.

    Turns after the last assistant reply carry no loss and, under causal attention, change no
    trained token's prediction, so they would only cost compute: they are dropped, not skipped.
    """
    messages = conversation.messages
    if not isinstance(messages, list) or not messages:
        return Skip("malformed", "messages must be a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return Skip("malformed", f"messages[{index}] must be a message with a string 'content'")
        if message.get("role") not in ROLES:
            return Skip("malformed", f"messages[{index}] has unknown role {message.get('role')!r}")
    last_reply = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last_reply is None:
        return Skip("malformed", "no assistant message to train on")
    if not messages[last_reply]["content"].strip():
        return Skip("empty", "the last assistant reply is empty")
    if last_reply == len(messages) - 1:
        return conversation
    return Conversation(messages[: last_reply + 1])


def conversation_from_messages(value: Any) -> Conversation:
    """A `{"messages": [...]}` row's message list (TRL's conversational format); raises ValueError."""
    return Conversation(to_messages(value, "messages"))


def conversation_from_prompt_completion(prompt: Any, completion: Any) -> Conversation:
    """A prompt/completion row: `prompt` a string (one user turn) or messages, `completion` a string
    (one assistant reply) or messages that start with an assistant reply. A completion written as the
    whole conversation (repeating the prompt first) is accepted. Raises ValueError naming the field."""
    prompt_messages = to_messages(prompt, "prompt", default_role="user")
    completion_messages = to_messages(completion, "completion", default_role="assistant")
    if len(completion_messages) > len(prompt_messages) and completion_messages[: len(prompt_messages)] == prompt_messages:
        completion_messages = completion_messages[len(prompt_messages) :]
    if not prompt_messages:
        raise ValueError("field 'prompt' has no messages")
    if not completion_messages or completion_messages[0]["role"] != "assistant":
        raise ValueError("field 'completion' must start with an assistant message")
    return Conversation(prompt_messages + completion_messages)
