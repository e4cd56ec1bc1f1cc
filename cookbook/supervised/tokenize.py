"""Turning a `Conversation` into token ids with per-token loss weights: a `SupervisedSequence`.

The renderer's `build_supervised_example(messages, train_on)` gives the whole conversation's tokens,
weight 1 on the reply tokens (content and end-of-turn marker) of the last assistant message
(`train_on=last_assistant`) or of every one (`all_assistant`), 0 elsewhere.

`max_length` bounds each sequence; a longer one is cut from its end and counted as truncated (the
start is kept: a reply without the question it answers teaches the wrong thing). A sequence with
no trained token left after the cut is dropped as `too_long`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cookbook.datasets.comparison import Skip
from cookbook.renderers.base import TrainOn
from cookbook.supervised.example import Conversation

TRAIN_ON_CHOICES: tuple[str, ...] = ("last_assistant", "all_assistant")


@dataclass(frozen=True)
class SupervisedSequence:
    """Token ids and a loss weight per token; `truncated` says whether max_length cut it."""

    tokens: list[int]
    weights: list[float]
    truncated: bool = False

    def __post_init__(self):
        if len(self.tokens) != len(self.weights):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.weights)} weights")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_trained_tokens(self) -> float:
        """Sum of the weights of tokens that something predicts (the first token has no predictor)."""
        return float(sum(self.weights[1:]))


def tokenize_conversation(
    conversation: Conversation, renderer, max_length: int | None, train_on: TrainOn = "last_assistant"
) -> SupervisedSequence | Skip:
    """The conversation's tokens, or a Skip: `too_long`, or `malformed` when the renderer rejects it."""
    if train_on not in TRAIN_ON_CHOICES:
        raise ValueError(f"train_on={train_on!r} is not one of {', '.join(TRAIN_ON_CHOICES)}")
    try:
        example = renderer.build_supervised_example(conversation.messages, train_on=train_on)
    except ValueError as error:
        return Skip("malformed", f"renderer: {error}")
    tokens, weights = list(example.tokens), list(example.weights)
    truncated = max_length is not None and len(tokens) > max_length
    if truncated:
        tokens, weights = tokens[:max_length], weights[:max_length]
    sequence = SupervisedSequence(tokens, weights, truncated)
    if sequence.num_trained_tokens == 0:
        first_trained = next((i for i, w in enumerate(example.weights) if w), len(example.weights))
        return Skip(
            "too_long",
            f"the first trained token is token {first_trained}; max_length={max_length} leaves none to train on",
        )
    return sequence
