"""Llama 3 instruct format:

    <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n

As in Llama 3's own template, content is stripped of surrounding whitespace and nothing separates
turns. We render the Llama 3.0 format: Llama 3.1+ templates also insert a system block with
"Cutting Knowledge Date" / "Today Date" lines, which we leave out (a date that changes per run
would make training data depend on the day); `check_renderer_matches_template` warns when a
tokenizer's template adds it. `<|begin_of_text|>` is always emitted, even for an empty prompt.
A reply is the stripped content plus `<|eot_id|>`.
"""

from __future__ import annotations

from collections.abc import Sequence

from cookbook.renderers.base import Message, Renderer, Segment, single_token_id

BEGIN_OF_TEXT = "<|begin_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"


def header(role: str) -> str:
    return f"{START_HEADER}{role}{END_HEADER}\n\n"


class Llama3Renderer(Renderer):
    """Llama 3 (3.0) chat format, no default system message."""

    name = "llama3"

    def render_segments(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = False,
        completion_start: int | None = None,
    ) -> list[Segment]:
        segments = [Segment(BEGIN_OF_TEXT)]
        for index, message in enumerate(messages):
            content = message["content"].strip()
            if message["role"] == "assistant":
                segments.append(Segment(header("assistant"), index))
                segments.append(Segment(content + EOT, index, is_reply=True))
            else:
                segments.append(Segment(header(message["role"]) + content + EOT, index))
        if add_generation_prompt:
            segments.append(Segment(header("assistant")))
        return segments

    def get_stop_sequences(self) -> list[str]:
        return [EOT]

    def end_of_turn_token_ids(self) -> list[int]:
        return [single_token_id(self.tokenizer, EOT, self.name)]
