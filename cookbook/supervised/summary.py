"""What loading a supervised data set did, as numbers to log and a short table to print.

`SupervisedDataSummary.as_metrics()` gives flat keys (`data/train_examples`, `data/skipped/duplicate`,
`data/train/trained_tokens_mean`, ...) with every skip reason present, zero or not, so the keys of a
run's first log line never depend on the data; the same style as the preference summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cookbook.datasets.comparison import SKIP_REASONS
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
        lengths = [len(sequence) for sequence in sequences]
        trained = [sequence.num_trained_tokens for sequence in sequences]
        return cls(
            tokens_mean=sum(lengths) / len(lengths),
            tokens_max=max(lengths),
            trained_mean=sum(trained) / len(trained),
            trained_max=max(trained),
            trained_total=sum(trained),
        )


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
        metrics: dict[str, float] = {
            "data/rows_read": sum(self.rows_read.values()),
            "data/train_examples": self.train_examples,
            "data/test_examples": self.test_examples,
            "data/unused_examples": self.unused_examples,
            "data/truncated_examples": self.truncated_examples,
        }
        for reason in SKIP_REASONS:
            metrics[f"data/skipped/{reason}"] = self.skipped.get(reason, 0)
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
    counts = Table(title=Text(f"Supervised data: {summary.name}"), show_header=False, title_justify="left")
    counts.add_column(style="bold")
    counts.add_column(justify="right")
    counts.add_column(style="dim")
    reads = ", ".join(f"{split} {rows:,}" for split, rows in summary.rows_read.items())
    counts.add_row("rows read", f"{sum(summary.rows_read.values()):,}", Text(reads))
    counts.add_row("train examples", f"{summary.train_examples:,}", f"train_on={summary.train_on}")
    counts.add_row("test examples", f"{summary.test_examples:,}", "")
    if summary.unused_examples:
        counts.add_row("unused examples", f"{summary.unused_examples:,}", "left out by max_examples / test_size")
    if summary.truncated_examples:
        counts.add_row(
            "truncated", f"{summary.truncated_examples:,}", f"cut to max_length={summary.max_length}"
        )
    for reason, count in sorted(summary.skipped.items()):
        if count:
            example = summary.skip_examples.get(reason, "")
            counts.add_row(f"skipped: {reason}", f"{count:,}", Text(example if len(example) <= 90 else example[:89] + "…"))
    console.print(counts)

    lengths = Table(title="Tokens per example (mean / max)", title_justify="left")
    for column in ("split", "tokens", "trained", "trained in all"):
        lengths.add_column(column, justify="left" if column == "split" else "right")
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
