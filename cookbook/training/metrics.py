"""One metrics sink: `log_metrics(metrics, step)` goes to metrics.jsonl, a rich table, and trackers.

Keys are flat and namespaced (`test/accuracy`, `data/train_pairs`). Only rank 0 builds a real
logger; other ranks get a `NullMetricLogger`, so calling code never checks the rank. Trackers
(Weights & Biases, TensorBoard) are optional and receive exactly the keys metrics.jsonl holds.

metrics.jsonl is appended one line per record, so a killed run can leave a torn last line;
`read_metrics` skips that line (the run may still be writing it) and names the file and line of
any other line that is not a JSON record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from rich.console import Console
from rich.table import Table

JSONL_NAME = "metrics.jsonl"


class MetricsFileError(ValueError):
    """A line of metrics.jsonl, other than a torn last one, is not a JSON record."""


class Tracker(Protocol):
    """An experiment tracker beside metrics.jsonl."""

    def log(self, metrics: dict, step: int) -> None: ...

    def close(self) -> None: ...


def format_value(value) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def metrics_table(metrics: dict, step: int) -> Table:
    table = Table(title=f"Step {step}", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        table.add_row(key, format_value(metrics[key]))
    return table


class MetricLogger:
    def __init__(self, log_path: str | Path, console: Console | None = None,
                 trackers: Tracker | Sequence[Tracker] | None = None, print_table: bool = True):
        self.path = Path(log_path) / JSONL_NAME
        self.console = console or Console()
        if trackers is None:
            trackers = []
        self.trackers: list[Tracker] = list(trackers) if isinstance(trackers, Sequence) else [trackers]
        self.print_table = print_table

    def log_metrics(self, metrics: dict, step: int) -> None:
        if not metrics:
            return
        record = {"step": step, **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.print_table:
            self.console.print(metrics_table(metrics, step))
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


class NullMetricLogger:
    def log_metrics(self, metrics: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class WandbTracker:
    def __init__(self, run):
        self.run = run

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class TensorBoardTracker:
    """Scalars under the same keys as metrics.jsonl (`test/accuracy` lands in TensorBoard's `test` group)."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SystemExit(
                f"tensorboard_dir={str(log_dir)!r} needs the tensorboard package: "
                "pip install 'cookbook[tensorboard]' (or drop tensorboard_dir)"
            ) from None
        # A short flush interval, so `tensorboard --logdir` shows a running job within seconds.
        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=10)

    def log(self, metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, int | float):
                self.writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


def start_wandb(project: str | None, config: dict, log_path: str) -> WandbTracker | None:
    """A wandb tracker, or None when no project is set; a clear error when wandb is missing."""
    if not project:
        return None
    try:
        import wandb
    except ImportError:
        raise SystemExit(
            f"wandb_project={project!r} needs the wandb package: pip install wandb (or drop wandb_project)"
        ) from None
    return WandbTracker(wandb.init(project=project, config=config, dir=log_path))


def start_trackers(config: dict, log_path: str | Path, wandb_project: str | None = None,
                   tensorboard_dir: str | None = None) -> list[Tracker]:
    """The trackers a run's options ask for (none by default)."""
    trackers: list[Tracker] = []
    wandb_tracker = start_wandb(wandb_project, config, str(log_path))
    if wandb_tracker is not None:
        trackers.append(wandb_tracker)
    if tensorboard_dir:
        trackers.append(TensorBoardTracker(tensorboard_dir))
    return trackers


def parse_metrics_lines(text: str, source: str | Path) -> list[dict]:
    """Records of a metrics.jsonl text; a last line that does not parse is taken as torn and
    skipped, any other raises MetricsFileError naming `source` and the line."""
    lines = text.splitlines()
    last = max((number for number, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == last:
                break  # torn by a kill in the middle of a write, or still being written
            raise MetricsFileError(f"{source}:{number + 1}: not a JSON record ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise MetricsFileError(f"{source}:{number + 1}: a record must be a JSON object with an integer 'step'")
        records.append(record)
    return records


def read_metrics(log_path: str | Path) -> list[dict]:
    """The records of `log_path/metrics.jsonl` in file order ([] when there is none yet)."""
    path = Path(log_path) / JSONL_NAME
    if not path.exists():
        return []
    return parse_metrics_lines(path.read_text(), path)


def truncate_metrics(log_path: str | Path, last_step: int) -> None:
    """Drop records after `last_step` (and a torn last line), so a resumed run does not log those
    steps twice and its first record starts on a line of its own."""
    path = Path(log_path) / JSONL_NAME
    if not path.exists():
        return
    kept = [r for r in read_metrics(log_path) if r["step"] <= last_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(path)
