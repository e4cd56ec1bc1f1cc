"""What to do when `log_path` already holds a run, and turning Ctrl-C into a clean stop.

A directory "holds a run of ours" only once a run reached training or wrote a checkpoint
(`holds_run`); the leftovers of a run that failed before its first step (config.json, the reference
cache, a step-0 eval) are simply started over. `delete` removes only what a run of ours writes
(`is_run_file`) and refuses a directory that holds anything else, naming it, so a mistyped log_path
never costs a user their own files.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Literal

from cookbook.errors import UserError
from cookbook.training.run_lock import LOCK_NAME

LogDirBehavior = Literal["ask", "resume", "delete", "raise"]

# Everything a run of ours may write directly under log_path (checkpoint directories and their
# staging copies are matched by RUN_DIR_PATTERN).
RUN_FILE_NAMES = frozenset({
    "config.json", "metrics.jsonl", "metrics.jsonl.tmp", "checkpoints.jsonl", "checkpoints.jsonl.tmp",
    "reference_logps.pt", "reference_logps.pt.tmp", "metrics.png", LOCK_NAME,
})
RUN_DIR_NAMES = frozenset({"tb", "rounds", "wandb"})
RUN_DIR_PATTERN = re.compile(r"(step_\d+|final)|\.(step_\d+|final)\.tmp-.+")
PLOT_TMP_PATTERN = re.compile(r"\.metrics\.png\.\d+\.tmp")
CHECKPOINT_MARKER = "cookbook_checkpoint.json"


class LogDirExistsError(UserError, RuntimeError):
    pass


class LogPathError(UserError, ValueError):
    """log_path cannot be used: it cannot be created, or it is a file."""


def check_log_path_creatable(log_path: str) -> None:
    """Fail early, naming the field, when log_path cannot be created or written."""
    path = Path(log_path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LogPathError(f"log_path={log_path!r} cannot be created: {error.strerror or error}") from None
    if not path.is_dir():
        raise LogPathError(f"log_path={log_path!r} exists and is not a directory")


def is_run_file(entry: Path) -> bool:
    """Whether `entry`, directly under a log_path, is something a run of ours writes."""
    name = entry.name
    if entry.is_dir() and not entry.is_symlink():
        if name in RUN_DIR_NAMES:
            return True
        match = RUN_DIR_PATTERN.fullmatch(name)
        # A finished checkpoint carries our metadata file; a staging copy may be half written.
        return bool(match) and (match.group(1) is None or (entry / CHECKPOINT_MARKER).is_file())
    return name in RUN_FILE_NAMES or bool(PLOT_TMP_PATTERN.fullmatch(name))


def foreign_entries(log_path: str | Path) -> list[Path]:
    """Entries of log_path that no run of ours writes, sorted by name."""
    path = Path(log_path)
    if not path.is_dir():
        return []
    return sorted((entry for entry in path.iterdir() if not is_run_file(entry)), key=lambda p: p.name)


def holds_run(log_path: str | Path) -> bool:
    """Whether log_path holds a run that reached training: a checkpoint, or a metrics record after step 0."""
    path = Path(log_path)
    if not path.is_dir():
        return False
    index = path / "checkpoints.jsonl"
    if index.is_file() and index.read_text(errors="replace").strip():
        return True
    # A checkpoint renamed into place just before a crash, before checkpoints.jsonl listed it.
    if any((entry / CHECKPOINT_MARKER).is_file() for entry in [*path.glob("step_*"), path / "final"]):
        return True
    return _metrics_reach_training(path / "metrics.jsonl")


def _metrics_reach_training(metrics_path: Path) -> bool:
    if not metrics_path.is_file():
        return False
    for line in metrics_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line; deciding whether a run exists must not fail on it
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > 0:
            return True
    return False


def decide_log_dir(log_path: str, behavior: LogDirBehavior) -> Literal["fresh", "resume"]:
    """Apply `behavior_if_log_dir_exists`; returns whether to start fresh or resume.

    Call it while holding the run's lock (`RunLock`), which it leaves in place. Files a run of ours
    left without reaching training are started over whatever `behavior` says; a directory holding
    other files is refused unless it holds a run to resume. `ask` prompts on a
    terminal; without one (CI, nohup, a pipe) it acts as `raise` rather than waiting forever for an
    answer nobody can give.
    """
    if not holds_run(log_path):
        foreign = foreign_entries(log_path)
        if foreign:
            raise LogDirExistsError(
                f"log_path={log_path!r} holds files that no run of ours wrote ({_describe(foreign)}); "
                "choose an empty or new log_path."
            )
        return "fresh"
    if behavior == "ask":
        if not sys.stdin.isatty():
            behavior = "raise"
        else:
            answer = input(f"{log_path} already holds a run. [r]esume, [d]elete it, or [a]bort? ").strip().lower()
            behavior = {"r": "resume", "d": "delete"}.get(answer[:1], "raise")
    if behavior == "resume":
        return "resume"
    if behavior == "delete":
        delete_run_files(log_path)
        return "fresh"
    raise LogDirExistsError(
        f"log_path={log_path!r} already holds a run. Pass behavior_if_log_dir_exists=resume to continue it, "
        "=delete to start over, or choose another log_path."
    )


def delete_run_files(log_path: str | Path) -> list[str]:
    """Remove what a run of ours wrote (the lock excepted: the caller holds it); returns the names
    removed. Refuses, removing nothing, when log_path holds anything else."""
    path = Path(log_path)
    foreign = foreign_entries(path)
    if foreign:
        raise LogDirExistsError(
            f"behavior_if_log_dir_exists=delete refused: log_path={str(log_path)!r} holds files that no run "
            f"of ours wrote ({_describe(foreign)}). Nothing was deleted; move them away or choose another log_path."
        )
    removed = []
    for entry in sorted(path.iterdir()):
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
    return removed


def _describe(entries: list[Path], limit: int = 5) -> str:
    names = [entry.name + ("/" if entry.is_dir() else "") for entry in entries]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class StopRequest:
    """First SIGINT/SIGTERM sets `requested` (the loop saves and exits at the step boundary);
    a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nReceived {signal.Signals(signum).name}: saving a checkpoint after this step, then exiting "
              "(press Ctrl-C again to stop at once).", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
