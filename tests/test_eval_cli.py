"""`python -m cookbook.eval.run_inspect_evals` in-process: option errors, a run, a compare run, and
a non-zero exit when a task ends in error."""

import json

import chz
import pytest
from rich.console import Console

from cookbook.eval.run_inspect_evals import cli, default_log_dir
from cookbook.eval.summary import TaskResult, metrics_table
from cookbook.eval.tasks import UnknownTaskError, resolve_task_names
from cookbook.models import ModelNotFoundError


def test_missing_model_path(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(ModelNotFoundError, match=r"model_path=.*no-such-checkpoint.*no such directory"):
        cli([f"model_path={missing}", "display=none"])


def test_unknown_task(tiny_model_dir):
    with pytest.raises(UnknownTaskError, match=r"unknown task 'cookbook/nope'.*cookbook/ifeval"):
        cli([f"model_path={tiny_model_dir}", "tasks=cookbook/ifeval,cookbook/nope", "display=none"])


def test_unknown_renderer(tiny_model_dir):
    with pytest.raises(ValueError, match=r"renderer_name='not-a-renderer'.*chatml"):
        cli([f"model_path={tiny_model_dir}", "renderer_name=not-a-renderer", "display=none"])


def test_inspect_evals_ifeval_maps_to_ours(capsys):
    assert resolve_task_names(["inspect_evals/ifeval"]) == ["cookbook/ifeval"]
    assert "running cookbook/ifeval instead" in capsys.readouterr().out
    with pytest.raises(UnknownTaskError, match="needs the inspect_evals package"):
        resolve_task_names(["inspect_evals/gsm8k"])


def test_checkpoint_renderer_and_default_log_dir(tmp_path, tiny_model_dir):
    from cookbook.eval.provider import resolve_model_spec

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "cookbook_checkpoint.json").write_text(
        json.dumps({"renderer_name": "role_colon", "base_model_name": "smollm2-135m-instruct"})
    )
    assert resolve_model_spec(str(checkpoint)).renderer_name == "role_colon"
    assert resolve_model_spec(str(checkpoint), renderer_name="chatml").renderer_name == "chatml"
    assert default_log_dir(str(checkpoint)) == checkpoint / "inspect-logs"
    assert str(default_log_dir("smollm2-135m-instruct")) == "inspect-logs"


def test_compare_run_writes_summary_and_table(tiny_model_dir, tmp_path):
    status = cli([
        f"model_path={tiny_model_dir}", f"compare_model_path={tiny_model_dir}", "renderer_name=chatml",
        "compare_renderer_name=chatml", "tasks=preference", "limit=2",
        "max_tokens=4", "batch_size=2", "display=none", f"log_dir={tmp_path}",
    ])
    assert status == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] is True
    assert set(summary["results"]) == {"trained", "base"}
    for results in summary["results"].values():
        assert [r["task"] for r in results] == ["cookbook/preference"]
        assert results[0]["status"] == "success" and results[0]["samples"] == 2
        assert set(results[0]["metrics"]) == {"accuracy", "mean_margin", "tie_rate"}
    # Same weights on both sides: identical metrics, so every difference is +0.
    assert summary["results"]["trained"][0]["metrics"] == summary["results"]["base"][0]["metrics"]
    results = {label: [TaskResult(**r) for r in rows] for label, rows in summary["results"].items()}
    console = Console(width=200, record=True)
    console.print(metrics_table(results, summary["comparison"]))
    table = console.export_text()
    assert "trained - base" in table and "+0.0000" in table and "mean_margin" in table
    # Each metric's paired difference and its interval, over the 2 shared samples: all zero here.
    assert {row["metric"] for row in summary["comparison"]} == {"accuracy", "mean_margin", "tie_rate"}
    for row in summary["comparison"]:
        assert row["difference"] == row["ci_low"] == row["ci_high"] == 0 and row["samples"] == 2
        assert row["resamples"] == 10_000 and row["trained"] == row["base"]
    assert "95% interval (paired)" in table and "n=2" in table


def test_a_task_that_errors_gives_exit_status_1(tiny_model_dir, tmp_path):
    task_file = tmp_path / "broken_task.py"
    task_file.write_text(
        "from inspect_ai import Task, task\n"
        "from inspect_ai.dataset import Sample\n"
        "from inspect_ai.solver import solver\n\n"
        "@solver\n"
        "def explode():\n"
        "    async def solve(state, generate):\n"
        "        raise RuntimeError('this task always fails')\n"
        "    return solve\n\n"
        "@task\n"
        "def broken():\n"
        "    return Task(dataset=[Sample(input='hi', target='x')], solver=explode())\n"
    )
    status = cli([f"model_path={tiny_model_dir}", "renderer_name=chatml", f"tasks={task_file}@broken",
                  "display=none", f"log_dir={tmp_path / 'logs'}"])
    assert status == 1
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    assert summary["ok"] is False
    assert summary["results"]["model"][0]["status"] == "error"
    assert "this task always fails" in summary["results"]["model"][0]["error"]


def test_every_eval_module_imports():
    import importlib
    import pkgutil

    import cookbook.eval

    names = [m.name for m in pkgutil.iter_modules(cookbook.eval.__path__, "cookbook.eval.")]
    assert "cookbook.eval.provider" in names
    for name in names:
        importlib.import_module(name)


def test_entry_point_registers_the_model_api():
    from importlib.metadata import entry_points

    from inspect_ai._util.registry import registry_lookup

    (entry,) = [e for e in entry_points(group="inspect_ai") if e.name == "cookbook"]
    entry.load()
    assert registry_lookup("modelapi", "cookbook") is not None or registry_lookup("modelapi", "cookbook/cookbook")
    assert registry_lookup("task", "cookbook/ifeval") is not None


def test_ifeval_source_reaches_the_task(tiny_model_dir, tmp_path):
    """`ifeval_source=bundled` pins the prompts a figure was measured on, whatever the network."""
    from inspect_ai.log import read_eval_log

    status = cli([f"model_path={tiny_model_dir}", "renderer_name=chatml", "tasks=cookbook/ifeval", "ifeval_source=bundled",
                  "limit=1", "max_tokens=2", "batch_size=1", "display=none", f"log_dir={tmp_path}"])
    assert status == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["run"]["ifeval_source"] == "bundled"
    log = read_eval_log(summary["results"]["model"][0]["log_file"])
    assert log.eval.dataset.name == "ifeval (bundled)"
    with pytest.raises(chz.blueprint.InvalidBlueprintArg, match="ifeval_source"):
        cli([f"model_path={tiny_model_dir}", "ifeval_source=nope"])


def test_sampler_reaches_the_provider(tiny_model_dir, tmp_path, capsys):
    """`sampler=` goes to the provider (and into the run summary); an unknown one is refused."""
    status = cli([f"model_path={tiny_model_dir}", "renderer_name=chatml", "tasks=cookbook/ifeval", "ifeval_source=bundled",
                  "sampler=native", "limit=1", "max_tokens=2", "batch_size=1", "display=none", f"log_dir={tmp_path}"])
    assert status == 0
    assert json.loads((tmp_path / "summary.json").read_text())["run"]["sampler"] == "native"
    assert "cookbook provider: native sampler (sampler=native)" in capsys.readouterr().out
    with pytest.raises(chz.blueprint.InvalidBlueprintArg, match="sampler"):
        cli([f"model_path={tiny_model_dir}", "sampler=nope"])
