"""Evaluate a model (and optionally compare it with another) on inspect-ai tasks.

    python -m cookbook.eval.run_inspect_evals model_path=/tmp/dpo/final tasks=cookbook/ifeval
    python -m cookbook.eval.run_inspect_evals model_path=/tmp/dpo/final \\
        compare_model_path=smollm2-135m-instruct tasks=cookbook/ifeval ifeval_source=bundled ifeval_split=test

With `compare_model_path` each metric gets both scores, their difference and its 95% interval from
a paired bootstrap over the samples (`summary.py`), since two models scored on the same 64 prompts
differ far less than each score's own spread suggests.

Writes inspect's own logs (view them with `inspect view --log-dir DIR`) and `summary.json` to `log_dir` (default: `<model_path>/inspect-logs` when model_path is a directory we can write, else
`./inspect-logs`), prints a table of every task's headline metrics, and exits with status 1 when
any task ended in error (2, with one `error: ...` line, for a bad option or a missing model; see
`cookbook/cli.py`). inspect's `eval()` reports a failed task as a log with status "error" instead of
raising, so the exit status is computed from the logs.

Models are served by the `cookbook` provider (`provider.py`), which renders with our renderer and
batches concurrent requests; `max_connections` is passed to inspect explicitly because inspect's
adaptive concurrency would otherwise ignore the provider's own limit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

import chz

from cookbook.cli import run_cli
from cookbook.errors import InvalidOptionError, UserError
from cookbook.models import DEFAULT_MODEL, hub_offline
from cookbook.sampling.vllm_engine import SamplerName

InferenceDType = Literal["auto", "float32", "bfloat16", "float16"]
DisplayType = Literal["full", "conversation", "rich", "plain", "log", "none"]
IFEvalSource = Literal["auto", "bundled", "hub"]
IFEvalSplit = Literal["all", "dev", "test"]


@chz.chz
class EvalConfig:
    model_path: str = chz.field(
        default=DEFAULT_MODEL, doc="a training checkpoint dir, a local HF dir, a hub id, or the bundled model"
    )
    model_name: str | None = chz.field(default=None, doc="base model, when the checkpoint does not record it")
    renderer_name: str | None = chz.field(
        default=None, doc="prompt format (default: what the checkpoint recorded, else the model's default)"
    )
    tasks: str = chz.field(default="cookbook/ifeval", doc="comma-separated task names")
    ifeval_source: IFEvalSource = chz.field(
        default="auto", doc="prompts of cookbook/ifeval: bundled (the 128 shipped with cookbook), hub (google/IFEval), "
                            "or auto (the hub when reachable, else bundled); name it when reproducing a figure")
    ifeval_split: IFEvalSplit = chz.field(
        default="all", doc="half of the bundled cookbook/ifeval prompts: test (figures are reported on it), dev (what "
                           "defaults are tuned on, the in-run eval's), or all 128")
    limit: int | None = chz.field(default=None, doc="evaluate at most this many samples per task")
    temperature: float = chz.field(default=0.0, doc="0 = greedy")
    max_tokens: int = chz.field(default=512, doc="most new tokens per reply")
    batch_size: int = chz.field(default=8, doc="requests the provider generates together")
    seed: int = chz.field(default=0, doc="sampling seed")
    log_dir: str | None = chz.field(default=None, doc="where logs and summary.json go (see module docstring)")
    max_connections: int | None = chz.field(default=None, doc="concurrent samples (default: 2 * batch_size)")
    compare_model_path: str | None = chz.field(default=None, doc="a second model, shown side by side")
    compare_model_name: str | None = chz.field(default=None, doc="base model of compare_model_path")
    compare_renderer_name: str | None = chz.field(default=None, doc="renderer of compare_model_path")
    device: str = chz.field(default="auto", doc="auto, cpu or cuda")
    dtype: InferenceDType = chz.field(
        default="auto",
        doc="inference weights (like training's export_dtype): auto (bf16 on a GPU with bf16, else float32), "
            "float32, bfloat16, float16",
    )
    num_threads: int | None = chz.field(
        default=None, doc="torch CPU threads (default: torch's choice; 1 is faster on an oversubscribed CPU)"
    )
    sampler: SamplerName = chz.field(
        default="auto", doc="who generates: auto (vllm when installed and it serves the model), vllm, native; "
                            "with compare_model_path both models share the process's one engine, each loading its weights")
    display: DisplayType = chz.field(default="full", doc="inspect's progress display")
    bootstrap_resamples: int = chz.field(
        default=10_000, doc="with compare_model_path: resamples of the paired bootstrap behind each 95% interval")


class EvalRunError(UserError, RuntimeError):
    """A problem with the command's options, reported before any model is loaded."""


def default_log_dir(model_path: str) -> Path:
    path = Path(model_path).expanduser()
    if path.is_dir() and os.access(path, os.W_OK):
        return path / "inspect-logs"
    return Path("inspect-logs")


def check_model_and_renderer(model_path: str, model_name: str | None, renderer_name: str | None, option: str) -> str:
    """The renderer name that will be used; raises early for a missing model or unknown renderer."""
    from cookbook.eval.provider import check_model_path, load_renderer, resolve_model_spec
    from cookbook.models import ModelNotFoundError, load_tokenizer

    try:
        check_model_path(model_path)
        tokenizer = load_tokenizer(model_path)
    except ModelNotFoundError as error:
        raise ModelNotFoundError(f"{option}={model_path!r}: {error}") from None
    try:
        spec = resolve_model_spec(model_path, model_name, renderer_name, tokenizer=tokenizer)
        load_renderer(spec.renderer_name, tokenizer)
    except ValueError as error:  # an unknown renderer, an unreadable cookbook_checkpoint.json
        raise InvalidOptionError(str(error)) from None
    return spec.renderer_name


def load_model(model_path: str, model_name: str | None, renderer_name: str, config: EvalConfig):
    """An inspect Model served by the cookbook provider."""
    from inspect_ai.model import GenerateConfig, get_model

    import cookbook.eval.provider  # noqa: F401  (registers the `cookbook` model API)

    model_args = {"renderer_name": renderer_name, "batch_size": config.batch_size, "device": config.device,
                  "dtype": config.dtype, "sampler": config.sampler}
    if model_name:
        model_args["base_model_name"] = model_name
    if config.num_threads:
        model_args["num_threads"] = config.num_threads
    generate_config = GenerateConfig(
        temperature=config.temperature, max_tokens=config.max_tokens, seed=config.seed,
        max_connections=_max_connections(config),
    )
    return get_model(f"cookbook/{model_path}", config=generate_config, memoize=False, **model_args)


def _max_connections(config: EvalConfig) -> int:
    return config.max_connections or 2 * config.batch_size


def run_tasks(tasks, model, config: EvalConfig, log_dir: Path):
    """inspect's eval() for one model; returns our TaskResult per log."""
    from inspect_ai import eval as inspect_eval

    from cookbook.eval.summary import task_result

    logs = inspect_eval(
        tasks,
        model=model,
        log_dir=str(log_dir),
        limit=config.limit,
        max_connections=_max_connections(config),
        max_samples=_max_connections(config),
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        seed=config.seed,
        display=config.display,
        score_display=False,
    )
    return [task_result(log) for log in logs]


def _explain_failure(result) -> str:
    message = f"task {result.task} ({result.model}) ended with status {result.status!r}"
    if result.error:
        first_line = result.error.strip().splitlines()[-1] if result.error.strip() else ""
        message += f": {first_line}"
        hub_words = ("offline", "Offline", "hub", "Connection", "resolve")
        if hub_offline(for_datasets=True) and any(word in result.error for word in hub_words):
            message += ("\n  This task downloads from the Hugging Face hub, which is unreachable here "
                        "(HF_HUB_OFFLINE is set); the bundled tasks cookbook/ifeval and cookbook/preference run offline.")
    if result.log_file:
        message += f"\n  log: {result.log_file}"
    return message


def main(config: EvalConfig) -> int:
    """Run the evaluation; returns the process exit status (0 = every task succeeded)."""
    from rich.console import Console

    from cookbook.eval.summary import compare, failed, metrics_table, write_summary
    from cookbook.eval.tasks import build_tasks, registration_problem, resolve_task_names, split_task_names

    if config.batch_size < 1:
        raise EvalRunError(f"batch_size must be >= 1, got {config.batch_size}")
    if config.max_tokens < 1:
        raise EvalRunError(f"max_tokens must be >= 1, got {config.max_tokens}")
    if config.bootstrap_resamples < 1:
        raise EvalRunError(f"bootstrap_resamples must be >= 1, got {config.bootstrap_resamples}")
    if config.limit is not None and config.limit < 1:
        raise EvalRunError(f"limit must be >= 1 or None, got {config.limit}")
    task_names = resolve_task_names(split_task_names(config.tasks))  # fails before a model is loaded
    problem = registration_problem()
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    renderer_name = check_model_and_renderer(config.model_path, config.model_name, config.renderer_name, "model_path")
    models = [("trained" if config.compare_model_path else "model", config.model_path, config.model_name, renderer_name)]
    if config.compare_model_path:
        compare_renderer = check_model_and_renderer(
            config.compare_model_path, config.compare_model_name, config.compare_renderer_name, "compare_model_path"
        )
        models.append(("base", config.compare_model_path, config.compare_model_name, compare_renderer))

    log_dir = Path(config.log_dir) if config.log_dir else default_log_dir(config.model_path)
    console = Console()
    if not console.is_terminal:  # a log file: room for the interval column instead of wrapped cells
        console = Console(width=160)
    results_by_label = {}
    for label, path, name, renderer in models:
        console.print(f"[bold]{label}[/bold]: {path} (renderer {renderer})")
        model = load_model(path, name, renderer, config)
        # Fresh task objects per model: a Task carries per-run state.
        task_args = {"cookbook/ifeval": {"source": config.ifeval_source, "split": config.ifeval_split}}
        results_by_label[label] = run_tasks(build_tasks(task_names, task_args), model, config, log_dir)

    comparison = compare(results_by_label, config.bootstrap_resamples, config.seed)
    console.print(metrics_table(results_by_label, comparison))
    run = {key: getattr(config, key) for key in chz.chz_fields(config)}
    summary_path = write_summary(log_dir / "summary.json", results_by_label, run, comparison)
    console.print(f"logs and {summary_path.name}: {log_dir}")
    problems = [r for results in results_by_label.values() for r in failed(results)]
    for result in problems:
        console.print(f"[red]error[/red]: {_explain_failure(result)}", highlight=False)
    return 1 if problems else 0


def cli(argv: list[str] | None = None) -> int:
    """Parse `key=value` arguments into an EvalConfig and run it; errors propagate (tests match them)."""
    config = chz.Blueprint(EvalConfig).make_from_argv(argv)
    return main(config)


if __name__ == "__main__":
    sys.exit(run_cli(main))
