"""`load_preference_data`: the one call a trainer makes to get tokenized preference pairs.

    data = load_preference_data(config.dataset, renderer, max_length=config.max_length,
                                verbose=is_rank_zero)
    train_pairs, test_pairs = data.train, data.test
    log_metrics(data.summary.as_metrics(), step=0)

It builds the comparisons (`builder()`), tokenizes every pair through the renderer, drops and
counts pairs that do not fit `max_length` or become identical, and prints a short summary when
`verbose` (pass False on all ranks but rank 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

from cookbook.datasets.builder import DPODatasetBuilder, NoUsablePairsError, SkipCounts
from cookbook.datasets.summary import DatasetSummary, LengthStats, print_summary
from cookbook.datasets.tokenize import TokenizedPair, tokenize_comparison


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
    splits = builder()
    skipped = SkipCounts()
    skipped.merge(splits.skipped)
    train = skipped.keep((tokenize_comparison(c, renderer, max_length) for c in splits.train), "train pair")
    test = skipped.keep((tokenize_comparison(c, renderer, max_length) for c in splits.test), "test pair")
    if not train:
        raise NoUsablePairsError(
            f"{builder.name()}: no training pair fits max_length={max_length}. Skipped rows: {skipped.describe()}"
        )
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

