"""The log directory: what to do when `log_path` already holds a run, one run at a time in it, and
turning Ctrl-C into a clean stop.

A directory "holds a run of ours" only once a run reached training or wrote a checkpoint
(`holds_run`); the leftovers of a run that failed before its first step (config.json, the reference
cache, a step-0 eval) are simply started over. `delete` removes only what a run of ours writes
(`is_run_file`) and refuses a directory that holds anything else, naming it, so a mistyped log_path
never costs a user their own files.

`RunLock(log_path)` keeps one run at a time in a log directory:

    with RunLock(config.log_path):
        ...  # decide fresh/resume/delete, train, checkpoint

Two processes in one log_path corrupt each other (a second `resume` truncates the live run's
metrics, a second `delete` removes its checkpoints), so a run holds `log_path/run.lock` for its
whole life and a second one fails at once, naming the holder. The lock is an OS lock (`flock`) on
that file, which the kernel drops when the holder exits however it exits (SIGKILL included), so a
lock left by a crash is never mistaken for a live one; the file's content (pid, host, start time) is
only there to name the holder. Where the filesystem has no `flock`, the pid and host decide: a
holder on this host whose process is gone is stale.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Literal

from cookbook.errors import UserError
from cookbook.models import METADATA_NAME

LogDirBehavior = Literal["ask", "resume", "delete", "raise"]

# Everything a run of ours may write directly under log_path (checkpoint directories and their
# staging copies are matched by RUN_DIR_PATTERN).
LOCK_NAME = "run.lock"
RUN_FILE_NAMES = frozenset({
    "config.json", "metrics.jsonl", "metrics.jsonl.tmp", "checkpoints.jsonl", "checkpoints.jsonl.tmp",
    "reference_logps.pt", "reference_logps.pt.tmp", "metrics.png", LOCK_NAME,
})
RUN_DIR_NAMES = frozenset({"tb", "rounds", "wandb"})
RUN_DIR_PATTERN = re.compile(r"(step_\d+|final)|\.(step_\d+|final)\.tmp-.+")
PLOT_TMP_PATTERN = re.compile(r"\.metrics\.png\.\d+\.tmp")


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
        return bool(match) and (match.group(1) is None or (entry / METADATA_NAME).is_file())
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
    if any((entry / METADATA_NAME).is_file() for entry in [*path.glob("step_*"), path / "final"]):
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


class RunLockedError(UserError, RuntimeError):
    """Another live process holds the log directory."""


class LockFileError(UserError, OSError):
    """The lock file cannot be created: log_path is not writable."""


class RunLock:
    """Exclusive lock on a log directory (which must exist); see the module docstring.

    After `acquire`, `stale_holder` is the holder record a crashed run left behind (None if none)."""

    def __init__(self, log_path: str | Path):
        self.log_path = Path(log_path)
        self.path = self.log_path / LOCK_NAME
        self.stale_holder: dict | None = None
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> RunLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as error:
                raise LockFileError(f"log_path={str(self.log_path)!r} is not writable: cannot create {self.path} "
                                    f"({error.strerror or error})") from None
            try:
                holder = _read_holder(fd)
                if not _lock(fd, holder):
                    raise RunLockedError(self._locked_message(holder))
                if _same_file(fd, self.path):
                    break
            except BaseException:
                os.close(fd)
                raise
            # The previous holder removed the file between our open and our lock: lock the new one.
            os.close(fd)
        self.stale_holder = holder or None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock; safe to call twice."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # Unlinked while still locked: a process that opened the old file then finds it is not
            # the current one (`_same_file`) and starts again.
            self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def _locked_message(self, holder: dict) -> str:
        who = (f"process {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')})"
               if holder else "another process (it is starting up)")
        return (f"log_path={str(self.log_path)!r} is in use by {who}; two runs in one log_path overwrite each "
                f"other's files. Wait for it to finish or stop it, or choose another log_path (lock: {self.path}).")

    @property
    def stale_message(self) -> str | None:
        """One line about the crashed run whose lock was taken over, for the run's console."""
        if not self.stale_holder:
            return None
        holder = self.stale_holder
        return (f"{self.path}: process {holder.get('pid')} on {holder.get('host')} held this log_path and is "
                "gone (crashed or killed); taking over.")


def _lock(fd: int, holder: dict) -> bool:
    """Whether the lock was taken; falls back to the pid and host where flock is unsupported."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    return not (holder and _holder_alive(holder))


def _holder_alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # on another machine: we cannot tell, so it counts as live
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read_holder(fd: int) -> dict:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode(errors="replace") or "{}")
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}
