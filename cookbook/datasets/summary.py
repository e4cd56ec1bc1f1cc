"""What loading a data set did, as numbers to log and a short table to print.

`DatasetSummary.as_metrics()` (preference pairs) and `SupervisedDataSummary.as_metrics()`
(conversations) give flat keys (`data/train_pairs`, `data/skipped/tie`, `data/train/chosen_tokens_mean`,
`data/train/trained_tokens_mean`, ...) with every skip reason present, zero or not, so the keys of a
run's first log line never depend on the data. `print_summary` and `print_supervised_summary` render
the same figures with rich, through the same helpers, so both kinds report rows, skips and lengths
the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cookbook.datasets.builder import SKIP_REASONS
from cookbook.training.display import weighted_tokens_text


@dataclass(frozen=True)
class LengthStats:
    """Token counts of one split: the prompt, and each completion after any max_length cut."""

    prompt_mean: float = 0.0
    prompt_max: int = 0
    chosen_mean: float = 0.0
    chosen_max: int = 0
    rejected_mean: float = 0.0
    rejected_max: int = 0

    @classmethod
    def of(cls, pairs: Sequence) -> LengthStats:
        """From `TokenizedPair`s."""
        if not pairs:
            return cls()
        prompt_mean, prompt_max = mean_and_max([pair.prompt_length for pair in pairs])
        chosen_mean, chosen_max = mean_and_max([pair.chosen_completion_length for pair in pairs])
        rejected_mean, rejected_max = mean_and_max([pair.rejected_completion_length for pair in pairs])
        return cls(prompt_mean, prompt_max, chosen_mean, chosen_max, rejected_mean, rejected_max)


@dataclass(frozen=True)
class DatasetSummary:
    name: str
    rows_read: dict[str, int]  # per source split
    train_pairs: int
    test_pairs: int
    skipped: dict[str, int]  # reason -> rows (all splits; building and tokenizing)
    skip_examples: dict[str, str] = field(default_factory=dict)  # reason -> first example, with location
    unused_pairs: int = 0  # usable pairs left out by max_pairs / test_size
    truncated_pairs: int = 0  # kept pairs whose completion max_length cut
    max_length: int | None = None
    train_lengths: LengthStats = field(default_factory=LengthStats)
    test_lengths: LengthStats = field(default_factory=LengthStats)

    def as_metrics(self) -> dict[str, float]:
        metrics = count_metrics(
            self.rows_read,
            {
                "train_pairs": self.train_pairs,
                "test_pairs": self.test_pairs,
                "unused_pairs": self.unused_pairs,
                "truncated_pairs": self.truncated_pairs,
            },
            self.skipped,
        )
        for split, stats in (("train", self.train_lengths), ("test", self.test_lengths)):
            for side in ("prompt", "chosen", "rejected"):
                metrics[f"data/{split}/{side}_tokens_mean"] = getattr(stats, f"{side}_mean")
                metrics[f"data/{split}/{side}_tokens_max"] = getattr(stats, f"{side}_max")
        return metrics


def print_summary(summary: DatasetSummary, console: Console | None = None, note: str = "") -> None:
    """A short table of rows read, pairs kept, skips by reason and token lengths; `note` says where
    the tokens came from (the cache or a fresh tokenization)."""
    console = console or Console()
    counts = counts_table(f"Preference data: {summary.name}", summary.rows_read, note)
    counts.add_row("train pairs", f"{summary.train_pairs:,}", "")
    counts.add_row("test pairs", f"{summary.test_pairs:,}", "")
    if summary.unused_pairs:
        counts.add_row("unused pairs", f"{summary.unused_pairs:,}", "left out by max_pairs / test_size")
    if summary.truncated_pairs:
        counts.add_row(
            "truncated", f"{summary.truncated_pairs:,}", f"completion cut to max_length={summary.max_length}"
        )
    add_skip_rows(counts, summary.skipped, summary.skip_examples)
    console.print(counts)

    lengths = lengths_table("Tokens per pair (mean / max)", ("prompt", "chosen", "rejected"))
    for split, stats in (("train", summary.train_lengths), ("test", summary.test_lengths)):
        lengths.add_row(
            split,
            *(
                f"{getattr(stats, f'{side}_mean'):.1f} / {getattr(stats, f'{side}_max')}"
                for side in ("prompt", "chosen", "rejected")
            ),
        )
    console.print(lengths)



@dataclass(frozen=True)
class SequenceLengthStats:
    """Tokens per sequence of one split (after any max_length cut), and of those the trained ones."""

    tokens_mean: float = 0.0
    tokens_max: int = 0
    trained_mean: float = 0.0
    trained_max: float = 0
    trained_total: float = 0

    @classmethod
    def of(cls, sequences: Sequence) -> SequenceLengthStats:
        """From `SupervisedSequence`s."""
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


def print_supervised_summary(summary: SupervisedDataSummary, console: Console | None = None, note: str = "") -> None:
    """A short table of rows read, conversations kept, skips by reason and token lengths (`note`: see
    `print_summary`)."""
    console = console or Console()
    counts = counts_table(f"Supervised data: {summary.name}", summary.rows_read, note)
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


@dataclass(frozen=True)
class UnpairedLengthStats:
    """Token counts of one split's unpaired examples: the prompt, and the completion after any cut."""

    prompt_mean: float = 0.0
    prompt_max: int = 0
    completion_mean: float = 0.0
    completion_max: int = 0


@dataclass(frozen=True)
class UnpairedDataSummary:
    name: str
    rows_read: dict[str, int]  # per source split
    train_examples: int
    test_examples: int
    train_desirable: int  # of train_examples, how many are desirable
    test_desirable: int
    skipped: dict[str, int]  # reason -> rows (all splits; building and tokenizing)
    skip_examples: dict[str, str] = field(default_factory=dict)
    unused_examples: int = 0  # usable examples left out by max_examples / test_size
    truncated_examples: int = 0  # kept examples whose completion max_length cut
    max_length: int | None = None
    train_lengths: UnpairedLengthStats = field(default_factory=UnpairedLengthStats)
    test_lengths: UnpairedLengthStats = field(default_factory=UnpairedLengthStats)

    def as_metrics(self) -> dict[str, float]:
        metrics = count_metrics(
            self.rows_read,
            {"train_examples": self.train_examples, "test_examples": self.test_examples,
             "train_desirable": self.train_desirable, "test_desirable": self.test_desirable,
             "unused_examples": self.unused_examples, "truncated_examples": self.truncated_examples},
            self.skipped,
        )
        for split, stats in (("train", self.train_lengths), ("test", self.test_lengths)):
            for side in ("prompt", "completion"):
                metrics[f"data/{split}/{side}_tokens_mean"] = getattr(stats, f"{side}_mean")
                metrics[f"data/{split}/{side}_tokens_max"] = getattr(stats, f"{side}_max")
        return metrics


def print_unpaired_summary(summary: UnpairedDataSummary, console: Console | None = None, note: str = "") -> None:
    """Rows read, examples kept (desirable / undesirable), skips by reason and token lengths."""
    console = console or Console()
    counts = counts_table(f"Unpaired data: {summary.name}", summary.rows_read, note)
    for split in ("train", "test"):
        total, desirable = getattr(summary, f"{split}_examples"), getattr(summary, f"{split}_desirable")
        counts.add_row(f"{split} examples", f"{total:,}", f"{desirable:,} desirable, {total - desirable:,} undesirable")
    if summary.unused_examples:
        counts.add_row("unused examples", f"{summary.unused_examples:,}", "left out by max_examples / test_size")
    if summary.truncated_examples:
        counts.add_row("truncated", f"{summary.truncated_examples:,}", f"completion cut to max_length={summary.max_length}")
    add_skip_rows(counts, summary.skipped, summary.skip_examples)
    console.print(counts)
    lengths = lengths_table("Tokens per example (mean / max)", ("prompt", "completion"))
    for split, stats in (("train", summary.train_lengths), ("test", summary.test_lengths)):
        lengths.add_row(split, *(f"{getattr(stats, f'{side}_mean'):.1f} / {getattr(stats, f'{side}_max')}"
                                 for side in ("prompt", "completion")))
    console.print(lengths)


def print_supervised_example(console: Console, tokenizer, sequence) -> None:
    """One tokenized training example, its trained tokens highlighted."""
    text = weighted_tokens_text(tokenizer, sequence.tokens, sequence.weights)
    console.print(Panel(text, title="training example (green = trained tokens)"))

# -- the parts both summaries are made of -------------------------------------------------------------


def mean_and_max(values: Sequence[float]) -> tuple[float, float]:
    """(mean, max) of a non-empty sequence."""
    return sum(values) / len(values), max(values)


def count_metrics(
    rows_read: Mapping[str, int], counts: Mapping[str, float], skipped: Mapping[str, int]
) -> dict[str, float]:
    """`data/rows_read`, then `data/<name>` for each of `counts`, then `data/skipped/<reason>` for every
    skip reason, zero or not (so the keys never depend on the data)."""
    metrics: dict[str, float] = {"data/rows_read": sum(rows_read.values())}
    metrics.update({f"data/{name}": value for name, value in counts.items()})
    for reason in SKIP_REASONS:
        metrics[f"data/skipped/{reason}"] = skipped.get(reason, 0)
    return metrics


def counts_table(title: str, rows_read: Mapping[str, int], note: str = "") -> Table:
    """A headerless (name, count, note) table that opens with the rows read per source split; `note`
    goes under it as a caption."""
    table = Table(title=Text(title), show_header=False, title_justify="left",
                  caption=Text(note) if note else None, caption_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    reads = ", ".join(f"{split} {rows:,}" for split, rows in rows_read.items())
    table.add_row("rows read", f"{sum(rows_read.values()):,}", Text(reads))
    return table


def lengths_table(title: str, columns: Sequence[str]) -> Table:
    """A table with a `split` column, then `columns` of figures (right-aligned)."""
    table = Table(title=title, title_justify="left")
    table.add_column("split", justify="left")
    for column in columns:
        table.add_column(column, justify="right")
    return table


def add_skip_rows(table: Table, skipped: Mapping[str, int], skip_examples: Mapping[str, str]) -> None:
    """One row per skip reason that occurred, with its first example (shortened)."""
    for reason, count in sorted(skipped.items()):
        if count:
            table.add_row(f"skipped: {reason}", f"{count:,}", Text(_shorten(skip_examples.get(reason, ""))))


def _shorten(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
