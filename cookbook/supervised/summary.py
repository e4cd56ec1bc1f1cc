"""What loading a supervised data set did, as numbers to log and a short table to print.

`SupervisedDataSummary.as_metrics()` gives flat keys (`data/train_examples`, `data/skipped/duplicate`,
`data/train/trained_tokens_mean`, ...) with every skip reason present, zero or not, so the keys of a
run's first log line never depend on the data. The counts, skips and rows-read parts come from the
preference summary's helpers, so the two read alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.panel import Panel

from cookbook.datasets.summary import add_skip_rows, count_metrics, counts_table, lengths_table, mean_and_max
from cookbook.supervised.tokenize import SupervisedSequence
from cookbook.training.display import weighted_tokens_text


@dataclass(frozen=True)
class SequenceLengthStats:
    """Tokens per sequence of one split (after any max_length cut), and of those the trained ones."""

    tokens_mean: float = 0.0
    tokens_max: int = 0
    trained_mean: float = 0.0
    trained_max: float = 0
    trained_total: float = 0

    @classmethod
    def of(cls, sequences: Sequence[SupervisedSequence]) -> SequenceLengthStats:
        if not sequences:
            return cls()
        tokens_mean, tokens_max = mean_and_max([len(sequence) for sequence in sequences])
        trained = [sequence.num_trained_tokens for sequence in sequences]
        trained_mean, trained_max = mean_and_max(trained)
        return cls(tokens_mean, tokens_max, trained_mean, trained_max, trained_total=sum(trained))


@dataclass(frozen=True)
class SupervisedDataSummary:
    name: str
    rows_read: dict[str, int]  # per source split
    train_examples: int
    test_examples: int
    skipped: dict[str, int]  # reason -> rows (all splits; building and tokenizing)
    skip_examples: dict[str, str] = field(default_factory=dict)  # reason -> first example, with location
    unused_examples: int = 0  # usable conversations left out by max_examples / test_size
    truncated_examples: int = 0  # kept sequences that max_length cut
    max_length: int | None = None
    train_on: str = "last_assistant"
    train_lengths: SequenceLengthStats = field(default_factory=SequenceLengthStats)
    test_lengths: SequenceLengthStats = field(default_factory=SequenceLengthStats)

    def as_metrics(self) -> dict[str, float]:
        metrics = count_metrics(
            self.rows_read,
            {
                "train_examples": self.train_examples,
                "test_examples": self.test_examples,
                "unused_examples": self.unused_examples,
                "truncated_examples": self.truncated_examples,
            },
            self.skipped,
        )
        for split, stats in (("train", self.train_lengths), ("test", self.test_lengths)):
            metrics[f"data/{split}/tokens_mean"] = stats.tokens_mean
            metrics[f"data/{split}/tokens_max"] = stats.tokens_max
            metrics[f"data/{split}/trained_tokens_mean"] = stats.trained_mean
            metrics[f"data/{split}/trained_tokens_max"] = stats.trained_max
            metrics[f"data/{split}/trained_tokens"] = stats.trained_total
        return metrics


def print_supervised_summary(summary: SupervisedDataSummary, console: Console | None = None) -> None:
    """A short table of rows read, conversations kept, skips by reason and token lengths."""
    console = console or Console()
    counts = counts_table(f"Supervised data: {summary.name}", summary.rows_read)
    counts.add_row("train examples", f"{summary.train_examples:,}", f"train_on={summary.train_on}")
    counts.add_row("test examples", f"{summary.test_examples:,}", "")
    if summary.unused_examples:
        counts.add_row("unused examples", f"{summary.unused_examples:,}", "left out by max_examples / test_size")
    if summary.truncated_examples:
        counts.add_row(
            "truncated", f"{summary.truncated_examples:,}", f"cut to max_length={summary.max_length}"
        )
    add_skip_rows(counts, summary.skipped, summary.skip_examples)
    console.print(counts)

    lengths = lengths_table("Tokens per example (mean / max)", ("tokens", "trained", "trained in all"))
    for split, stats in (("train", summary.train_lengths), ("test", summary.test_lengths)):
        lengths.add_row(
            split,
            f"{stats.tokens_mean:.1f} / {stats.tokens_max}",
            f"{stats.trained_mean:.1f} / {stats.trained_max:g}",
            f"{stats.trained_total:,.0f}",
        )
    console.print(lengths)


def print_supervised_example(console: Console, tokenizer, sequence: SupervisedSequence) -> None:
    """One tokenized training example, its trained tokens highlighted."""
    text = weighted_tokens_text(tokenizer, sequence.tokens, sequence.weights)
    console.print(Panel(text, title="training example (green = trained tokens)"))
