"""Showing a person what the trainer sees: the resolved config, which tokens carry loss, and at
the end of a run what it produced and what to run next.

How far a run has got: a live line under the step tables with step / total, elapsed time, ETA,
tokens/s and the latest loss and accuracy.

    with TrainingProgress(console, total_steps, start_step, display=config.display) as progress:
        for step in ...:
            ...
            progress.update(done, metrics)
            with progress.paused():          # another bar (an eval, a precompute) has the terminal
                ...

On a terminal (`display=rich`) the line is a rich Live display: tables printed through the same
console appear above it, and it redraws twice a second so the elapsed time moves. Where a live
line would leave cursor codes in a file (no TTY, as under CI or `> log.txt`), or with
`display=plain`, each update prints one plain line instead. A quiet console (ranks other than 0)
shows nothing.

ETA is the remaining steps times the mean wall time per step so far in this process, evals and
checkpoints included, since they recur at the same rate; tokens/s is tokens over the steps' own
time (`batch_time`), the training throughput.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from cookbook.training.metrics import format_value, read_metrics

# Held-out metrics the end-of-run summary shows, when the run logged them.
HEADLINE_METRICS: tuple[str, ...] = (
    "test/loss", "test/dpo_loss", "test/accuracy", "test/margin", "test/logp_accuracy", "test/nll",
)


def make_console(display: Display = "rich", quiet: bool = False) -> Console:
    """The run's console. `plain` never writes colour or cursor codes, even on a terminal, so the
    output reads the same in a log file; `rich` styles only when the output is a terminal."""
    if display == "plain":
        return Console(quiet=quiet, force_terminal=False, no_color=True, highlight=False)
    return Console(quiet=quiet)


def print_config(console: Console, config_dict: dict) -> None:
    console.print(Panel(json.dumps(config_dict, indent=2, default=str), title="config", expand=False))


def weighted_tokens_text(tokenizer, tokens: list[int], weights: list[float]) -> Text:
    """Tokens decoded one by one: green where they carry loss, dim where they do not."""
    text = Text()
    for token, weight in zip(tokens, weights):
        piece = tokenizer.decode([token])
        text.append(piece, style="bold green" if weight > 0 else "dim")
    return text


def print_pair(console: Console, tokenizer, pair) -> None:
    console.print(Panel(weighted_tokens_text(tokenizer, pair.chosen.tokens, pair.chosen.weights), title="chosen (green = trained tokens)"))
    console.print(Panel(weighted_tokens_text(tokenizer, pair.rejected.tokens, pair.rejected.weights), title="rejected"))


def format_wall_time(seconds: float) -> str:
    """`4 min 2 s`, `1 h 3 min`, `42 s`."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def held_out_change(records: list[dict], keys=HEADLINE_METRICS) -> tuple[int, int, dict[str, tuple[float, float]]]:
    """(first eval step, last eval step, {key: (first, last)}) over the evals in `records`."""
    evals = [r for r in records if any(k in r for k in keys)]
    if not evals:
        return 0, 0, {}
    first, last = evals[0], evals[-1]
    change = {k: (first[k], last[k]) for k in keys if k in first and k in last}
    return first["step"], last["step"], change


def next_eval_command(final_path: str | Path, compare_model: str | None = None,
                      tasks: str = "cookbook/ifeval") -> str:
    """The run_inspect_evals command for a checkpoint, against the model it started from."""
    words = ["python", "-m", "cookbook.eval.run_inspect_evals", f"model_path={final_path}"]
    if compare_model:
        words.append(f"compare_model_path={compare_model}")
    words.append(f"tasks={tasks}")
    return shlex.join(words)


def print_run_summary(console: Console, log_path: str | Path, final_path: str | Path, wall_seconds: float,
                      eval_command: str, next_label: str = "evaluate it next:") -> None:
    """Where the checkpoint is, held-out metrics before -> after, wall time, and what to run next
    (`eval_command`, under `next_label`). Lines are printed without wrapping so the command can be
    copied as it is."""
    log_path = Path(log_path)
    records = read_metrics(log_path)
    last_step = max((r["step"] for r in records), default=0)
    first_eval, last_eval, change = held_out_change(records)

    def say(text: str = "") -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    console.rule("run finished")
    say(f"{last_step} steps, {format_wall_time(wall_seconds)} wall clock")
    say(f"final checkpoint: {final_path}")
    if change:
        say(f"held-out, step {first_eval} -> step {last_eval}:")
        width = max(len(k) for k in change)
        for key, (before, after) in change.items():
            say(f"  {key:<{width}}  {format_value(before)} -> {format_value(after)}")
    if (log_path / "metrics.png").exists():
        say(f"curves: {log_path / 'metrics.png'}")
    say(next_label)
    say(f"  {eval_command}")


Display = Literal["rich", "plain"]
DISPLAYS: tuple[str, ...] = ("rich", "plain")
# The loss of each recipe (`loss`, DPO's `dpo_loss`) and the pairwise accuracy where there is one.
SHOWN_METRICS: tuple[str, ...] = ("loss", "dpo_loss", "accuracy")


def format_duration(seconds: float | None) -> str:
    """`m:ss`, or `h:mm:ss` from an hour on; `?` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(step: int, total: int, elapsed: float, eta: float | None, tokens_per_second: float | None,
                  shown: dict[str, float]) -> str:
    """`step 12/20 | elapsed 1:23 | ETA 0:55 | 273 tok/s | dpo_loss 0.4703 | accuracy 0.8750`"""
    parts = [f"step {step}/{total}", f"elapsed {format_duration(elapsed)}", f"ETA {format_duration(eta)}"]
    if tokens_per_second is not None:
        parts.append(f"{tokens_per_second:,.0f} tok/s")
    parts += [f"{key} {value:.4f}" for key, value in shown.items()]
    return " | ".join(parts)


class TrainingProgress:
    def __init__(self, console: Console, total_steps: int, start_step: int = 0, display: Display = "rich",
                 shown_metrics: Sequence[str] = SHOWN_METRICS, clock: Callable[[], float] = time.monotonic):
        if display not in DISPLAYS:
            raise ValueError(f"display={display!r} is not one of {', '.join(DISPLAYS)}")
        self.console, self.total_steps, self.start_step = console, total_steps, start_step
        self.shown_metrics, self.clock = tuple(shown_metrics), clock
        self.live_line = display == "rich" and console.is_terminal and not console.is_dumb_terminal
        self.step = start_step
        self.shown: dict[str, float] = {}
        self.tokens = 0.0
        self.step_seconds = 0.0
        self.started_at: float | None = None
        self.last_update_at: float | None = None
        self._live: Live | None = None

    # -- the numbers ----------------------------------------------------------------------------
    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else self.clock() - self.started_at

    def eta(self) -> float | None:
        steps_done = self.step - self.start_step
        if steps_done <= 0 or self.last_update_at is None or self.started_at is None:
            return None
        per_step = (self.last_update_at - self.started_at) / steps_done
        return per_step * (self.total_steps - self.step)

    def tokens_per_second(self) -> float | None:
        return self.tokens / self.step_seconds if self.tokens and self.step_seconds > 0 else None

    def line(self) -> str:
        return progress_line(self.step, self.total_steps, self.elapsed(), self.eta(), self.tokens_per_second(),
                             self.shown)

    # -- the loop's calls -----------------------------------------------------------------------
    def start(self) -> TrainingProgress:
        if self.started_at is None:
            self.started_at = self.clock()
        if self.live_line and not self.console.quiet and self._live is None:
            # transient: the live line is erased when stopped (for a pause or at the end) rather than
            # left behind as a stale copy; close() prints the last state once.
            self._live = Live(self, console=self.console, refresh_per_second=2, transient=True)
            self._live.start()
        return self

    def update(self, step: int, metrics: dict) -> None:
        """After the optimizer step that makes `step` steps done, with that step's metrics."""
        if self.started_at is None:
            self.start()
        now = self.clock()
        previous = self.last_update_at if self.last_update_at is not None else self.started_at
        self.step, self.last_update_at = step, now
        self.tokens += float(metrics.get("num_tokens", 0) or 0)
        batch_time = metrics.get("batch_time")
        self.step_seconds += float(batch_time) if batch_time is not None else now - previous
        self.shown = {k: float(metrics[k]) for k in self.shown_metrics if isinstance(metrics.get(k), int | float)}
        if self.console.quiet:
            return
        if self._live is not None:
            self._live.refresh()
        else:
            self.console.print(self.line(), markup=False, highlight=False, soft_wrap=True)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hide the live line while something else draws its own bar."""
        if self._live is None:
            yield
            return
        self._live.stop()
        self._live = None
        try:
            yield
        finally:
            self.start()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            if self.step > self.start_step:
                self.console.print(self.line(), markup=False, highlight=False, soft_wrap=True)

    def __enter__(self) -> TrainingProgress:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __rich__(self) -> Table:
        row = Table.grid(padding=(0, 1))
        row.add_row(ProgressBar(total=max(self.total_steps, 1), completed=self.step, width=24), Text(self.line()))
        return row
