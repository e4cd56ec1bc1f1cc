"""ChatML, as SmolLM2 and Qwen2.5 use it: `<|im_start|>role\ncontent<|im_end|>\n` per message.

Both templates insert a default system message when the conversation does not start with one;
only its text differs, so it is a constructor argument (`None` = insert nothing). A reply is the
content plus `<|im_end|>`; the "\n" after it is template glue and carries no loss.
"""

from __future__ import annotations

from collections.abc import Sequence

from cookbook.renderers.base import Message, Renderer, Segment, single_token_id

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SMOLLM2_DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QWEN2_5_DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


class _ClassDefault:
    """Marks a constructor argument left out (None already means "no default system message")."""


CLASS_DEFAULT = _ClassDefault()


class ChatMLRenderer(Renderer):
    """ChatML with SmolLM2's default system prompt unless told otherwise."""

    name = "chatml"
    default_system_prompt: str | None = SMOLLM2_DEFAULT_SYSTEM_PROMPT

    def __init__(self, tokenizer, default_system_prompt: str | None | _ClassDefault = CLASS_DEFAULT):
        """`default_system_prompt`: the system message inserted when the conversation has none;
        None inserts nothing; left out, the class's own (SmolLM2's, or Qwen2.5's for qwen2_5)."""
        super().__init__(tokenizer)
        if not isinstance(default_system_prompt, _ClassDefault):
            self.default_system_prompt = default_system_prompt

    def render_segments(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = False,
        completion_start: int | None = None,
    ) -> list[Segment]:
        segments: list[Segment] = []
        if messages and messages[0]["role"] != "system" and self.default_system_prompt is not None:
            segments.append(Segment(f"{IM_START}system\n{self.default_system_prompt}{IM_END}\n"))
        for index, message in enumerate(messages):
            header = f"{IM_START}{message['role']}\n"
            if message["role"] == "assistant":
                segments.append(Segment(header, index))
                segments.append(Segment(message["content"] + IM_END, index, is_reply=True))
                segments.append(Segment("\n", index))
            else:
                segments.append(Segment(f"{header}{message['content']}{IM_END}\n", index))
        if add_generation_prompt:
            segments.append(Segment(f"{IM_START}assistant\n"))
        return segments

    def get_stop_sequences(self) -> list[str]:
        return [IM_END]

    def end_of_turn_token_ids(self) -> list[int]:
        return [single_token_id(self.tokenizer, IM_END, self.name)]


class Qwen25Renderer(ChatMLRenderer):
    """ChatML with Qwen2.5's default system prompt."""

    name = "qwen2_5"
    default_system_prompt = QWEN2_5_DEFAULT_SYSTEM_PROMPT
