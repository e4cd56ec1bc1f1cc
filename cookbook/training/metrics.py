"""One metrics sink: `log_metrics(metrics, step)` goes to metrics.jsonl, a rich table, and wandb.

Keys are flat and namespaced (`test/accuracy`, `data/train_pairs`). Only rank 0 builds a real
logger; other ranks get a `NullMetricLogger`, so calling code never checks the rank.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

JSONL_NAME = "metrics.jsonl"


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
    def __init__(self, log_path: str | Path, console: Console | None = None, wandb_run=None, print_table: bool = True):
        self.path = Path(log_path) / JSONL_NAME
        self.console = console or Console()
        self.wandb_run = wandb_run
        self.print_table = print_table

    def log_metrics(self, metrics: dict, step: int) -> None:
        record = {"step": step, **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.print_table:
            self.console.print(metrics_table(metrics, step))
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


class NullMetricLogger:
    def log_metrics(self, metrics: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def start_wandb(project: str | None, config: dict, log_path: str):
    """A wandb run, or None when no project is set; a clear error when wandb is missing."""
    if not project:
        return None
    try:
        import wandb
    except ImportError:
        raise SystemExit(
            f"wandb_project={project!r} needs the wandb package: pip install wandb (or drop wandb_project)"
        ) from None
    return wandb.init(project=project, config=config, dir=log_path)


def read_metrics(log_path: str | Path) -> list[dict]:
    path = Path(log_path) / JSONL_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(log_path: str | Path, last_step: int) -> None:
    """Drop records after `last_step`, so a resumed run does not log those steps twice."""
    path = Path(log_path) / JSONL_NAME
    if not path.exists():
        return
    kept = [r for r in read_metrics(log_path) if r["step"] <= last_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(path)
