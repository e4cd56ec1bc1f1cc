"""Tokenized data: what a trainer gets from a builder, through the renderer.

    data = load_preference_data(config.dataset, renderer, max_length=config.max_length, console=console)
    data = load_supervised_data(config.dataset, renderer, config.max_length, config.train_on, console=console)
    train, test = data.train, data.test
    log_metrics(data.summary.as_metrics(), step=0)

Each builds the items (`builder()`), tokenizes every one through the renderer, drops and counts
those that do not fit `max_length`, and prints a short summary when `verbose` (pass False on all
ranks but rank 0, or a quiet console).

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
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from rich.console import Console

from cookbook.datasets.builder import Skip, SkipCounts
from cookbook.datasets.preference import Comparison, DPODatasetBuilder, NoUsablePairsError
from cookbook.datasets.summary import (
    DatasetSummary,
    LengthStats,
    SequenceLengthStats,
    SupervisedDataSummary,
    print_summary,
    print_supervised_summary,
)
from cookbook.datasets.supervised import Conversation, NoUsableExamplesError, SupervisedDatasetBuilder
from cookbook.renderers.base import TrainOn

MIN_COMPLETION_TOKENS = 8


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
    are the prompt; `truncated` says whether max_length cut either completion."""

    chosen: TokenizedSequence
    rejected: TokenizedSequence
    prompt_length: int
    truncated: bool = False

    @property
    def chosen_completion_length(self) -> int:
        return len(self.chosen) - self.prompt_length

    @property
    def rejected_completion_length(self) -> int:
        return len(self.rejected) - self.prompt_length


def tokenize_comparison(comparison: Comparison, renderer, max_length: int | None) -> TokenizedPair | Skip:
    """The pair's tokens, or a Skip: `too_long`, `identical`, or `malformed` when the renderer
    rejects the messages."""
    try:
        prompt_tokens = renderer.build_generation_prompt(comparison.prompt)
        chosen = renderer.build_completion_example(comparison.prompt, comparison.chosen)
        rejected = renderer.build_completion_example(comparison.prompt, comparison.rejected)
    except ValueError as error:
        return Skip("malformed", f"renderer: {error}")
    prompt_length = len(prompt_tokens)
    for example in (chosen, rejected):
        # The renderer promises this; DPO's shared-prompt log-probs silently go wrong without it.
        if example.tokens[:prompt_length] != prompt_tokens:
            raise ValueError(
                "renderer broke its contract: the generation prompt is not a prefix of the example"
            )
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
    return TokenizedPair(chosen_sequence, rejected_sequence, prompt_length, truncated)


def _cut(tokens: list[int], weights: list[float], max_length: int | None) -> TokenizedSequence:
    if max_length is None:
        return TokenizedSequence(list(tokens), list(weights))
    return TokenizedSequence(list(tokens[:max_length]), list(weights[:max_length]))


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


@dataclass(frozen=True)
class PreferenceData:
    train: list[TokenizedPair]
    test: list[TokenizedPair]
    summary: DatasetSummary


def load_preference_data(
    builder: DPODatasetBuilder,
    renderer,
    max_length: int | None,
    *,
    verbose: bool = True,
    console: Console | None = None,
) -> PreferenceData:
    """Build, tokenize and summarize a preference data set (see the module docstring)."""
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens or None, got {max_length}")
    tokenize = functools.partial(tokenize_comparison, renderer=renderer, max_length=max_length)
    splits, train, test, skipped = _build_and_tokenize(builder, tokenize, "pair", NoUsablePairsError, max_length)
    summary = DatasetSummary(
        name=builder.name(),
        rows_read=dict(splits.rows_read),
        train_pairs=len(train),
        test_pairs=len(test),
        skipped=dict(skipped.counts),
        skip_examples=dict(skipped.examples),
        unused_pairs=splits.unused_pairs,
        truncated_pairs=sum(pair.truncated for pair in (*train, *test)),
        max_length=max_length,
        train_lengths=LengthStats.of(train),
        test_lengths=LengthStats.of(test),
    )
    if verbose:
        print_summary(summary, console)
    return PreferenceData(train=train, test=test, summary=summary)


@dataclass(frozen=True)
class SupervisedData:
    train: list[SupervisedSequence]
    test: list[SupervisedSequence]
    summary: SupervisedDataSummary


def load_supervised_data(
    builder: SupervisedDatasetBuilder,
    renderer,
    max_length: int | None,
    train_on: TrainOn = "last_assistant",
    *,
    verbose: bool = True,
    console: Console | None = None,
) -> SupervisedData:
    """Build, tokenize and summarize a supervised data set (see the module docstring)."""
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length must be at least 2 tokens or None, got {max_length}")
    tokenize = functools.partial(tokenize_conversation, renderer=renderer, max_length=max_length, train_on=train_on)
    splits, train, test, skipped = _build_and_tokenize(builder, tokenize, "example", NoUsableExamplesError,
                                                       max_length, noun="conversation")
    summary = SupervisedDataSummary(
        name=builder.name(),
        rows_read=dict(splits.rows_read),
        train_examples=len(train),
        test_examples=len(test),
        skipped=dict(skipped.counts),
        skip_examples=dict(skipped.examples),
        unused_examples=splits.unused_examples,
        truncated_examples=sum(sequence.truncated for sequence in (*train, *test)),
        max_length=max_length,
        train_on=train_on,
        train_lengths=SequenceLengthStats.of(train),
        test_lengths=SequenceLengthStats.of(test),
    )
    if verbose:
        print_supervised_summary(summary, console)
    return SupervisedData(train=train, test=test, summary=summary)


def _build_and_tokenize(builder, tokenize, label: str, no_usable: type[Exception], max_length: int | None,
                        noun: str | None = None):
    """(the builder's splits, tokenized train, tokenized test, every skip): what does not tokenize is
    counted at `"train <label> <i>"`; no training item left raises `no_usable`."""
    splits = builder()
    skipped = SkipCounts()
    skipped.merge(splits.skipped)
    train = skipped.keep(map(tokenize, splits.train), f"train {label}")
    test = skipped.keep(map(tokenize, splits.test), f"test {label}")
    if not train:
        raise no_usable(f"{builder.name()}: no training {noun or label} fits max_length={max_length}. "
                        f"Skipped rows: {skipped.describe()}")
    return splits, train, test, skipped
