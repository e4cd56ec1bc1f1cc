"""The two exceptions that decide how a command ends (see `cookbook/cli.py`).

`UserError` marks a mistake in what the user asked for (an option, a data file, a log directory, a
full disk): the command prints its message as one `error: ...` line and exits with status 2. Any
other exception is a bug of ours and keeps its traceback. Exception classes that describe a user's
mistake subclass it, next to the built-in class callers already catch (`class DataFileError(UserError,
ValueError)`), so code that catches ValueError keeps working.

`RunStopped` is how a training run says it stopped on request (Ctrl-C, SIGTERM) after saving a
resumable checkpoint: the command exits with status 130, as a shell does for an interrupted program.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input; its message alone (no traceback) tells them what to change."""


class RunStopped(Exception):
    """A run stopped on request after saving the resumable checkpoint `checkpoint_path` at `step`."""

    def __init__(self, step: int, checkpoint_path: str | Path | None = None):
        where = f"; resumable checkpoint {checkpoint_path}" if checkpoint_path else ""
        super().__init__(f"stopped at step {step}{where}")
        self.step = step
        self.checkpoint_path = checkpoint_path


class InvalidOptionError(UserError, ValueError):
    """An option's value that passed the config's checks but cannot be used, found once the run
    starts: an unknown renderer, `device=cuda` with no GPU, a batch larger than the data."""
