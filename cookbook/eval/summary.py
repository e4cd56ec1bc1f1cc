"""Turning inspect's logs into a headline table and `summary.json`.

A row per (task, metric); a column per evaluated model, plus, when two are compared, their paired
difference with a 95% interval: a paired bootstrap over samples. Each metric is written as a ratio
of per-sample sums (prompt-level accuracy: passed prompts / prompts; instruction-level: passed
instructions / instructions; a mean: values / samples), so one resample of the samples both models
answered (the same samples for both: that is the pairing) recomputes both models' metric exactly as
the task pools it; the interval is the 2.5th and 97.5th percentiles of the resampled differences
(`resamples` of them, from `seed`). A paired interval is much tighter than two separate ones,
because most of a sample's difficulty is shared by the two models.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# metric -> sample ("id#epoch") -> (numerator, denominator): the metric is sum(num) / sum(den)
SampleStats = dict[str, dict[str, tuple[float, float]]]
IFEVAL_LEVELS = {"prompt_level_strict": ("strict", "prompt"), "prompt_level_loose": ("loose", "prompt"),
                 "instruction_level_strict": ("strict", "instruction"),
                 "instruction_level_loose": ("loose", "instruction")}


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
    # Per-sample sums behind each metric (see SampleStats), for the paired interval; not in summary.json.
    sample_stats: SampleStats = field(default_factory=dict, repr=False, compare=False)


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
        sample_stats=sample_statistics(log) if log.status == "success" else {},
    )


def sample_statistics(log) -> SampleStats:
    """Per-sample (numerator, denominator) of each metric we can pool again: the bundled tasks'
    metrics, and for any other single-scorer task its `accuracy` / `mean` (the mean of the scores)."""
    stats: SampleStats = {}
    scorers = log.results.scores if log.results else []
    names = [name for score in scorers for name in score.metrics] if len(scorers) == 1 else []
    for sample in log.samples or []:
        if not sample.scores:
            continue
        score = next(iter(sample.scores.values()))
        key = f"{sample.id}#{sample.epoch}"
        meta = score.metadata or {}
        for name in names:
            if name in IFEVAL_LEVELS and IFEVAL_LEVELS[name][0] in meta:
                verdicts = meta[IFEVAL_LEVELS[name][0]]
                pair = ((float(all(verdicts)), 1.0) if IFEVAL_LEVELS[name][1] == "prompt"
                        else (float(sum(verdicts)), float(len(verdicts))))
            elif name == "mean_margin" and "margin" in meta:
                pair = (float(meta["margin"]), 1.0)
            elif name == "tie_rate" and "tie" in meta:
                pair = (float(meta["tie"]), 1.0)
            elif name in ("accuracy", "mean"):
                pair = (_as_float(score.value), 1.0)
            else:
                continue
            stats.setdefault(name, {})[key] = pair
    return stats


def _as_float(value) -> float:
    from inspect_ai.scorer import value_to_float

    return float(value_to_float()(value))


@dataclass(frozen=True)
class PairedDifference:
    """metric(a) - metric(b) on the samples both answered, with its paired-bootstrap interval."""

    a: float
    b: float
    difference: float
    ci_low: float
    ci_high: float
    samples: int
    resamples: int
    seed: int


def paired_difference(a: dict[str, tuple[float, float]], b: dict[str, tuple[float, float]], resamples: int,
                      seed: int, level: float = 0.95) -> PairedDifference | None:
    """Both metrics as sum(num) / sum(den) over the shared samples, their difference, and the central
    `level` interval of the difference over `resamples` paired resamples (with replacement) of those
    samples; None when they share no sample."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    num_a, den_a, num_b, den_b = (np.array([side[k][i] for k in shared], dtype=np.float64)
                                  for side in (a, b) for i in (0, 1))

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        total = den.sum(axis=-1)
        return np.divide(num.sum(axis=-1), total, out=np.zeros_like(total), where=total > 0)

    metric_a, metric_b = float(ratio(num_a, den_a)), float(ratio(num_b, den_b))
    rows = np.random.default_rng(seed).integers(0, len(shared), size=(resamples, len(shared)))
    differences = ratio(num_a[rows], den_a[rows]) - ratio(num_b[rows], den_b[rows])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return PairedDifference(metric_a, metric_b, metric_a - metric_b, float(low), float(high), len(shared),
                            resamples, seed)


def compare(results_by_label: dict[str, list[TaskResult]], resamples: int, seed: int) -> list[dict[str, Any]]:
    """For two labels (first - second), one row per (task, metric) with a paired interval."""
    if len(results_by_label) != 2:
        return []
    (label_a, results_a), (label_b, results_b) = results_by_label.items()
    by_task = {result.task: result for result in results_b}
    rows = []
    for result in results_a:
        other = by_task.get(result.task)
        if other is None:
            continue
        for metric in result.metrics:
            stats_a, stats_b = result.sample_stats.get(metric), other.sample_stats.get(metric)
            paired = paired_difference(stats_a, stats_b, resamples, seed) if stats_a and stats_b else None
            if paired is not None:
                rows.append({"task": result.task, "metric": metric, label_a: paired.a, label_b: paired.b,
                             **{k: v for k, v in asdict(paired).items() if k not in ("a", "b")},
                             "method": "paired bootstrap over samples, 95% percentile interval"})
    return rows


def failed(results: list[TaskResult]) -> list[TaskResult]:
    return [r for r in results if r.status != "success"]


def metrics_table(results_by_label: dict[str, list[TaskResult]], comparison: list[dict[str, Any]] | None = None):
    """A rich Table: task, metric, one column per model label (and, when two, their difference and
    its paired 95% interval from `comparison`)."""
    from rich.table import Table

    labels = list(results_by_label)
    table = Table(title="Eval results")
    table.add_column("task")
    table.add_column("metric")
    for label in labels:
        table.add_column(label, justify="right")
    intervals = {(row["task"], row["metric"]): row for row in comparison or []}
    if len(labels) == 2:
        table.add_column(f"{labels[0]} - {labels[1]}", justify="right")
        table.add_column("95% interval (paired)", justify="right")
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
            row = intervals.get((task, metric))
            cells.append(f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] n={row['samples']}" if row else "")
        table.add_row(task, metric, *cells)
    if intervals:
        first = next(iter(intervals.values()))
        table.caption = (f"interval: paired bootstrap over the samples both models answered, {first['resamples']:,} "
                         f"resamples, seed {first['seed']}")
    return table


def _cell(value: float | str | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_summary(path: Path, results_by_label: dict[str, list[TaskResult]], run: dict[str, Any],
                  comparison: list[dict[str, Any]] | None = None) -> Path:
    """`summary.json`: the run's settings, every task result per model label, and (two models) the
    paired difference of each metric with `ci_low`/`ci_high`."""
    payload = {
        "run": run,
        "results": {label: [_public(r) for r in results] for label, results in results_by_label.items()},
        "comparison": comparison or [],
        "ok": not any(failed(results) for results in results_by_label.values()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def _public(result: TaskResult) -> dict[str, Any]:
    values = asdict(result)
    del values["sample_stats"]
    return values
