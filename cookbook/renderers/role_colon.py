"""A plain-text format for base models that have no chat template:

    System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: ...

The generation prompt ends with "Assistant:" and the reply starts with the space, so the reply's
first word keeps its usual space-prefixed BPE token. A reply is " content\n\n"; generation stops
on the text "\n\nUser:" (the model has learned that a user turn follows a blank line). The
tokenizer's BOS token is prepended when its plain `encode` would add one (Llama-style tokenizers).
"""

from __future__ import annotations

from collections.abc import Sequence

from cookbook.renderers.base import Message, Renderer, Segment

ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
STOP_SEQUENCE = "\n\nUser:"


class RoleColonRenderer(Renderer):
    """`Role: content` turns separated by blank lines."""

    name = "role_colon"

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        bos_id = getattr(tokenizer, "bos_token_id", None)
        adds_bos = bos_id is not None and tokenizer.encode("a")[:1] == [bos_id]
        self.bos_text = tokenizer.bos_token if adds_bos else ""

    def render_segments(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = False,
        completion_start: int | None = None,
    ) -> list[Segment]:
        segments = [Segment(self.bos_text)]
        for index, message in enumerate(messages):
            label = ROLE_LABELS[message["role"]]
            if message["role"] == "assistant":
                segments.append(Segment(f"{label}:", index))
                segments.append(Segment(f" {message['content']}\n\n", index, is_reply=True))
            else:
                segments.append(Segment(f"{label}: {message['content']}\n\n", index))
        if add_generation_prompt:
            segments.append(Segment(f"{ROLE_LABELS['assistant']}:"))
        return segments

    def get_stop_sequences(self) -> list[str]:
        return [STOP_SEQUENCE]

    def end_of_turn_token_ids(self) -> list[int]:
        return []

    def content_from_reply_text(self, text: str) -> str:
        # The reply opens with the space after "Assistant:"; a stop-cut reply drops the blank line's
        # "\n\n" together with "User:", so only that space needs removing.
        return text[1:] if text.startswith(" ") else text
