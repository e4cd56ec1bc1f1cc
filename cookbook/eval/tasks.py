"""Task names the `run_inspect_evals` command understands.

- Our bundled tasks: `cookbook/ifeval`, `cookbook/preference` (they work with no network).
- `inspect_evals/<task>` runs the task of the `inspect-evals` package (PyPI) when it is installed.
  `inspect_evals/ifeval` needs more than the package: its IFEval extra (`instruction_following_eval`,
  installable only from git) and the hub (it downloads google/IFEval). Where either is missing, or
  the package is, it runs our `cookbook/ifeval` instead, which scores with the same checkers on
  bundled prompts; a printed note says which one ran and why.
- Any other name is handed to inspect unchanged (`inspect_evals/<task>`, `path/to/file.py@task`),
  after checking that inspect can find it, so a typo fails before a model is loaded.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from pathlib import Path

from inspect_ai import Task

from cookbook.errors import UserError
from cookbook.eval.ifeval import ifeval
from cookbook.eval.preference import preference
from cookbook.models import hub_offline

BUNDLED_TASKS: dict[str, Callable[..., Task]] = {
    "cookbook/ifeval": ifeval,
    "cookbook/preference": preference,
}
ALIASES = {
    "ifeval": "cookbook/ifeval",
    "preference": "cookbook/preference",
}
INSPECT_EVALS_IFEVAL = "inspect_evals/ifeval"
INSTALL_INSPECT_EVALS = "pip install inspect-evals, or pip install 'cookbook[inspect-evals]'"


class UnknownTaskError(UserError, ValueError):
    """A task name that is neither bundled nor resolvable by inspect."""


def registration_problem() -> str | None:
    """Why inspect does not know our tasks by their `cookbook/...` names, or None when it does.

    inspect names a task after the distribution that ships its module. A second `cookbook` metadata
    folder earlier on sys.path (an `cookbook.egg-info` an older editable install left in the current
    directory) hides the installed one, and inspect then registers `ifeval` without its prefix, so
    `inspect eval cookbook/ifeval` finds nothing."""
    from inspect_ai._util.registry import registry_lookup

    if registry_lookup("task", "cookbook/ifeval") is not None:
        return None
    found = [str(Path(getattr(d, "_path", "?")).resolve()) for d in importlib.metadata.distributions() if d.metadata["Name"] == "cookbook"]
    return ("inspect does not know the cookbook tasks by name (cookbook/ifeval): the package metadata it reads is "
            f"{found[0] if found else 'missing'}" + (f", which hides {', '.join(found[1:])}" if len(found) > 1 else "")
            + ". Delete a stale cookbook.egg-info there (or reinstall with bash scripts/setup.sh); this command "
            "still runs its tasks, but `inspect eval cookbook/...` would not find them.")


def split_task_names(tasks: str) -> list[str]:
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    if not names:
        raise UnknownTaskError(f"tasks={tasks!r} names no task; choose from {', '.join(BUNDLED_TASKS)}")
    return names


def inspect_evals_version() -> str | None:
    """The installed inspect-evals version, or None when the package is not importable."""
    if importlib.util.find_spec("inspect_evals") is None:
        return None
    try:
        return importlib.metadata.version("inspect-evals")
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def ifeval_choice(package_version: str | None, has_ifeval_extra: bool, hub_offline: bool) -> tuple[str, str]:
    """(task to run, note saying which IFEval that is and why) for `inspect_evals/ifeval`."""
    if package_version is None:
        reason = f"the inspect_evals package is not installed ({INSTALL_INSPECT_EVALS})"
    elif not has_ifeval_extra:
        reason = (f"inspect-evals {package_version} is installed without its IFEval dependency "
                  "instruction_following_eval, which installs only from git "
                  "(pip install git+https://github.com/josejg/instruction_following_eval)")
    elif hub_offline:
        reason = "the hub is offline (HF_HUB_OFFLINE) and inspect_evals/ifeval downloads google/IFEval"
    else:
        return INSPECT_EVALS_IFEVAL, f"note: {INSPECT_EVALS_IFEVAL}: running inspect-evals {package_version}'s task"
    return "cookbook/ifeval", (f"note: {INSPECT_EVALS_IFEVAL}: running cookbook/ifeval instead (bundled "
                               f"prompts, the same IFEval checkers): {reason}")


def canonical_task_name(name: str) -> str:
    """Our name for `name`, printing a note when `inspect_evals/ifeval` is decided."""
    if name == INSPECT_EVALS_IFEVAL:
        has_extra = importlib.util.find_spec("instruction_following_eval") is not None
        target, note = ifeval_choice(inspect_evals_version(), has_extra, hub_offline(for_datasets=True))
        print(note)
        return target
    return ALIASES.get(name, name)


def check_passthrough_task(name: str) -> None:
    """Raise UnknownTaskError unless `name` is a registered inspect task, an `hf/` task or a file
    that exists (looked up without building the task, so no data set is loaded twice)."""
    from inspect_ai._eval.loader import parse_spec_str
    from inspect_ai._util.registry import registry_lookup

    hint = f"bundled tasks: {', '.join(BUNDLED_TASKS)}; or any task inspect can load (e.g. inspect_evals/<task>)"
    package = name.split("/")[0] if "/" in name else None
    if package == "inspect_evals" and inspect_evals_version() is None:
        raise UnknownTaskError(f"task {name!r} needs the inspect_evals package, which is not installed "
                               f"({INSTALL_INSPECT_EVALS}; {hint})")
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
