"""Qwen3's ChatML variant with thinking blocks, thinking on (`qwen3`) or off (`qwen3_disable_thinking`).

What Qwen3's own template does, and so what we do:
- No default system message.
- An assistant message whose content contains "</think>" is split into reasoning (between
  "<think>" and "</think>", newlines trimmed) and the answer after it.
- Assistant turns after the last user query render as
  "<think>\\n{reasoning}\\n</think>\\n\\n{answer}" when they are the last message or have reasoning
  (so the final reply always gets a think block, empty if need be); every earlier turn renders
  its answer alone, its reasoning dropped.
- The generation prompt is "<|im_start|>assistant\\n", plus "<think>\\n\\n</think>\\n\\n" with
  thinking disabled.

Loss weights: with thinking on, the think block is part of the reply the model generates. With
thinking off, an empty think block belongs to the prompt (the generation prompt already holds it),
and a completion whose first reply has non-empty reasoning cannot follow that prompt: it raises.
In a multi-message completion with thinking off, the first reply keeps the empty think block
(where the template would drop it as history) so that the generation prompt stays a prefix.
`parse_response` returns the raw text, think block included; `split_thinking` separates it.
"""

from __future__ import annotations

from collections.abc import Sequence

from cookbook.renderers.base import Message, Renderer, Segment, single_token_id

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
EMPTY_THINK_BLOCK = "<think>\n\n</think>\n\n"


def split_thinking(content: str) -> tuple[str, str]:
    """(reasoning, answer) of an assistant message, as Qwen3's template splits it."""
    if THINK_CLOSE not in content:
        return "", content
    reasoning = content.split(THINK_CLOSE)[0].rstrip("\n").split(THINK_OPEN)[-1].lstrip("\n")
    answer = content.split(THINK_CLOSE)[-1].lstrip("\n")
    return reasoning, answer


def last_query_index(messages: Sequence[Message]) -> int:
    """Index of the last real user message (tool responses sent as user text do not count)."""
    for index in range(len(messages) - 1, -1, -1):
        content = messages[index]["content"]
        is_tool_response = content.startswith("<tool_response>") and content.endswith("</tool_response>")
        if messages[index]["role"] == "user" and not is_tool_response:
            return index
    return len(messages) - 1


class Qwen3Renderer(Renderer):
    """Qwen3 with thinking on (the model decides what to think); see the module docstring."""

    name = "qwen3"
    enable_thinking = True

    def __init__(self, tokenizer, enable_thinking: bool | None = None):
        super().__init__(tokenizer)
        if enable_thinking is not None:
            self.enable_thinking = enable_thinking
        self.template_kwargs = {} if self.enable_thinking else {"enable_thinking": False}

    def render_segments(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = False,
        completion_start: int | None = None,
    ) -> list[Segment]:
        query_index = last_query_index(messages)
        segments: list[Segment] = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                segments.append(
                    Segment(f"{IM_START}{message['role']}\n{message['content']}{IM_END}\n", index)
                )
                continue
            reasoning, answer = split_thinking(message["content"])
            shows_think_block = index > query_index and (index == len(messages) - 1 or bool(reasoning))
            if not self.enable_thinking and index == completion_start:
                if reasoning.strip("\n"):
                    raise ValueError(
                        "completion message 0 has a think block, but with thinking disabled the "
                        "generation prompt already closes it; use the qwen3 renderer or drop the reasoning"
                    )
                shows_think_block = True
            header = f"{IM_START}assistant\n"
            if not shows_think_block:
                reply = answer
            elif self.enable_thinking or reasoning.strip("\n"):
                reasoning, answer = reasoning.strip("\n"), answer.lstrip("\n")
                reply = f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{answer}"
            else:  # thinking off: the empty block is what the generation prompt ends with
                header += EMPTY_THINK_BLOCK
                reply = answer.lstrip("\n")
            segments.append(Segment(header, index))
            segments.append(Segment(reply + IM_END, index, is_reply=True))
            segments.append(Segment("\n", index))
        if add_generation_prompt:
            segments.append(
                Segment(f"{IM_START}assistant\n" + ("" if self.enable_thinking else EMPTY_THINK_BLOCK))
            )
        return segments

    def get_stop_sequences(self) -> list[str]:
        return [IM_END]

    def end_of_turn_token_ids(self) -> list[int]:
        return [single_token_id(self.tokenizer, IM_END, self.name)]


class Qwen3DisableThinkingRenderer(Qwen3Renderer):
    """Qwen3 with thinking off (`enable_thinking=False` in its template)."""

    name = "qwen3_disable_thinking"
    enable_thinking = False
