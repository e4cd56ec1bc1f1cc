"""Turning inspect's logs into a headline table and `summary.json`.

A row per (task, metric); a column per evaluated model, plus the difference when two are compared.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TaskResult:
    """One task run by one model: its status, headline metrics and where inspect wrote the log."""

    task: str
    model: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    log_file: str | None = None
    error: str | None = None


def task_result(log) -> TaskResult:
    """Headline metrics of an inspect EvalLog; with several scorers the name is `scorer/metric`."""
    metrics: dict[str, float] = {}
    scores = log.results.scores if log.results else []
    for score in scores:
        for name, value in score.metrics.items():
            key = name if len(scores) == 1 else f"{score.name}/{name}"
            metrics[key] = float(value.value)
    error = None
    if log.error is not None:
        error = log.error.message
    return TaskResult(
        task=log.eval.task,
        model=log.eval.model,
        status=log.status,
        metrics=metrics,
        samples=log.results.completed_samples if log.results else 0,
        log_file=log.location or None,
        error=error,
    )


def failed(results: list[TaskResult]) -> list[TaskResult]:
    return [r for r in results if r.status != "success"]


def metrics_table(results_by_label: dict[str, list[TaskResult]]):
    """A rich Table: task, metric, one column per model label (and trained - base when two)."""
    from rich.table import Table

    labels = list(results_by_label)
    table = Table(title="Eval results")
    table.add_column("task")
    table.add_column("metric")
    for label in labels:
        table.add_column(label, justify="right")
    if len(labels) == 2:
        table.add_column(f"{labels[0]} - {labels[1]}", justify="right")
    rows: dict[tuple[str, str], dict[str, float | str]] = {}
    for label, results in results_by_label.items():
        for result in results:
            if result.status != "success":
                rows.setdefault((result.task, "status"), {})[label] = result.status
                continue
            for metric, value in result.metrics.items():
                rows.setdefault((result.task, metric), {})[label] = value
    for (task, metric), values in rows.items():
        cells = [_cell(values.get(label)) for label in labels]
        if len(labels) == 2:
            a, b = values.get(labels[0]), values.get(labels[1])
            cells.append(f"{a - b:+.4f}" if isinstance(a, float) and isinstance(b, float) else "")
        table.add_row(task, metric, *cells)
    return table


def _cell(value: float | str | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_summary(path: Path, results_by_label: dict[str, list[TaskResult]], run: dict[str, Any]) -> Path:
    """`summary.json`: the run's settings and every task result, per model label."""
    payload = {
        "run": run,
        "results": {label: [asdict(r) for r in results] for label, results in results_by_label.items()},
        "ok": not any(failed(results) for results in results_by_label.values()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
