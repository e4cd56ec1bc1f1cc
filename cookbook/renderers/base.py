"""The renderer interface: a conversation in, token ids and per-token loss weights out.

A renderer knows one chat format. It turns messages into a list of text `Segment`s, each tagged
with the message it belongs to and whether it is part of an assistant *reply* (the content and the
end-of-turn marker, i.e. what the model itself would generate). The base class does the rest the
same way for every format:

- Adjacent segments that end up with the same weight are joined and tokenized as one string with
  `tokenizer.encode(text, add_special_tokens=False)`, so special-token strings are recognised and
  untrained text tokenizes exactly as the model's template would (HF tokenizes the whole rendered
  string the same way).
- The text is split wherever the weight changes. The header that opens a reply
  (`<|im_start|>assistant\\n`) is therefore tokenized apart from the reply, which is what makes the
  generation prompt an exact token prefix of prompt + completion. The price, with GPT-2-style
  byte-level pre-tokenizers: a trained reply that starts with two or more whitespace characters
  (or is whitespace only) would, in a whole-string tokenization, share a pre-token with the
  header's final "\\n" (e.g. "\\n\\n\\nHi" -> "ĊĊ" "Ċ" "Hi"). We keep them apart on purpose; the
  text is identical, only the token split differs, and only for those replies.

The `*_runs` methods stop before tokenizing: they give each example as its runs of (text, weight),
so a data set of many examples can be tokenized in one batched call of the fast tokenizer
(`encode_runs`), each distinct text once (a prompt shared by a pair's two replies, a system prompt
shared by many conversations). The one-example `build_*` methods are the same runs, encoded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, TypedDict

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")
TrainOn = Literal["last_assistant", "all_assistant"]
StopReason = Literal["stop_sequence", "eos", "length"]


class Message(TypedDict):
    """One chat turn. Plain dicts with these two keys are what every renderer accepts."""

    role: Role
    content: str


@dataclass(frozen=True)
class RenderedExample:
    """Token ids and one loss weight per token (1.0 = the model is trained to produce it)."""

    tokens: list[int]
    weights: list[float]


@dataclass(frozen=True)
class ParsedResponse:
    """A sampled completion turned back into an assistant message, and why sampling ended."""

    message: Message
    stop_reason: StopReason


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text. `message_index` is None for text no message owns (a generation
    prompt's header); `is_reply` marks an assistant reply's content and end-of-turn marker."""

    text: str
    message_index: int | None = None
    is_reply: bool = False


def validate_messages(messages: Sequence[Mapping], what: str = "message") -> None:
    """Raise ValueError naming the index of the first message that is not a {role, content} dict
    with a known role and string content."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ValueError(f"expected a list of {what}s, got {type(messages).__name__}")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(
                f"{what} {index}: expected a dict with 'role' and 'content', got {type(message).__name__}"
            )
        if "role" not in message:
            raise ValueError(f"{what} {index}: missing 'role' (one of {', '.join(ROLES)})")
        if message["role"] not in ROLES:
            raise ValueError(f"{what} {index}: role {message['role']!r} is not one of {', '.join(ROLES)}")
        if "content" not in message:
            raise ValueError(f"{what} {index}: missing 'content'")
        if not isinstance(message["content"], str):
            raise ValueError(
                f"{what} {index}: content must be a string, got {type(message['content']).__name__}"
            )


def single_token_id(tokenizer, token_text: str, renderer_name: str) -> int:
    """The id of a special token, or a clear error when this tokenizer does not have it as one token."""
    ids = tokenizer.encode(token_text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"renderer {renderer_name!r} needs {token_text!r} to be a single token, but this tokenizer "
            f"splits it into {len(ids)}; use a tokenizer of that model family or another renderer"
        )
    return ids[0]


# A run of rendered text that carries one loss weight: tokenized as one string.
Run = tuple[str, float]


class Renderer(ABC):
    """Renders conversations for one chat format; subclasses implement `render_segments`."""

    name: ClassVar[str]
    # Extra keyword arguments the model's own chat template needs to render what this renderer
    # renders (e.g. enable_thinking=False); used when comparing the two.
    template_kwargs: dict = {}

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    # ---- what each format defines -------------------------------------------------------------

    @abstractmethod
    def render_segments(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = False,
        completion_start: int | None = None,
    ) -> list[Segment]:
        """The conversation as segments. `completion_start` is the index of the first completion
        message when rendering prompt + completion; a format whose historical turns render
        differently from a fresh reply uses it to keep the generation prompt a prefix."""

    @abstractmethod
    def get_stop_sequences(self) -> list[str]:
        """Text that ends an assistant turn, for samplers that stop on strings."""

    @abstractmethod
    def end_of_turn_token_ids(self) -> list[int]:
        """Token ids that end an assistant turn in this format (eos excluded)."""

    def content_from_reply_text(self, text: str) -> str:
        """Decoded reply text (stop already removed) -> message content; formats override."""
        return text

    # ---- shared machinery ---------------------------------------------------------------------

    def get_stop_token_ids(self) -> list[int]:
        """End-of-turn token ids, then the tokenizer's eos if different; a sampler stops on any."""
        ids = list(self.end_of_turn_token_ids())
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is not None and eos not in ids:
            ids.append(eos)
        return ids

    def render_text(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The conversation as the template's string (for display and spec checks)."""
        validate_messages(messages)
        segments = self.render_segments(messages, add_generation_prompt=add_generation_prompt)
        return "".join(segment.text for segment in segments)

    def build_generation_prompt(self, messages: Sequence[Message]) -> list[int]:
        """Tokens of `messages` followed by the header that opens the assistant's reply."""
        return self.encode_runs([self.generation_prompt_runs(messages)])[0].tokens

    def build_supervised_example(
        self, messages: Sequence[Message], train_on: TrainOn = "last_assistant"
    ) -> RenderedExample:
        """The whole conversation; weight 1 on the replies of the last (or every) assistant message."""
        return self.encode_runs([self.supervised_runs(messages, train_on)])[0]

    def build_completion_example(
        self, prompt: Sequence[Message], completion: Sequence[Message]
    ) -> RenderedExample:
        """`build_generation_prompt(prompt)` + the completion's tokens, weight 1 on its assistant
        replies (end-of-turn included). Non-assistant messages inside a multi-turn completion are
        context and carry no loss."""
        example_runs = self.completion_runs(prompt, completion)  # validates, naming prompt and completion
        prompt_runs = self.generation_prompt_runs(prompt)
        prompt_example, example = self.encode_runs([prompt_runs, example_runs])
        self.check_prompt_prefix(prompt_example.tokens, example)
        return example

    def generation_prompt_runs(self, messages: Sequence[Message]) -> list[Run]:
        validate_messages(messages)
        return _runs(self.render_segments(messages, add_generation_prompt=True), frozenset())

    def supervised_runs(self, messages: Sequence[Message], train_on: TrainOn = "last_assistant") -> list[Run]:
        validate_messages(messages)
        assistant = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
        if not assistant:
            raise ValueError("the conversation has no assistant message to train on")
        if train_on == "last_assistant":
            trained = frozenset(assistant[-1:])
        elif train_on == "all_assistant":
            trained = frozenset(assistant)
        else:
            raise ValueError(f"train_on={train_on!r} is not one of last_assistant, all_assistant")
        return _runs(self.render_segments(messages), trained)

    def completion_runs(self, prompt: Sequence[Message], completion: Sequence[Message]) -> list[Run]:
        validate_messages(prompt, what="prompt message")
        validate_messages(completion, what="completion message")
        if not completion:
            raise ValueError("the completion has no messages")
        if completion[0]["role"] != "assistant":
            raise ValueError(
                f"completion message 0: role {completion[0]['role']!r}; a completion must start "
                "with an assistant message (the generation prompt opens an assistant turn)"
            )
        messages = [*prompt, *completion]
        start = len(prompt)
        trained = frozenset(i for i in range(start, len(messages)) if messages[i]["role"] == "assistant")
        return _runs(self.render_segments(messages, completion_start=start), trained)

    def check_prompt_prefix(self, prompt_tokens: Sequence[int], example: RenderedExample) -> None:
        """ValueError unless the generation prompt's tokens are an untrained prefix of the example."""
        n = len(prompt_tokens)
        if list(example.tokens[:n]) != list(prompt_tokens) or any(example.weights[:n]):
            raise ValueError(
                f"renderer {self.name!r}: the generation prompt is not a prefix of prompt + completion "
                "for this example, so its completion cannot be scored on its own"
            )

    def encode_runs(self, examples: Sequence[Sequence[Run]]) -> list[RenderedExample]:
        """Each example's runs tokenized (see the module docstring), every distinct text encoded once
        in one batched call: the same tokens as encoding run by run."""
        texts = list(dict.fromkeys(text for runs in examples for text, _ in runs))
        ids = dict(zip(texts, encode_texts(self.tokenizer, texts)))
        out = []
        for runs in examples:
            tokens: list[int] = []
            weights: list[float] = []
            for text, weight in runs:
                tokens.extend(ids[text])
                weights.extend([weight] * len(ids[text]))
            out.append(RenderedExample(tokens=tokens, weights=weights))
        return out

    def parse_response(self, tokens: Sequence[int]) -> ParsedResponse:
        """Sampled completion tokens -> assistant message. The first end-of-turn token or text stop
        sequence ends the content ("stop_sequence"); else the eos token ("eos"); else the sample
        was cut off ("length")."""
        end_of_turn = set(self.end_of_turn_token_ids())
        eos = getattr(self.tokenizer, "eos_token_id", None)
        stop_reason: StopReason = "length"
        end = len(tokens)
        for position, token in enumerate(tokens):
            if token in end_of_turn:
                stop_reason, end = "stop_sequence", position
                break
            if token == eos:
                stop_reason, end = "eos", position
                break
        text = self.tokenizer.decode(
            list(tokens[:end]), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        cut = min((text.find(stop) for stop in self.get_stop_sequences() if stop in text), default=-1)
        if cut >= 0:
            text, stop_reason = text[:cut], "stop_sequence"
        content = self.content_from_reply_text(text)
        return ParsedResponse(message={"role": "assistant", "content": content}, stop_reason=stop_reason)


def _runs(segments: Sequence[Segment], trained: frozenset[int]) -> list[Run]:
    """Adjacent segments of equal weight joined (see the module docstring); empty ones dropped."""
    runs: list[Run] = []
    for segment in segments:
        weight = 1.0 if segment.is_reply and segment.message_index in trained else 0.0
        if not segment.text:
            continue
        if runs and runs[-1][1] == weight:
            runs[-1] = (runs[-1][0] + segment.text, weight)
        else:
            runs.append((segment.text, weight))
    return runs


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """`tokenizer.encode(text, add_special_tokens=False)` of each text, as one batched call."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        # The fast tokenizer's own batch call without offsets: the same ids, without the Python
        # wrapper's per-text conversions (a quarter to a third of the cost at real-size data).
        return [encoding.ids for encoding in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
    return tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False)["input_ids"]
