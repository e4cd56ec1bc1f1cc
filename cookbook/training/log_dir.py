"""What to do when `log_path` already holds a run, and turning Ctrl-C into a clean stop."""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path
from typing import Literal

LogDirBehavior = Literal["ask", "resume", "delete", "raise"]


class LogDirExistsError(RuntimeError):
    pass


def check_log_path_creatable(log_path: str) -> None:
    """Fail early, naming the field, when log_path cannot be created or written."""
    path = Path(log_path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"log_path={log_path!r} cannot be created: {error.strerror or error}") from None
    if not path.is_dir():
        raise ValueError(f"log_path={log_path!r} exists and is not a directory")


def has_previous_run(log_path: str) -> bool:
    path = Path(log_path)
    return path.is_dir() and any(path.iterdir())


def decide_log_dir(log_path: str, behavior: LogDirBehavior) -> Literal["fresh", "resume"]:
    """Apply `behavior_if_log_dir_exists`; returns whether to start fresh or resume.

    `ask` prompts on a terminal; without one (CI, nohup, a pipe) it acts as `raise` rather than
    waiting forever for an answer nobody can give.
    """
    if not has_previous_run(log_path):
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
        shutil.rmtree(log_path)
        Path(log_path).mkdir(parents=True)
        return "fresh"
    raise LogDirExistsError(
        f"log_path={log_path!r} already holds a run. Pass behavior_if_log_dir_exists=resume to continue it, "
        "=delete to start over, or choose another log_path."
    )


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
