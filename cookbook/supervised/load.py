"""`load_supervised_data`: the one call an SFT trainer makes to get tokenized conversations.

    data = load_supervised_data(config.dataset, renderer, max_length=config.max_length,
                                train_on=config.train_on, console=console)
    train_sequences, test_sequences = data.train, data.test
    log_metrics(data.summary.as_metrics(), step=0)

It builds the conversations (`builder()`), tokenizes each through the renderer, cuts sequences to
`max_length` and drops and counts those left with nothing to train on, and prints a short summary
when `verbose` (pass False on all ranks but rank 0, or a quiet console).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from rich.console import Console

from cookbook.datasets.builder import SkipCounts
from cookbook.renderers.base import TrainOn
from cookbook.supervised.builder import NoUsableExamplesError, SupervisedDatasetBuilder
from cookbook.supervised.summary import SequenceLengthStats, SupervisedDataSummary, print_supervised_summary
from cookbook.supervised.tokenize import SupervisedSequence, tokenize_conversation


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
    splits = builder()
    skipped = SkipCounts()
    skipped.merge(splits.skipped)
    tokenize = functools.partial(tokenize_conversation, renderer=renderer, max_length=max_length, train_on=train_on)
    train = skipped.keep(map(tokenize, splits.train), "train example")
    test = skipped.keep(map(tokenize, splits.test), "test example")
    if not train:
        raise NoUsableExamplesError(
            f"{builder.name()}: no training conversation fits max_length={max_length}. "
            f"Skipped rows: {skipped.describe()}"
        )
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

