"""Task names the `run_inspect_evals` command understands.

- Our bundled tasks: `cookbook/ifeval`, `cookbook/preference` (they work with no network).
- `inspect_evals/ifeval` is mapped to `cookbook/ifeval` with a printed note: the inspect_evals
  package is not on PyPI, and ours scores with the same checkers.
- Any other name is handed to inspect unchanged (`inspect_evals/<task>`, `path/to/file.py@task`),
  after checking that inspect can find it, so a typo fails before a model is loaded.
"""

from __future__ import annotations

from collections.abc import Callable

from inspect_ai import Task

from cookbook.eval.ifeval import ifeval
from cookbook.eval.preference import preference

BUNDLED_TASKS: dict[str, Callable[..., Task]] = {
    "cookbook/ifeval": ifeval,
    "cookbook/preference": preference,
}
ALIASES = {
    "inspect_evals/ifeval": "cookbook/ifeval",
    "ifeval": "cookbook/ifeval",
    "preference": "cookbook/preference",
}


class UnknownTaskError(ValueError):
    """A task name that is neither bundled nor resolvable by inspect."""


def split_task_names(tasks: str) -> list[str]:
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    if not names:
        raise UnknownTaskError(f"tasks={tasks!r} names no task; choose from {', '.join(BUNDLED_TASKS)}")
    return names


def canonical_task_name(name: str) -> str:
    """Our name for `name`, printing a note when an alias maps it to a bundled task."""
    target = ALIASES.get(name, name)
    if target != name and name.startswith("inspect_evals/"):
        print(f"note: {name} needs the inspect_evals package (not on PyPI); running {target} instead, "
              "which uses the same IFEval checkers")
    return target


def check_passthrough_task(name: str) -> None:
    """Raise UnknownTaskError unless `name` is a registered inspect task, an `hf/` task or a file
    that exists (looked up without building the task, so no data set is loaded twice)."""
    from pathlib import Path

    from inspect_ai._eval.loader import parse_spec_str
    from inspect_ai._util.registry import registry_lookup

    hint = f"bundled tasks: {', '.join(BUNDLED_TASKS)}; or any task inspect can load (e.g. inspect_evals/<task>)"
    package = name.split("/")[0] if "/" in name else None
    if package == "inspect_evals":
        import importlib.util

        if importlib.util.find_spec("inspect_evals") is None:
            raise UnknownTaskError(f"task {name!r} needs the inspect_evals package, which is not installed ({hint})")
    if registry_lookup("task", name) is not None or name.startswith("hf/"):
        return
    file, _ = parse_spec_str(name)
    if file is not None and Path(file).exists():
        return
    raise UnknownTaskError(f"unknown task {name!r} ({hint})")


def resolve_task_names(names: list[str]) -> list[str]:
    """Canonical names, each checked (our bundled tasks, or one inspect can find); notes are printed."""
    resolved = []
    for name in names:
        name = canonical_task_name(name)
        if name not in BUNDLED_TASKS:
            check_passthrough_task(name)
        resolved.append(name)
    return resolved


def build_tasks(names: list[str], task_args: dict[str, dict] | None = None) -> list[Task | str]:
    """Task objects for our (canonical) names; other names stay strings for inspect to resolve."""
    task_args = task_args or {}
    return [BUNDLED_TASKS[name](**task_args.get(name, {})) if name in BUNDLED_TASKS else name for name in names]
