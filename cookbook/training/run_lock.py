"""`RunLock(log_path)`: one run at a time in a log directory.

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
import socket
import time
from pathlib import Path

from cookbook.errors import UserError

LOCK_NAME = "run.lock"


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
