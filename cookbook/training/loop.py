"""The training loop every recipe shares: batch schedule, gradient accumulation, precision, clipping,
the optimizer step, held-out evals, metrics, checkpoints, resume and Ctrl-C, on one process or many.

A recipe supplies only what is its own, as a `RecipeTask`: how one micro-batch of example ids
becomes a summed loss and metric sums, what the loss is divided by, how summed metrics become the
step's metrics, and its held-out eval. Its `main` looks like

    def main(config):
        return run_recipe(config, lambda run: _train(config, run))

    def _train(config, run: Run):
        tokenizer, renderer = run.tokenizer_and_renderer(start_name)
        data = ...                                    # the recipe's own data
        schedule = run.schedule(len(data.train))
        causal_lm = run.load_model(run.model_source(start_name))   # parameters in the precision's dtype
        policy = run.wrap(SequenceLogprobModel(causal_lm, compute_context=run.plan.autocast), causal_lm)
        return run.train(policy, causal_lm, task, schedule, tokenizer, metadata)

LoRA (`lora_rank=N`, `lora.py`) is the loop's too: `load_model` adds the adapters to the trained
model (and on resume loads them), `wrap` hands only the adapters to the optimizer and prints
trainable/total parameters, and the checkpoint writer saves adapters, so every recipe gets it.

Losses: a task returns the sum over its examples; the loop multiplies by
world_size / task.loss_denominator(global batch ids) before backward, so a step means the same
at any micro-batch size or world size (DDP and FSDP average gradients over ranks).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from rich.console import Console
from torch import nn

from cookbook.errors import InvalidOptionError, RunStopped, UserError
from cookbook.models import load_model_and_tokenizer, load_tokenizer
from cookbook.renderers import check_renderer_matches_template, default_renderer_name, get_renderer
from cookbook.training import checkpoint as ckpt
from cookbook.training import distributed as dist_utils
from cookbook.training import lora
from cookbook.training.checkpoint import CheckpointWriter, tied_aliases
from cookbook.training.config import TrainingConfig, config_as_dict
from cookbook.training.display import (
    TrainingProgress,
    make_console,
    next_eval_command,
    print_config,
    print_run_summary,
)
from cookbook.training.log_dir import RunLock, StopRequest, check_log_path_creatable, decide_log_dir
from cookbook.training.metrics import MetricLogger, NullMetricLogger, start_trackers, truncate_metrics
from cookbook.training.plot import RunPlot
from cookbook.training.precision import CompensatedAdamW, PrecisionPlan, plan_for
from cookbook.training.resume_config import check_resume_config
from cookbook.training.schedule import BatchSchedule, make_scheduler
from cookbook.training.step_runner import StepRunner, TrainingDivergedError, make_optimizer

__all__ = ["MicroBatchOutput", "RecipeTask", "Run", "RunFinished", "TrainingDivergedError", "run_recipe"]


class RunFinished(Exception):
    """Resuming a run whose final checkpoint already exists: nothing left to do."""

    def __init__(self, final_path: Path):
        super().__init__(str(final_path))
        self.final_path = final_path


@dataclass
class MicroBatchOutput:
    """One micro-batch of a recipe: the differentiable sum of its examples' losses, and metric sums.

    `metric_sums` must hold `loss` (the same sum, detached) and `num_tokens` (real tokens run);
    `num_slots` (positions paid for, padding included) is optional.
    """

    loss_sum: torch.Tensor
    metric_sums: dict[str, float] = field(default_factory=dict)


class RecipeTask(Protocol):
    def loss_denominator(self, global_ids: Sequence[int]) -> float:
        """What the summed loss of a step's global batch is divided by (pairs for DPO, trained tokens for SFT)."""

    def forward(self, model: nn.Module, ids: list[int]) -> MicroBatchOutput: ...

    def step_metrics(self, sums: dict[str, float], denominator: float) -> dict[str, float]:
        """The step's metrics from metric sums added over micro-batches and ranks."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics (`test/...`), the same on every rank; {} when there is no held-out data."""


def run_recipe(config: TrainingConfig, train: Callable[[Run], Path | None]) -> Path | None:
    """Join the process group, lock and prepare log_path, run `train`, leave the process group;
    returns the final checkpoint (None on ranks other than 0). A run stopped by Ctrl-C raises
    RunStopped after saving (the command exits 130)."""
    info = dist_utils.init_distributed(config.device)
    console = make_console(config.display, quiet=not info.is_main)
    finished = False
    try:
        with contextlib.ExitStack() as hold:
            plan = plan_for(config.precision, info.device)
            resume_entry = _on_main_then_share(lambda: _prepare_log_dir(config, plan, console, hold), info)
            final_path = train(Run(config, info, console, resume_entry, plan))
        finished = True
        return final_path
    except RunFinished as already:
        finished = True
        console.print(f"[green]{config.log_path} already finished: {already.final_path}")
        return already.final_path if info.is_main else None
    finally:
        dist_utils.shutdown_distributed(finished)


def _on_main_then_share(work: Callable[[], object], info: dist_utils.DistInfo):
    """`work()` on rank 0 and its result on every rank; when it raises, every rank raises (so no rank
    waits forever for a rank 0 that has stopped), a user's mistake as a UserError with its message."""
    outcome = None
    if info.is_main:
        try:
            outcome = ("ok", work())
        except (UserError, RunFinished) as error:
            if not info.is_distributed:
                raise
            outcome = ("error", error)
            dist_utils.broadcast_object(outcome, info)
            raise
    outcome = dist_utils.broadcast_object(outcome, info)
    kind, value = outcome
    if kind == "error":
        raise value if isinstance(value, RunFinished) else UserError(f"rank 0 stopped: {value}")
    return value


def _prepare_log_dir(config: TrainingConfig, plan: PrecisionPlan, console: Console,
                     hold: contextlib.ExitStack) -> dict | None:
    """On rank 0: take log_path's lock for the life of the run (held by `hold`), apply
    behavior_if_log_dir_exists, clear what a killed checkpoint write left, and on resume refuse
    options that change the run; returns the checkpoint to resume, if any. Raises RunFinished when
    resuming a run that already wrote its final checkpoint."""
    check_log_path_creatable(config.log_path)
    lock = hold.enter_context(RunLock(config.log_path))
    if lock.stale_message:
        console.print(f"[yellow]{lock.stale_message}")
    mode = decide_log_dir(config.log_path, config.behavior_if_log_dir_exists)
    for name in ckpt.clean_stale_staging(config.log_path):
        console.print(f"Removed {name}, left by a checkpoint write that did not finish")
    resume_entry = None
    if mode == "resume":
        final = ckpt.final_checkpoint(config.log_path)
        if final is not None:
            raise RunFinished(final)
        resume_entry = ckpt.latest_resumable_checkpoint(config.log_path)
        if resume_entry is None:
            console.print(f"[yellow]{config.log_path} holds no resumable checkpoint; starting from the beginning.")
        else:
            _check_and_record_resume_config(config, plan, resume_entry, console)
    if resume_entry is None:
        truncate_metrics(config.log_path, -1)  # a fresh start logs from step 0 again
    return resume_entry


def _check_and_record_resume_config(config: TrainingConfig, plan: PrecisionPlan, resume_entry: dict,
                                    console: Console) -> None:
    """Refuse a resume whose options change what the run computes (unless overridden); record the
    accepted changes in config.json."""
    path = Path(config.log_path) / "config.json"
    if not path.exists():
        return
    stored = json.loads(path.read_text())
    new = config_record(config, plan)
    changes = check_resume_config(stored, new, allow_meaning_changes=config.resume_allow_config_change)
    if not changes:
        return
    console.print("Resuming with changed options: " + ", ".join(f"{k} {old!r} -> {value!r}"
                                                               for k, (old, value) in changes.items()))
    history = [*stored.get("resume_history", []),
               {"step": resume_entry["step"], "changed": {k: list(change) for k, change in changes.items()}}]
    path.write_text(json.dumps({**new, "resume_history": history}, indent=2, default=str))


def config_record(config: TrainingConfig, plan: PrecisionPlan) -> dict:
    """What config.json holds: the options, and the precision `auto` resolved to."""
    return {**config_as_dict(config), "resolved_precision": plan.name}


class Run:
    """One training run's shared state: processes, console, precision, the checkpoint to resume."""

    def __init__(self, config: TrainingConfig, info: dist_utils.DistInfo, console: Console,
                 resume_entry: dict | None, plan: PrecisionPlan):
        self.config, self.info, self.console, self.resume_entry, self.plan = config, info, console, resume_entry, plan
        self.log_path = Path(config.log_path)
        self.started_at = time.monotonic()
        self.strategy = "none"
        self.renderer_name: str | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.tied_aliases: set[str] = set()
        self.lora: lora.LoraAdapters | None = None  # the policy's adapters, with lora_rank > 0
        self.num_labels: int | None = None  # the trained model's, when it is a sequence classifier
        # bf16-true: name -> what casting the trained model's fp32 weights to bf16 dropped (see wrap)
        self.bf16_rounding: dict[str, torch.Tensor] | None = None
        torch.manual_seed(config.seed)
        console.print(f"Precision: {plan.name} (parameters {_dtype_name(plan.param_dtype)}, "
                      f"matmuls {_dtype_name(plan.compute_dtype)}; precision={config.precision})")
        print_config(console, self.config_dict())
        if info.is_main and resume_entry is None:
            (self.log_path / "config.json").write_text(json.dumps(self.config_dict(), indent=2, default=str))

    @property
    def resumed(self) -> bool:
        return self.resume_entry is not None

    def config_dict(self) -> dict:
        return config_record(self.config, self.plan)

    def model_source(self, start_name: str) -> str:
        """Where the weights come from: the checkpoint being resumed, else `start_name`. With LoRA
        it is `start_name`: the reference is the adapter-off model, so the base must be the starting
        one, and `load_model` puts the resumed adapters on it."""
        return self.resume_entry["path"] if self.resume_entry and not self.config.lora_rank else start_name

    def tokenizer_and_renderer(self, start_name: str):
        """The tokenizer of `start_name` and the renderer: `renderer_name=`, else the one a checkpoint
        recorded, else the model's own format; warns when it disagrees with the chat template."""
        tokenizer = load_tokenizer(start_name)
        self.renderer_name = (self.config.renderer_name or ckpt.read_metadata_renderer(start_name)
                              or default_renderer_name(tokenizer))
        try:
            renderer = get_renderer(self.renderer_name, tokenizer)
        except ValueError as error:
            raise InvalidOptionError(f"renderer_name: {error}") from None
        if self.info.is_main:
            check_renderer_matches_template(renderer, tokenizer)
        return tokenizer, renderer

    def schedule(self, num_examples: int) -> BatchSchedule:
        """Which examples each rank trains on at each step."""
        config, info = self.config, self.info
        try:
            return BatchSchedule(num_examples, config.batch_size, config.micro_batch_size, config.num_epochs,
                                 config.max_steps, config.seed, info.rank, info.world_size)
        except ValueError as error:
            raise InvalidOptionError(str(error)) from None

    def load_model(self, name: str, packed_rows: bool = False, trainable: bool = True,
                   num_labels: int | None = None):
        """A causal LM on this rank's device, parameters in the precision's dtype (with `num_labels`,
        the sequence classifier of `models.load_model_and_tokenizer`). With lora_rank > 0 the trained
        model (`trainable`) gets LoRA adapters, the resumed ones on resume; a frozen model (a separate
        reference) gets none."""
        # On a GPU, flex attention turns packed and prefix-shared rows into block-sparse work; sdpa
        # would run them over a dense mask.
        attention = "flex_attention" if self.info.device.type == "cuda" and packed_rows else "sdpa"
        causal_lm, _ = load_model_and_tokenizer(name, dtype=_dtype_name(self.plan.param_dtype),
                                                device=str(self.info.device), attn_implementation=attention,
                                                num_labels=num_labels)
        settings = lora.LoraSettings.from_config(self.config)
        if trainable:
            self.num_labels = num_labels
        if trainable and settings is None and self.plan.compensated_optimizer:
            self.bf16_rounding = _bf16_rounding(name, causal_lm)
        if trainable and settings is not None:
            try:
                self.lora = lora.add_adapters(causal_lm, settings)
                if self.resume_entry:
                    self.lora.load_weights(self.resume_entry["path"])
            except ValueError as error:  # a target the model lacks; resumed adapters of another shape
                raise InvalidOptionError(str(error)) from None
            self.console.print(self.lora.describe())
        return causal_lm

    def wrap(self, model: nn.Module, causal_lm: nn.Module, trainable: bool = True) -> nn.Module:
        """`model` (a wrapper around `causal_lm`) for DDP or FSDP2, with the precision's FSDP policy.
        The trained model and a frozen reference both go through here, so under FSDP they compute
        with the same numerics; a frozen model is left unwrapped under DDP (it has no gradients)."""
        strategy = dist_utils.choose_strategy(self.config.distributed, model, self.info)
        if trainable:
            trained, total = lora.count_parameters(model)
            self.console.print(f"Trainable parameters: {trained:,} of {total:,} ({100 * trained / total:.2f}%)")
            self.strategy = strategy
            if self.config.gradient_checkpointing:
                causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            causal_lm.config.use_cache = False
            self.tied_aliases = tied_aliases(model)
        elif strategy != "fsdp":
            return model
        wrapped = dist_utils.wrap_model(model, strategy, self.info, layers=list(causal_lm.get_decoder().layers),
                                        mixed_precision=self._fsdp_policy() if strategy == "fsdp" else None)
        if trainable:
            # Before any forward pass: FSDP2's lazy initialisation at the first forward replaces the
            # root's parameters, and an optimizer built after it would step stale ones.
            self.optimizer = make_optimizer(wrapped, self.config, self.plan, self.info, strategy)
            if self.bf16_rounding is not None and isinstance(self.optimizer, CompensatedAdamW):
                self.optimizer.seed_compensation(causal_lm, self.bf16_rounding)
            self.bf16_rounding = None
        return wrapped

    def _fsdp_policy(self):
        if self.lora is not None and self.plan.name == "bf16-true":
            from torch.distributed.fsdp import MixedPrecisionPolicy

            # FSDP2 gathers a layer's parameters in one dtype: the fp32 adapters beside the bf16 base
            # are gathered in bf16 (their fp32 masters stay sharded), gradients reduced in fp32.
            return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        return self.plan.fsdp_policy()

    def train(self, policy: nn.Module, causal_lm: nn.Module, task: RecipeTask, schedule: BatchSchedule,
              tokenizer, metadata: dict, start_metrics: dict | None = None, eval_tasks: str = "cookbook/ifeval",
              save_prefix: str = "causal_lm.", next_command: Callable[[Path], str] | None = None) -> Path | None:
        """Run the steps of `schedule` on `policy` (from `wrap`; its state-dict keys are `causal_lm`'s
        prefixed with `save_prefix`); `start_metrics` (the data summary) are logged at step 0, and
        `eval_tasks` go into the eval command printed at the end (or `next_command(final_path)`, the
        command that uses what this recipe trained, when it is not evaluated as a chat model)."""
        config, info, console = self.config, self.info, self.console
        policy.train()
        optimizer = self.optimizer
        scheduler = make_scheduler(optimizer, schedule.total_steps, config.lr_schedule, config.warmup_steps)
        scaler = self.plan.grad_scaler()
        start_step = self._restore_training_state(policy, optimizer, scheduler, scaler)
        logger = (MetricLogger(self.log_path, console, trackers=start_trackers(
                      self.config_dict(), self.log_path, config.wandb_project, config.tensorboard_dir))
                  if info.is_main else NullMetricLogger())
        writer = CheckpointWriter(self, policy, causal_lm, optimizer, scheduler, scaler, tokenizer, metadata,
                                  save_prefix, config.keep_last_checkpoints)
        step_runner = StepRunner(config, info, policy, self.strategy, optimizer, scheduler, scaler, schedule, task)
        progress = TrainingProgress(console, schedule.total_steps, start_step, display=config.display)

        plot = RunPlot(self.log_path, console)
        total = schedule.total_steps

        def log_eval(step: int) -> None:
            with progress.paused():
                metrics = task.evaluate(policy)
            logger.log_metrics(metrics, step)
            if info.is_main and metrics:
                plot.refresh(final=step == total)

        if start_step == 0:
            if start_metrics:
                logger.log_metrics(start_metrics, 0)
            log_eval(0)
        with StopRequest() as stop, progress:
            for step in range(start_step, total):
                if stop.requested and not info.is_distributed:
                    # A Ctrl-C that came after the last step's vote (during its bookkeeping).
                    self._stop(writer, logger, progress, step)
                metrics, stop_requested = step_runner.run(step, stop)
                done = step + 1
                logger.log_metrics(metrics, done)
                progress.update(done, metrics)
                if config.eval_every and done % config.eval_every == 0 and done < total:
                    log_eval(done)
                if stop_requested:
                    self._stop(writer, logger, progress, done)
                if config.save_every and done % config.save_every == 0 and done < total:
                    with progress.paused():
                        writer.save(ckpt.checkpoint_name(done), done, resumable=True)
        log_eval(total)
        final_path = writer.save("final", total, resumable=False, export_dtype=config.export_dtype)
        logger.close()
        if info.is_main:
            if next_command is not None:
                command, label = next_command(final_path), "use it next:"
            else:
                command = next_eval_command(final_path, metadata.get("base_model_name"), tasks=eval_tasks)
                label = "evaluate it next:"
            print_run_summary(console, self.log_path, final_path, time.monotonic() - self.started_at, command,
                              next_label=label)
        return final_path

    def _stop(self, writer: CheckpointWriter, logger, progress: TrainingProgress, done: int) -> None:
        with progress.paused():
            path = writer.save(ckpt.checkpoint_name(done), done, resumable=True)
        self.console.print(f"[yellow]Stopped at step {done}. Resume with behavior_if_log_dir_exists=resume.")
        logger.close()
        raise RunStopped(done, path)

    def _restore_training_state(self, policy, optimizer, scheduler, scaler) -> int:
        """Load optimizer, scheduler, scaler and RNG from a resumable checkpoint; the step to start at."""
        if self.resume_entry is None:
            return 0
        state = ckpt.load_training_state(self.resume_entry["path"])
        dist_utils.load_full_optimizer_state_dict(policy, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        ckpt.restore_rng_state(state["rng"])
        if self.info.is_main:
            truncate_metrics(self.log_path, state["step"])  # steps after the checkpoint will be logged again
        self.console.print(f"[green]Resumed from {self.resume_entry['path']} at step {state['step']}.")
        return state["step"]


def _bf16_rounding(name: str, bf16_model: nn.Module) -> dict[str, torch.Tensor]:
    """Per parameter, the fp32 start weight minus its bf16 copy in `bf16_model`, in bf16 (read from a
    second, fp32 load of `name` on the CPU, so the trained model itself loads exactly as before)."""
    fp32_model, _ = load_model_and_tokenizer(name, dtype="float32", device="cpu", attn_implementation=None)
    start = dict(fp32_model.named_parameters())
    rounding = {}
    with torch.no_grad():
        for param_name, param in bf16_model.named_parameters():
            if param_name in start:
                rounding[param_name] = (start[param_name] - param.detach().float().cpu()).to(torch.bfloat16)
    del fp32_model
    return rounding


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
