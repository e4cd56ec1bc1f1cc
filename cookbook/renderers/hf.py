"""`hf`: let the tokenizer's own `chat_template` render, and find the loss mask by rendering prefixes.

Message i's text is `render(messages[:i+1])` minus `render(messages[:i])`. For an assistant message
the part up to `render(messages[:i], add_generation_prompt=True)` is its header; the rest is the
reply, whose weight ends after its last end-of-turn token (the template's trailing glue, such as
ChatML's "\\n", carries none). This needs a template that renders each conversation as an extension
of its prefixes; one that rewrites earlier turns (Qwen3 drops past reasoning) or inserts a default
system message only once a first message exists before an assistant one raises a ValueError that
says so, and a dedicated renderer is the answer there.
"""

from __future__ import annotations

from collections.abc import Sequence

from cookbook.renderers.base import Message, Renderer, Segment

# End-of-turn markers of common chat formats; those the template contains and the tokenizer
# has as single tokens end a reply.
END_OF_TURN_CANDIDATES = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>")


class HFTemplateRenderer(Renderer):
    """Renders with `tokenizer.apply_chat_template`; extra keyword arguments go to the template."""

    name = "hf"

    def __init__(self, tokenizer, **template_kwargs):
        super().__init__(tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"renderer 'hf' needs a tokenizer with a chat_template; {getattr(tokenizer, 'name_or_path', '')!r} "
                "has none (for a base model use renderer 'role_colon')"
            )
        self.template_kwargs = dict(template_kwargs)
        self._end_of_turn = self._find_end_of_turn_tokens()

    def _find_end_of_turn_tokens(self) -> list[tuple[str, int]]:
        # Markers written literally in the template; failing that, the eos (templates such as
        # Mistral's end each reply with the `eos_token` variable).
        found: list[tuple[str, int]] = []
        for text in END_OF_TURN_CANDIDATES:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if text in self.tokenizer.chat_template and len(ids) == 1:
                found.append((text, ids[0]))
        eos = getattr(self.tokenizer, "eos_token", None)
        eos_id = getattr(self.tokenizer, "eos_token_id", None)
        if not found and eos and eos_id is not None:
            found.append((eos, eos_id))
        return found

    def template_text(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The tokenizer's own template applied to `messages`, as a string."""
        return self.tokenizer.apply_chat_template(
            [dict(message) for message in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self.template_kwargs,
        )

    def render_segments(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = False,
        completion_start: int | None = None,
    ) -> list[Segment]:
        segments: list[Segment] = []
        rendered = ""  # the template applied to messages[:index]
        for index, message in enumerate(messages):
            full = self._extension(messages[: index + 1], rendered, index)
            if message["role"] == "assistant":
                with_header = self._extension(messages[:index], rendered, index, add_generation_prompt=True)
                if not full.startswith(with_header):
                    raise ValueError(
                        f"message {index}: the chat template's reply does not follow its own generation "
                        "prompt, so the reply's tokens cannot be found; use a dedicated renderer"
                    )
                reply = full[len(with_header) :]
                reply_end = self._reply_end(reply)
                segments.append(Segment(with_header[len(rendered) :], index))
                segments.append(Segment(reply[:reply_end], index, is_reply=True))
                segments.append(Segment(reply[reply_end:], index))
            else:
                segments.append(Segment(full[len(rendered) :], index))
            rendered = full
        if add_generation_prompt:
            prompt = self._extension(messages, rendered, len(messages), add_generation_prompt=True)
            segments.append(Segment(prompt[len(rendered) :]))
        return segments

    def _extension(self, messages, rendered: str, index: int, add_generation_prompt: bool = False) -> str:
        text = (
            self.template_text(messages, add_generation_prompt) if messages or add_generation_prompt else ""
        )
        if not text.startswith(rendered):
            raise ValueError(
                f"message {index}: the chat template renders the conversation up to this message in a way "
                "that changes the text of earlier messages, so per-message loss weights cannot be "
                "derived from it; use a dedicated renderer (e.g. qwen3) instead of 'hf'"
            )
        return text

    def _reply_end(self, reply: str) -> int:
        # Weight ends after the last end-of-turn marker inside the reply; with none, it covers it all.
        ends = [reply.rfind(text) + len(text) for text, _ in self._end_of_turn if text in reply]
        return max(ends, default=len(reply))

    def get_stop_sequences(self) -> list[str]:
        return [text for text, _ in self._end_of_turn]

    def end_of_turn_token_ids(self) -> list[int]:
        return [token_id for _, token_id in self._end_of_turn]
