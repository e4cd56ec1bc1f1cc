"""Showing a person what the trainer sees: the resolved config, which tokens carry loss, and at
the end of a run what it produced and what to run next."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from cookbook.training.metrics import format_value, read_metrics
from cookbook.training.progress import Display

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
                      eval_command: str) -> None:
    """Where the checkpoint is, held-out metrics before -> after, wall time, and what to run next.
    Lines are printed without wrapping so the command can be copied as it is."""
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
    say("evaluate it next:")
    say(f"  {eval_command}")
