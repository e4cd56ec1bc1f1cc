"""DPO-family preference training: one torch loop for a single process, DDP and FSDP2.

`Config` is what the recipe's command line fills in; `main(config)` runs it:

    load data through the renderer -> reference log-probs (precomputed once, or a frozen model)
    -> for each step: micro-batches of pairs -> policy log-probs -> loss -> AdamW step
    -> metrics to the rich table and metrics.jsonl, held-out eval, atomic HF checkpoints.

The global batch (`batch_size` pairs) means the same at any world size: each rank takes every
world_size-th pair of it and accumulates `batch_size / (world_size * micro_batch_size)`
micro-batches; the loss is the sum over pairs divided by `batch_size`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import chz
import torch
from rich.console import Console

from cookbook.datasets import DemoBuilder, DPODatasetBuilder, dataset_meta_factory, load_preference_data
from cookbook.models import DEFAULT_MODEL, Device, DType, load_model_and_tokenizer, load_tokenizer
from cookbook.preference.collate import Layout, make_collate
from cookbook.preference.data_order import BatchSchedule
from cookbook.preference.evaluation import evaluate_pairs
from cookbook.preference.logprobs import SequenceLogprobModel
from cookbook.preference.losses import LOSS_TYPES, LossType
from cookbook.preference.reference_setup import prepare_reference
from cookbook.preference.step import LossSettings, preference_forward
from cookbook.renderers import check_renderer_matches_template, default_renderer_name, get_renderer
from cookbook.training import checkpoint as ckpt
from cookbook.training import distributed as dist_utils
from cookbook.training.display import print_config, print_pair
from cookbook.training.log_dir import LogDirBehavior, StopRequest, check_log_path_creatable, decide_log_dir
from cookbook.training.metrics import MetricLogger, NullMetricLogger, start_wandb, truncate_metrics
from cookbook.training.schedule import LRSchedule, make_scheduler


class TrainingDivergedError(RuntimeError):
    pass


class RunFinished(Exception):
    """Resuming a run whose final checkpoint already exists: nothing left to do."""

    def __init__(self, final_path: Path):
        super().__init__(str(final_path))
        self.final_path = final_path


@chz.chz
class Config:
    log_path: str = chz.field(default="runs/dpo", doc="Directory for config.json, metrics.jsonl, checkpoints")
    model_name: str = chz.field(default=DEFAULT_MODEL, doc="Policy to train: bundled name, local HF dir or hub id")
    dataset: DPODatasetBuilder = chz.field(
        default_factory=DemoBuilder,
        meta_factory=dataset_meta_factory(),
        doc="Preference data: a registered name (demo, hhh, helpsteer3, ultrafeedback, file) or module:Class",
    )
    renderer_name: str | None = chz.field(default=None, doc="Chat format; default: the model's own (e.g. chatml)")
    load_checkpoint_path: str | None = chz.field(
        default=None, doc="Start the policy (and the default reference) from this checkpoint's weights"
    )
    reference_model_name: str | None = chz.field(
        default=None, doc="Reference model; default: the starting policy (load_checkpoint_path or model_name)"
    )
    learning_rate: float = chz.field(default=1e-5, doc="Peak AdamW learning rate")
    lr_schedule: LRSchedule = chz.field(default="linear", doc="linear, cosine or constant decay after warmup")
    warmup_steps: int = chz.field(default=0, doc="Linear warmup steps")
    weight_decay: float = chz.field(default=0.0, doc="AdamW weight decay")
    max_grad_norm: float = chz.field(default=1.0, doc="Gradient clipping norm (0 disables)")
    dpo_beta: float = chz.field(default=0.1, doc="beta: strength of the KL anchor to the reference (> 0)")
    loss_type: LossType = chz.field(default="dpo", doc="dpo, ipo, hinge, simpo (reference-free) or orpo")
    label_smoothing: float = chz.field(default=0.0, doc="Conservative/robust DPO: assumed label noise in [0, 0.5)")
    simpo_gamma: float = chz.field(default=0.5, doc="SimPO target reward margin")
    nll_weight: float = chz.field(default=0.0, doc="Weight of the chosen-completion NLL added to the loss (RPO)")
    max_length: int = chz.field(default=512, doc="Max tokens of prompt+completion; completions are cut from the end")
    batch_size: int = chz.field(default=16, doc="Pairs per optimizer step, over all ranks")
    micro_batch_size: int = chz.field(default=8, doc="Pairs per forward pass on one rank (accumulation follows)")
    num_epochs: int = chz.field(default=1, doc="Passes over the training pairs")
    max_steps: int | None = chz.field(default=None, doc="Stop after this many optimizer steps")
    eval_every: int = chz.field(default=10, doc="Held-out eval every N steps (0: only at start and end)")
    save_every: int = chz.field(default=50, doc="Resumable checkpoint every N steps (0: only the final one)")
    seed: int = chz.field(default=0, doc="Seed for data order and initialisation")
    dtype: DType = chz.field(default="auto", doc="auto (bf16 on a capable GPU, else fp32), float32, bfloat16")
    device: Device = chz.field(default="auto", doc="auto, cpu or cuda")
    precompute_reference: bool = chz.field(
        default=True, doc="Compute reference log-probs once before training and free the reference model"
    )
    layout: Layout = chz.field(
        default="auto", doc="Batch layout: auto, padded, packed (no padding) or prefix_shared (prompt run once)"
    )
    gradient_checkpointing: bool = chz.field(default=False, doc="Recompute activations in backward (long sequences)")
    distributed: dist_utils.DistributedStrategy = chz.field(
        default="auto", doc="Under torchrun: ddp, fsdp (FSDP2), or auto (DDP below 1B parameters)"
    )
    behavior_if_log_dir_exists: LogDirBehavior = chz.field(
        default="ask", doc="ask, resume, delete or raise when log_path holds a run (ask acts as raise with no TTY)"
    )
    wandb_project: str | None = chz.field(default=None, doc="Also log to this Weights & Biases project")
    show_example: bool = chz.field(default=True, doc="Print one tokenized pair with its trained tokens highlighted")

    @chz.validate
    def _check_values(self) -> None:
        positive = {"dpo_beta": self.dpo_beta, "learning_rate": self.learning_rate, "batch_size": self.batch_size,
                    "micro_batch_size": self.micro_batch_size, "num_epochs": self.num_epochs,
                    "max_length": self.max_length}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of micro_batch_size={self.micro_batch_size}"
            )
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        for name in ("warmup_steps", "eval_every", "save_every", "max_grad_norm", "nll_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be > 0, got {self.max_steps}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")

    @property
    def loss_settings(self) -> LossSettings:
        return LossSettings(self.loss_type, self.dpo_beta, self.label_smoothing, self.simpo_gamma, self.nll_weight)


def config_as_dict(config: Config) -> dict:
    values = chz.asdict(config)
    values["dataset"] = {"builder": f"{type(config.dataset).__module__}:{type(config.dataset).__name__}",
                         **chz.asdict(config.dataset)}
    return values


def main(config: Config) -> Path | None:
    """Train; returns the final checkpoint directory (None on ranks other than 0, or when stopped early)."""
    info = dist_utils.init_distributed(config.device)
    try:
        return _train(config, info)
    except RunFinished as finished:
        Console(quiet=not info.is_main).print(f"[green]{config.log_path} already finished: {finished.final_path}")
        return finished.final_path if info.is_main else None
    finally:
        dist_utils.shutdown_distributed()


def _train(config: Config, info: dist_utils.DistInfo) -> Path | None:
    console = Console(quiet=not info.is_main)
    log_path = Path(config.log_path)
    resume_entry = _prepare_log_dir(config, info, console)
    torch.manual_seed(config.seed)
    print_config(console, config_as_dict(config))

    start_name = config.load_checkpoint_path or config.model_name
    reference_name = config.reference_model_name or start_name
    tokenizer = load_tokenizer(start_name)
    renderer_name = (config.renderer_name or ckpt.read_metadata_renderer(start_name)
                     or default_renderer_name(tokenizer))
    renderer = get_renderer(renderer_name, tokenizer)
    if info.is_main:
        check_renderer_matches_template(renderer, tokenizer)  # warns when the formats differ
    data = load_preference_data(config.dataset, renderer, config.max_length, console=console)
    if config.show_example and info.is_main:
        print_pair(console, tokenizer, data.train[0])
    schedule = BatchSchedule(len(data.train), config.batch_size, config.micro_batch_size, config.num_epochs,
                             config.max_steps, config.seed, info.rank, info.world_size)

    policy_source = resume_entry["path"] if resume_entry else start_name
    # On a GPU, flex attention turns packed and prefix-shared rows into block-sparse work; sdpa would
    # run them over a dense mask.
    attention = "flex_attention" if info.device.type == "cuda" and config.layout != "padded" else "sdpa"
    causal_lm, _ = load_model_and_tokenizer(policy_source, dtype=config.dtype, device=str(info.device),
                                            attn_implementation=attention)
    layout = make_collate(config.layout, tokenizer.pad_token_id, causal_lm)
    console.print(f"Batch layout: {layout.name}")
    reference = prepare_reference(config, info, console, causal_lm, reference_name, start_name,
                                  resumed=resume_entry is not None, data=data, collate=layout.collate,
                                  train_batches=schedule.all_micro_batches())

    if config.gradient_checkpointing:
        causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    causal_lm.config.use_cache = False
    unwrapped = SequenceLogprobModel(causal_lm)
    strategy = dist_utils.choose_strategy(config.distributed, unwrapped, info)
    policy = dist_utils.wrap_model(unwrapped, strategy, info, layers=list(causal_lm.get_decoder().layers))
    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=info.device.type == "cuda")
    scheduler = make_scheduler(optimizer, schedule.total_steps, config.lr_schedule, config.warmup_steps)
    start_step = _restore_training_state(resume_entry, policy, optimizer, scheduler, log_path, info, console)

    logger = (MetricLogger(log_path, console, start_wandb(config.wandb_project, config_as_dict(config), str(log_path)))
              if info.is_main else NullMetricLogger())
    metadata = {"renderer_name": renderer_name, "base_model_name": start_name, "reference_model_name": reference_name}
    writer = CheckpointWriter(log_path, policy, unwrapped, optimizer, scheduler, tokenizer, metadata, info, console)

    def run_eval(step: int) -> None:
        if data.test:
            logger.log_metrics(evaluate_pairs(policy, data.test, layout.collate, config.micro_batch_size,
                                              config.loss_settings, reference.for_split("test"), info), step)

    if start_step == 0:
        logger.log_metrics(data.summary.as_metrics(), 0)
        run_eval(0)
    step_runner = StepRunner(config, info, policy, strategy, optimizer, scheduler, schedule, layout.collate,
                             data.train, reference.for_split("train"))
    total = schedule.total_steps
    with StopRequest() as stop:
        for step in range(start_step, total):
            metrics, stop_requested = step_runner.run(step, stop.requested)
            done = step + 1
            logger.log_metrics(metrics, done)
            if config.eval_every and done % config.eval_every == 0 and done < total:
                run_eval(done)
            if stop_requested:
                writer.save(ckpt.checkpoint_name(done), done, resumable=True)
                console.print(f"[yellow]Stopped at step {done}. Resume with behavior_if_log_dir_exists=resume.")
                logger.close()
                return None
            if config.save_every and done % config.save_every == 0 and done < total:
                writer.save(ckpt.checkpoint_name(done), done, resumable=True)
    run_eval(total)
    final_path = writer.save("final", total, resumable=False)
    logger.close()
    return final_path


def _prepare_log_dir(config: Config, info: dist_utils.DistInfo, console: Console) -> dict | None:
    """Apply behavior_if_log_dir_exists (on rank 0, shared with all); the checkpoint to resume, if any.
    Raises RunFinished when resuming a run that already wrote its final checkpoint."""
    mode = None
    if info.is_main:
        check_log_path_creatable(config.log_path)
        mode = decide_log_dir(config.log_path, config.behavior_if_log_dir_exists)
    mode = dist_utils.broadcast_object(mode, info)
    resume_entry = None
    if mode == "resume":
        final = ckpt.final_checkpoint(config.log_path)
        if final is not None:
            raise RunFinished(final)
        resume_entry = ckpt.latest_resumable_checkpoint(config.log_path)
        if resume_entry is None:
            console.print(f"[yellow]{config.log_path} holds no resumable checkpoint; starting from the beginning.")
    if info.is_main and resume_entry is None:
        truncate_metrics(config.log_path, -1)  # a fresh start logs from step 0 again
        (Path(config.log_path) / "config.json").write_text(json.dumps(config_as_dict(config), indent=2, default=str))
    return resume_entry


def _restore_training_state(resume_entry, policy, optimizer, scheduler, log_path: Path,
                            info: dist_utils.DistInfo, console: Console) -> int:
    """Load optimizer, scheduler and RNG from a resumable checkpoint; returns the step to start at."""
    if resume_entry is None:
        return 0
    state = torch.load(Path(resume_entry["path"]) / ckpt.TRAINING_STATE_NAME, weights_only=False)
    dist_utils.load_full_optimizer_state_dict(policy, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ckpt.restore_rng_state(state["rng"])
    if info.is_main:
        truncate_metrics(log_path, state["step"])  # steps after the checkpoint will be logged again
    console.print(f"[green]Resumed from {resume_entry['path']} at step {state['step']}.")
    return state["step"]


class StepRunner:
    """One optimizer step: the rank's micro-batches with gradient accumulation, clipping, the
    divergence check, AdamW and the LR schedule; returns the step's metrics, averaged over ranks."""

    def __init__(self, config: Config, info, policy, strategy: str, optimizer, scheduler,
                 schedule: BatchSchedule, collate, train_pairs, reference):
        self.config, self.info, self.policy, self.strategy = config, info, policy, strategy
        self.optimizer, self.scheduler, self.schedule = optimizer, scheduler, schedule
        self.collate, self.train_pairs, self.reference = collate, train_pairs, reference

    def run(self, step: int, stop_requested: bool) -> tuple[dict, bool]:
        config, info = self.config, self.info
        start = time.perf_counter()
        sums: dict[str, float] = {}
        counts = [0, 0, 0]  # pairs, real tokens, slots paid for
        micro_batches = self.schedule.micro_batches(step)
        for index, ids in enumerate(micro_batches):
            batch = self.collate([self.train_pairs[i] for i in ids], ids).to(info.device)
            with dist_utils.gradient_sync(self.policy, self.strategy, enabled=index == len(micro_batches) - 1):
                reference_logps = self.reference(batch) if self.reference else None
                result = preference_forward(self.policy, batch, config.loss_settings, reference_logps)
                # DDP and FSDP average gradients over ranks; scale so the result is sum / batch_size.
                (result.loss_sum * (info.world_size / config.batch_size)).backward()
            for key, value in result.metric_sums.items():
                sums[key] = sums.get(key, 0.0) + value
            counts = [counts[0] + result.num_pairs, counts[1] + result.num_real_tokens, counts[2] + batch.num_slots]
        grad_norm = _clip_gradients(self.policy, config.max_grad_norm)
        keys = sorted(sums)
        # One collective for every metric and for the stop vote, so all ranks stop at the same step.
        totals = dist_utils.all_reduce_sum([sums[k] for k in keys] + counts + [float(stop_requested)], info)
        num_pairs, num_tokens, num_slots, stop_votes = totals[len(keys):]
        means = {k: v / max(num_pairs, 1) for k, v in zip(keys, totals)}
        if not (math.isfinite(means["loss"]) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDivergedError(
                f"step {step}: loss={means['loss']} grad_norm={grad_norm} is not finite; stopping without "
                f"updating. The last good checkpoint is in {config.log_path} (checkpoints.jsonl). Try a lower "
                "learning_rate or dtype=float32."
            )
        learning_rate = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        batch_time = time.perf_counter() - start
        metrics = {
            "dpo_loss": means["loss"], "accuracy": means["accuracy"], "margin": means["margin"],
            "chosen_reward": means["chosen_reward"], "rejected_reward": means["rejected_reward"],
            "logp_accuracy": means["logp_accuracy"], "nll": means["nll"],
            "learning_rate": learning_rate, "grad_norm": grad_norm, "num_pairs": int(num_pairs),
            "num_tokens": int(num_tokens), "slot_fill": num_tokens / max(num_slots, 1),
            "batch_time": batch_time, "tokens_per_second": num_tokens / batch_time,
            "progress": (step + 1) / self.schedule.total_steps, "epoch": step // self.schedule.steps_per_epoch,
        }
        return metrics, stop_votes > 0


class CheckpointWriter:
    """Gathers the full weights (and optimizer state) on rank 0 and writes a checkpoint atomically."""

    def __init__(self, log_path: Path, policy, unwrapped: SequenceLogprobModel, optimizer, scheduler,
                 tokenizer, metadata: dict, info: dist_utils.DistInfo, console: Console):
        self.log_path, self.policy, self.optimizer, self.scheduler = log_path, policy, optimizer, scheduler
        self.causal_lm, self.tokenizer, self.metadata = unwrapped.causal_lm, tokenizer, metadata
        self.info, self.console = info, console
        # FSDP's full state dict repeats tied weights (lm_head = embed_tokens) under each name; a HF
        # checkpoint stores them once.
        seen: set[int] = set()
        self.tied_aliases: set[str] = set()
        for name, param in unwrapped.named_parameters(remove_duplicate=False):
            if id(param) in seen:
                self.tied_aliases.add(name)
            seen.add(id(param))

    def save(self, name: str, step: int, resumable: bool) -> Path | None:
        model_state = dist_utils.full_model_state_dict(self.policy)
        optim_state = dist_utils.full_optimizer_state_dict(self.policy, self.optimizer) if resumable else None
        path = None
        if self.info.is_main:
            training_state = ({"optimizer": optim_state, "scheduler": self.scheduler.state_dict(),
                               "rng": ckpt.capture_rng_state(), "step": step} if resumable else None)
            weights = {k.removeprefix("causal_lm."): v for k, v in model_state.items() if k not in self.tied_aliases}
            path = ckpt.save_checkpoint(self.log_path, name, step, weights, self.causal_lm, self.tokenizer,
                                        self.metadata, training_state)
            self.console.print(f"[green]Saved checkpoint {path}")
        dist_utils.barrier(self.info)
        return path


def _clip_gradients(model: torch.nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)
