"""The raw record a benchmark invocation leaves under benchmarks/results/: the exact command,
package versions, machine facts (cores, memory, load average when it started and when it ended) and
every configuration's row, failed ones included, next to the headline computed from those rows.

A figure quoted in the docs names the JSON file it comes from; the file names the command that made
it, so one command reproduces one figure.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
PACKAGES = ("torch", "transformers", "trl", "datasets", "accelerate", "tokenizers")


def command_line(script: str, argv: list[str]) -> str:
    """The invocation as one shell line, paths relative to the repository root where they lie in it."""

    def relative(path: str) -> str:
        absolute = Path(os.path.abspath(path))
        return str(absolute.relative_to(REPO)) if absolute.is_relative_to(REPO) else path

    return shlex.join([relative(sys.executable), relative(script), *argv])


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    found["cookbook_commit"] = commit.stdout.strip() or None
    found["cookbook_tree_modified"] = bool(dirty.stdout.strip())
    return found


def machine() -> dict:
    facts = {"platform": platform.platform(), "cpus": os.cpu_count(),
             "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        facts["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        facts["cpu_bf16"] = any("avx512_bf16" in line for line in cpuinfo if line.startswith("flags"))
        facts["memory_gib"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return facts


def run_child(command: list[str], timeout: float, env: dict | None = None, tail_lines: int = 6) -> dict | str:
    """Run one configuration's subprocess: the JSON of its last `RESULT ` line, or why it has none
    (a string): timed out, killed (SIGKILL is usually the kernel's OOM killer: no traceback to
    show), or failed with the last lines of its output."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if done.returncode < 0:
        return f"killed by signal {-done.returncode} (SIGKILL: probably out of memory; try --jobs 1)"
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode == 0 and results:
        return json.loads(results[-1].removeprefix("RESULT "))
    tail = [line for line in (done.stderr or done.stdout).strip().splitlines() if "it/s]" not in line][-tail_lines:]
    return f"failed (exit {done.returncode}): " + " | ".join(tail)


def start_record(script: str, argv: list[str]) -> dict:
    """Everything known before the first configuration runs."""
    return {
        "command": command_line(script, argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "machine": {**machine(), "load_average_start": list(os.getloadavg())},
    }


def finish_record(record: dict, path: str | os.PathLike) -> Path:
    """Stamp the end (time, load average) and write the record as JSON."""
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record["machine"]["load_average_end"] = list(os.getloadavg())
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=_plain) + "\n")
    return out


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")


def trl_step_clock():
    """A TRL `TrainerCallback` keeping each step's wall and CPU seconds (`.wall`, `.cpu`), from one
    step's end to the next: the trainer fetches and collates a step's batches before
    `on_step_begin`, and our steps collate inside them, so both sides count that work."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.wall, self.cpu = [], []

        def on_train_begin(self, *_, **__):
            self.last, self.last_cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, *_, **__):
            now, now_cpu = time.perf_counter(), time.process_time()
            self.wall.append(now - self.last)
            self.cpu.append(now_cpu - self.last_cpu)
            self.last, self.last_cpu = now, now_cpu

    return StepClock()


def run_configuration(script: str, argv: list[str], spec: dict, threads: int, timeout: float) -> dict | str:
    """`script argv --run-one <spec as JSON>` in its own process at `threads` torch threads (so its
    peak RSS is its own): the child's RESULT dict, or why it failed."""
    command = [sys.executable, os.path.abspath(script), *argv, "--run-one", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    return run_child(command, timeout, env)
