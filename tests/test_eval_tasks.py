"""`inspect_evals/<task>` names: the real package's tasks when inspect-evals is installed, our
bundled IFEval when `inspect_evals/ifeval` cannot run here, and a note saying which one ran.

"Installed" is an installed distribution laid out in a temporary site-packages directory: a
package `inspect_evals` whose entry point registers two tasks with inspect, and its dist-info, the
way pip lays it out. inspect finds it through the same entry point and registry as the real one.
"""

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cookbook.eval.run_inspect_evals import cli
from cookbook.eval.tasks import (
    INSPECT_EVALS_IFEVAL,
    UnknownTaskError,
    build_tasks,
    ifeval_choice,
    resolve_task_names,
)

REGISTRY_SOURCE = '''
from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.scorer import includes
from inspect_ai.solver import generate


@task
def gsm8k():
    return Task(dataset=[Sample(input="What is 2 + 2?", target="4")], solver=generate(), scorer=includes())


@task
def ifeval():
    return Task(dataset=[Sample(input="Say hi.", target="hi")], solver=generate(), scorer=includes())
'''


def _forget_inspect_evals():
    from inspect_ai._util import registry
    from inspect_ai._util.entrypoints import clear_entry_points_state

    for name in [m for m in sys.modules if m == "inspect_evals" or m.startswith(("inspect_evals.", "instruction_following_eval"))]:
        del sys.modules[name]
    for key in [k for k in registry._registry if "inspect_evals/" in k]:
        del registry._registry[key]
    clear_entry_points_state()
    importlib.invalidate_caches()


@pytest.fixture
def installed_inspect_evals(tmp_path, monkeypatch):
    """inspect-evals 0.26.0 installed (without its IFEval extra) in a site-packages on sys.path."""
    site = tmp_path / "site-packages"
    package = site / "inspect_evals"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "_registry.py").write_text(REGISTRY_SOURCE)
    dist_info = site / "inspect_evals-0.26.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: inspect_evals\nVersion: 0.26.0\n")
    (dist_info / "entry_points.txt").write_text("[inspect_ai]\ninspect_evals = inspect_evals._registry\n")
    _forget_inspect_evals()
    monkeypatch.syspath_prepend(str(site))
    yield site
    monkeypatch.undo()
    _forget_inspect_evals()


def add_ifeval_extra(site):
    (site / "instruction_following_eval").mkdir()
    (site / "instruction_following_eval" / "__init__.py").write_text("")
    importlib.invalidate_caches()


def test_ifeval_choice_names_what_runs_and_why():
    target, note = ifeval_choice(None, False, False)
    assert target == "cookbook/ifeval" and "inspect_evals package is not installed (pip install inspect-evals" in note
    target, note = ifeval_choice("0.26.0", False, False)
    assert target == "cookbook/ifeval" and "0.26.0 is installed without its IFEval dependency" in note
    target, note = ifeval_choice("0.26.0", True, True)
    assert target == "cookbook/ifeval" and "hub is offline" in note
    target, note = ifeval_choice("0.26.0", True, False)
    assert target == INSPECT_EVALS_IFEVAL and note == "note: inspect_evals/ifeval: running inspect-evals 0.26.0's task"


def test_without_the_package(capsys):
    if importlib.util.find_spec("inspect_evals") is not None:
        pytest.skip("inspect-evals is installed here")
    assert resolve_task_names([INSPECT_EVALS_IFEVAL]) == ["cookbook/ifeval"]
    assert "running cookbook/ifeval instead" in capsys.readouterr().out
    with pytest.raises(UnknownTaskError, match=r"'inspect_evals/gsm8k' needs the inspect_evals package.*pip install inspect-evals"):
        resolve_task_names(["inspect_evals/gsm8k"])


def test_installed_package_resolves_its_tasks(installed_inspect_evals, capsys, monkeypatch):
    assert resolve_task_names(["inspect_evals/gsm8k", "cookbook/preference"]) == [
        "inspect_evals/gsm8k", "cookbook/preference"]
    with pytest.raises(UnknownTaskError, match="unknown task 'inspect_evals/no_such_task'"):
        resolve_task_names(["inspect_evals/no_such_task"])

    # Without the IFEval extra, or offline (the test default), the bundled IFEval runs.
    assert resolve_task_names([INSPECT_EVALS_IFEVAL]) == ["cookbook/ifeval"]
    assert "inspect-evals 0.26.0 is installed without its IFEval dependency" in capsys.readouterr().out
    add_ifeval_extra(installed_inspect_evals)
    assert resolve_task_names([INSPECT_EVALS_IFEVAL]) == ["cookbook/ifeval"]
    assert "hub is offline" in capsys.readouterr().out
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name)
    assert resolve_task_names([INSPECT_EVALS_IFEVAL]) == [INSPECT_EVALS_IFEVAL]
    assert "running inspect-evals 0.26.0's task" in capsys.readouterr().out
    assert build_tasks([INSPECT_EVALS_IFEVAL]) == [INSPECT_EVALS_IFEVAL]  # inspect resolves the name


def test_an_installed_task_runs_end_to_end(installed_inspect_evals, tiny_model_dir, tmp_path):
    status = cli([f"model_path={tiny_model_dir}", "renderer_name=chatml", "tasks=inspect_evals/gsm8k",
                  "max_tokens=2", "batch_size=1", "display=none", f"log_dir={tmp_path / 'logs'}"])
    assert status == 0
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    [result] = summary["results"]["model"]
    assert result["task"] == "inspect_evals/gsm8k" and result["status"] == "success" and result["samples"] == 1


def test_a_stale_egg_info_in_the_working_directory_is_named(tmp_path):
    """inspect names our tasks after the package metadata it finds first; a leftover cookbook.egg-info
    in the current directory hides the installed one, and the eval CLI says so (naming the folder)."""
    stale = tmp_path / "cookbook.egg-info"
    stale.mkdir()
    (stale / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: cookbook\nVersion: 0.0.0\n")
    (stale / "SOURCES.txt").write_text("cookbook/__init__.py\n")
    code = "from cookbook.eval.tasks import registration_problem; print(registration_problem())"
    shadowed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "does not know the cookbook tasks" in shadowed.stdout and str(stale) in shadowed.stdout
    clean = subprocess.run([sys.executable, "-c", code], cwd=tmp_path.parent, capture_output=True, text=True, check=True)
    assert clean.stdout.strip() == "None"


def test_building_the_package_writes_no_metadata_beside_the_sources(tmp_path):
    """The build backend puts cookbook.egg-info under build/, so no install leaves one in the repo root
    (pip's editable install asks the backend for its requirements and metadata, as here; plain
    setuptools writes cookbook.egg-info beside pyproject.toml for that)."""
    repo = Path(__file__).resolve().parents[1]
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns(".venv*", "build", "runs", "*.egg-info", ".git"))
    code = ("import sys; sys.path.insert(0, 'scripts'); import build_backend as backend; "
            "backend.get_requires_for_build_editable(); print(backend.prepare_metadata_for_build_editable('out'))")
    (copy / "out").mkdir()
    subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, check=True)
    assert list((copy / "out").glob("cookbook-*.dist-info"))
    assert not list(copy.glob("*.egg-info")) and list((copy / "build").glob("*.egg-info"))
