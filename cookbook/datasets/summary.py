"""What loading a preference data set did, as numbers to log and a short table to print.

`DatasetSummary.as_metrics()` gives flat keys (`data/train_pairs`, `data/skipped/tie`,
`data/train/chosen_tokens_mean`, ...) with every skip reason present, zero or not, so the keys of a
run's first log line never depend on the data. `print_summary` renders the same figures with rich.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cookbook.datasets.comparison import SKIP_REASONS
from cookbook.datasets.tokenize import TokenizedPair


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
    def of(cls, pairs: Sequence[TokenizedPair]) -> LengthStats:
        if not pairs:
            return cls()
        prompts = [pair.prompt_length for pair in pairs]
        chosen = [pair.chosen_completion_length for pair in pairs]
        rejected = [pair.rejected_completion_length for pair in pairs]
        return cls(
            prompt_mean=sum(prompts) / len(pairs),
            prompt_max=max(prompts),
            chosen_mean=sum(chosen) / len(pairs),
            chosen_max=max(chosen),
            rejected_mean=sum(rejected) / len(pairs),
            rejected_max=max(rejected),
        )


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
        metrics: dict[str, float] = {
            "data/rows_read": sum(self.rows_read.values()),
            "data/train_pairs": self.train_pairs,
            "data/test_pairs": self.test_pairs,
            "data/unused_pairs": self.unused_pairs,
            "data/truncated_pairs": self.truncated_pairs,
        }
        for reason in SKIP_REASONS:
            metrics[f"data/skipped/{reason}"] = self.skipped.get(reason, 0)
        for split, stats in (("train", self.train_lengths), ("test", self.test_lengths)):
            for side in ("prompt", "chosen", "rejected"):
                metrics[f"data/{split}/{side}_tokens_mean"] = getattr(stats, f"{side}_mean")
                metrics[f"data/{split}/{side}_tokens_max"] = getattr(stats, f"{side}_max")
        return metrics


def print_summary(summary: DatasetSummary, console: Console | None = None) -> None:
    """A short table of rows read, pairs kept, skips by reason and token lengths."""
    console = console or Console()
    counts = Table(title=Text(f"Preference data: {summary.name}"), show_header=False, title_justify="left")
    counts.add_column(style="bold")
    counts.add_column(justify="right")
    counts.add_column(style="dim")
    reads = ", ".join(f"{split} {rows:,}" for split, rows in summary.rows_read.items())
    counts.add_row("rows read", f"{sum(summary.rows_read.values()):,}", Text(reads))
    counts.add_row("train pairs", f"{summary.train_pairs:,}", "")
    counts.add_row("test pairs", f"{summary.test_pairs:,}", "")
    if summary.unused_pairs:
        counts.add_row("unused pairs", f"{summary.unused_pairs:,}", "left out by max_pairs / test_size")
    if summary.truncated_pairs:
        counts.add_row(
            "truncated", f"{summary.truncated_pairs:,}", f"completion cut to max_length={summary.max_length}"
        )
    for reason, count in sorted(summary.skipped.items()):
        if count:
            counts.add_row(
                f"skipped: {reason}", f"{count:,}", Text(_shorten(summary.skip_examples.get(reason, "")))
            )
    console.print(counts)

    lengths = Table(title="Tokens per pair (mean / max)", title_justify="left")
    for column in ("split", "prompt", "chosen", "rejected"):
        lengths.add_column(column, justify="left" if column == "split" else "right")
    for split, stats in (("train", summary.train_lengths), ("test", summary.test_lengths)):
        lengths.add_row(
            split,
            *(
                f"{getattr(stats, f'{side}_mean'):.1f} / {getattr(stats, f'{side}_max')}"
                for side in ("prompt", "chosen", "rejected")
            ),
        )
    console.print(lengths)


def _shorten(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
