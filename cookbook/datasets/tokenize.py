"""Items to tokens through the renderer: a `TokenizedPair` per preference pair, a
`SupervisedSequence` per conversation, a `TokenizedUnpaired` per unpaired example, or the `Skip`
that says why not.

`tokenize_comparisons` and `tokenize_conversations` do many at once: every item's runs of text
(`Renderer.*_runs`) go through one batched call of the fast tokenizer, each distinct text once (a
pair's prompt is tokenized once for its two replies), which gives exactly the tokens of the
one-at-a-time `tokenize_comparison` / `tokenize_conversation` (tested on every renderer).

A preference pair (`TokenizedPair`): both sequences are `build_generation_prompt(prompt) +
completion`, loss weight 1 on the completion's reply tokens only; the prompt tokens are an exact,
shared prefix of length `prompt_length`. A completion that does not fit `max_length` is cut from its
end (the prompt is never cut: a reply to half a question is a different example). A pair whose
prompt leaves fewer than `MIN_COMPLETION_TOKENS` tokens of room is dropped as `too_long`, since a few
tokens of each reply carry almost no preference signal. A pair whose two completions have the same
tokens (after any cut) is dropped as `identical`: its DPO loss is constant, so it only dilutes the
batch.

A conversation (`SupervisedSequence`): the renderer's `build_supervised_example(messages, train_on)`
gives the whole conversation's tokens, weight 1 on the reply tokens (content and end-of-turn marker)
of the last assistant message (`train_on=last_assistant`) or of every one (`all_assistant`). A longer
one than `max_length` is cut from its end and counted as truncated (the start is kept: a reply
without the question it answers teaches the wrong thing); one with no trained token left is
dropped as `too_long`.

An unpaired example (`TokenizedUnpaired`): `build_generation_prompt(prompt) + completion`, weight 1
on the completion's reply tokens, cut and dropped like one side of a pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cookbook.datasets.builder import Skip
from cookbook.datasets.preference import Comparison
from cookbook.datasets.supervised import Conversation
from cookbook.datasets.unpaired import UnpairedExample
from cookbook.renderers.base import RenderedExample, TrainOn

MIN_COMPLETION_TOKENS = 8
TRAIN_ON_CHOICES: tuple[str, ...] = ("last_assistant", "all_assistant")


@dataclass(frozen=True)
class TokenizedSequence:
    """Prompt + completion token ids, and a loss weight per token (1.0 on completion replies)."""

    tokens: list[int]
    weights: list[float]

    def __post_init__(self):
        if len(self.tokens) != len(self.weights):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.weights)} weights")

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class TokenizedPair:
    """A preference pair as tokens. `chosen.tokens[:prompt_length] == rejected.tokens[:prompt_length]`
    are the prompt; `truncated` says whether max_length cut either completion; `margin` is the
    Comparison's (None when the data gives none)."""

    chosen: TokenizedSequence
    rejected: TokenizedSequence
    prompt_length: int
    truncated: bool = False
    margin: float | None = None

    @property
    def chosen_completion_length(self) -> int:
        return len(self.chosen) - self.prompt_length

    @property
    def rejected_completion_length(self) -> int:
        return len(self.rejected) - self.prompt_length


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


# -- preference pairs ------------------------------------------------------------------------------


def tokenize_comparison(comparison: Comparison, renderer, max_length: int | None) -> TokenizedPair | Skip:
    """The pair's tokens, or a Skip: `too_long`, `identical`, or `malformed` when the renderer
    rejects the messages."""
    return tokenize_comparisons([comparison], renderer, max_length)[0]


def tokenize_comparisons(comparisons: Sequence[Comparison], renderer, max_length: int | None) -> list[TokenizedPair | Skip]:
    """`tokenize_comparison` of each, in one batched tokenizer call."""
    runs: list = []
    for comparison in comparisons:
        try:
            # In the order the one-pair build_* calls check the messages, so errors read the same.
            prompt = renderer.generation_prompt_runs(comparison.prompt)
            runs.append((prompt, renderer.completion_runs(comparison.prompt, comparison.chosen),
                         renderer.completion_runs(comparison.prompt, comparison.rejected)))
        except ValueError as error:
            runs.append(Skip("malformed", f"renderer: {error}"))
    encoded = iter(renderer.encode_runs([r for item in runs if not isinstance(item, Skip) for r in item]))
    results: list[TokenizedPair | Skip] = []
    for comparison, item in zip(comparisons, runs, strict=True):
        if isinstance(item, Skip):
            results.append(item)
            continue
        prompt, chosen, rejected = next(encoded), next(encoded), next(encoded)
        try:
            renderer.check_prompt_prefix(prompt.tokens, chosen)
            renderer.check_prompt_prefix(prompt.tokens, rejected)
        except ValueError as error:
            results.append(Skip("malformed", f"renderer: {error}"))
            continue
        results.append(_pair(len(prompt.tokens), chosen, rejected, max_length, comparison.margin))
    return results


def _pair(prompt_length: int, chosen: RenderedExample, rejected: RenderedExample,
          max_length: int | None, margin: float | None = None) -> TokenizedPair | Skip:
    truncated = False
    if max_length is not None:
        room = max_length - prompt_length
        if room < MIN_COMPLETION_TOKENS:
            return Skip(
                "too_long",
                f"prompt is {prompt_length} tokens; max_length={max_length} leaves {room} for the completion "
                f"(need >= {MIN_COMPLETION_TOKENS})",
            )
        truncated = len(chosen.tokens) > max_length or len(rejected.tokens) > max_length
    chosen_sequence = _cut(chosen.tokens, chosen.weights, max_length)
    rejected_sequence = _cut(rejected.tokens, rejected.weights, max_length)
    if chosen_sequence.tokens[prompt_length:] == rejected_sequence.tokens[prompt_length:]:
        cut = f" within max_length={max_length}" if truncated else ""
        return Skip("identical", f"chosen and rejected completions have the same tokens{cut}")
    return TokenizedPair(chosen_sequence, rejected_sequence, prompt_length, truncated, margin)


def _cut(tokens: list[int], weights: list[float], max_length: int | None) -> TokenizedSequence:
    if max_length is None:
        return TokenizedSequence(list(tokens), list(weights))
    return TokenizedSequence(list(tokens[:max_length]), list(weights[:max_length]))


@dataclass(frozen=True)
class TokenizedUnpaired:
    """An unpaired example as tokens: `sequence.tokens[:prompt_length]` is the prompt."""

    sequence: TokenizedSequence
    prompt_length: int
    desirable: bool
    truncated: bool = False

    @property
    def completion_length(self) -> int:
        return len(self.sequence) - self.prompt_length


# -- unpaired examples -----------------------------------------------------------------------------


def tokenize_unpaired(examples: Sequence[UnpairedExample], renderer, max_length: int | None) -> list[TokenizedUnpaired | Skip]:
    """Each example's tokens (or a `too_long` / `malformed` Skip), in one batched tokenizer call."""
    runs: list = []
    for example in examples:
        try:
            runs.append((renderer.generation_prompt_runs(example.prompt),
                         renderer.completion_runs(example.prompt, example.completion)))
        except ValueError as error:
            runs.append(Skip("malformed", f"renderer: {error}"))
    encoded = iter(renderer.encode_runs([r for item in runs if not isinstance(item, Skip) for r in item]))
    results: list[TokenizedUnpaired | Skip] = []
    for example, item in zip(examples, runs):
        if isinstance(item, Skip):
            results.append(item)
            continue
        prompt, full = next(encoded), next(encoded)
        try:
            renderer.check_prompt_prefix(prompt.tokens, full)
        except ValueError as error:
            results.append(Skip("malformed", f"renderer: {error}"))
            continue
        prompt_length = len(prompt.tokens)
        if max_length is not None and max_length - prompt_length < MIN_COMPLETION_TOKENS:
            results.append(Skip("too_long", f"prompt is {prompt_length} tokens; max_length={max_length} leaves "
                                            f"{max_length - prompt_length} for the completion (need >= {MIN_COMPLETION_TOKENS})"))
            continue
        truncated = max_length is not None and len(full.tokens) > max_length
        results.append(TokenizedUnpaired(_cut(full.tokens, full.weights, max_length), prompt_length,
                                         example.desirable, truncated))
    return results


# -- conversations ---------------------------------------------------------------------------------


def tokenize_conversation(
    conversation: Conversation, renderer, max_length: int | None, train_on: TrainOn = "last_assistant"
) -> SupervisedSequence | Skip:
    """The conversation's tokens, or a Skip: `too_long`, or `malformed` when the renderer rejects it."""
    return tokenize_conversations([conversation], renderer, max_length, train_on)[0]


def tokenize_conversations(conversations: Sequence[Conversation], renderer, max_length: int | None,
                           train_on: TrainOn = "last_assistant") -> list[SupervisedSequence | Skip]:
    """`tokenize_conversation` of each, in one batched tokenizer call."""
    if train_on not in TRAIN_ON_CHOICES:
        raise ValueError(f"train_on={train_on!r} is not one of {', '.join(TRAIN_ON_CHOICES)}")
    runs: list = []
    for conversation in conversations:
        try:
            runs.append(renderer.supervised_runs(conversation.messages, train_on=train_on))
        except ValueError as error:
            runs.append(Skip("malformed", f"renderer: {error}"))
    encoded = iter(renderer.encode_runs([item for item in runs if not isinstance(item, Skip)]))
    return [item if isinstance(item, Skip) else _sequence(next(encoded), max_length) for item in runs]


def _sequence(example: RenderedExample, max_length: int | None) -> SupervisedSequence | Skip:
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
