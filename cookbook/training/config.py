"""The options every training recipe shares: model, optimisation, schedule, precision, cadence, processes.

A recipe's `Config` subclasses `TrainingConfig` and adds only what is its own (the DPO recipe its
loss and reference, the SFT recipe its data), so `learning_rate=` or `precision=` mean the same in
every recipe and the shared loop (`loop.py`) reads them from one place.
"""

from __future__ import annotations

import math
from typing import Literal

import chz

from cookbook.models import DEFAULT_MODEL, Device
from cookbook.training import distributed as dist_utils
from cookbook.training.display import Display
from cookbook.training.log_dir import LogDirBehavior
from cookbook.training.lora import ALL_LINEAR, DEFAULT_ALPHA, parse_target_modules
from cookbook.training.precision import PRECISIONS, Precision
from cookbook.training.schedule import LRSchedule

ExportDType = Literal["float32", "bfloat16"]


@chz.chz
class TrainingConfig:
    log_path: str = chz.field(default="runs/train", doc="Directory for config.json, metrics.jsonl, checkpoints")
    model_name: str = chz.field(default=DEFAULT_MODEL, doc="Model to train: bundled name, local HF dir or hub id")
    renderer_name: str | None = chz.field(default=None, doc="Chat format; default: the model's own (e.g. chatml)")
    load_checkpoint_path: str | None = chz.field(
        default=None, doc="Start from this checkpoint's weights (a fresh optimizer and schedule)"
    )
    learning_rate: float = chz.field(default=1e-5, doc="Peak AdamW learning rate")
    lr_schedule: LRSchedule = chz.field(default="linear", doc="linear, cosine or constant decay after warmup")
    warmup_steps: int = chz.field(default=0, doc="Linear warmup steps")
    weight_decay: float = chz.field(default=0.0, doc="AdamW weight decay")
    max_grad_norm: float = chz.field(default=1.0, doc="Gradient clipping norm (0 disables)")
    max_length: int = chz.field(default=512, doc="Max tokens of a sequence; longer ones are cut from the end")
    batch_size: int = chz.field(default=16, doc="Examples per optimizer step, over all ranks")
    micro_batch_size: int = chz.field(default=8, doc="Examples per forward pass on one rank (accumulation follows)")
    num_epochs: int = chz.field(default=1, doc="Passes over the training data")
    max_steps: int | None = chz.field(default=None, doc="Stop after this many optimizer steps")
    eval_every: int = chz.field(default=10, doc="Held-out eval every N steps (0: only at start and end)")
    save_every: int = chz.field(default=50, doc="Resumable checkpoint every N steps (0: only the final one)")
    seed: int = chz.field(default=0, doc="Seed for data order and initialisation")
    precision: Precision = chz.field(
        default="auto",
        doc="fp32, bf16-mixed (fp32 weights, bf16 matmuls), fp16-mixed, bf16-true (bf16 weights, compensated "
            "AdamW), or auto: bf16-mixed on a bf16 GPU or a CPU with native bf16, fp16-mixed on older GPUs, else fp32",
    )
    dtype: str | None = chz.field(default=None, doc="Replaced by precision= (giving it is an error)")
    export_dtype: ExportDType = chz.field(
        default="float32",
        doc="Weights dtype of final/: float32 (exact) or bfloat16 (half the size, rounds each weight to 3 digits)",
    )
    lora_rank: int = chz.field(
        default=0, doc="Train rank-N LoRA adapters (peft) instead of every weight; 0: full fine-tuning"
    )
    lora_alpha: float = chz.field(
        default=DEFAULT_ALPHA, doc="LoRA scale: the adapters' update is multiplied by lora_alpha / lora_rank"
    )
    lora_dropout: float = chz.field(
        default=0.0, doc="Dropout on the adapters' input; 0 keeps log-probs deterministic, which DPO's reference needs"
    )
    lora_target_modules: str = chz.field(
        default=ALL_LINEAR,
        doc="Modules given adapters: all-linear (every linear layer of the decoder) or names, comma-separated "
            "(q_proj,v_proj); lm_head and embed_tokens only when asked, and only on a model that does not tie them",
    )
    write_merged_final: bool = chz.field(
        default=True, doc="With LoRA, final/ also holds merged/: the full model with the adapters merged in"
    )
    device: Device = chz.field(default="auto", doc="auto, cpu or cuda")
    gradient_checkpointing: bool = chz.field(default=False, doc="Recompute activations in backward (long sequences)")
    distributed: dist_utils.DistributedStrategy = chz.field(
        default="auto", doc="Under torchrun: ddp, fsdp (FSDP2), or auto (DDP below 1B parameters)"
    )
    behavior_if_log_dir_exists: LogDirBehavior = chz.field(
        default="ask", doc="ask, resume, delete or raise when log_path holds a run (ask acts as raise with no TTY)"
    )
    resume_allow_config_change: bool = chz.field(
        default=False, doc="On resume, apply options that change what the run computes (lr, data, ...) from here on"
    )
    keep_last_checkpoints: int | None = chz.field(
        default=2, doc="Resumable step checkpoints kept (older ones are deleted; final/ always stays; None: all)"
    )
    wandb_project: str | None = chz.field(default=None, doc="Also log to this Weights & Biases project")
    tensorboard_dir: str | None = chz.field(
        default=None, doc="Also log to TensorBoard in this directory (pip install 'cookbook[tensorboard]')"
    )
    display: Display = chz.field(
        default="rich", doc="rich: a live progress line on a terminal; plain: plain lines, no colour or cursor codes"
    )
    show_example: bool = chz.field(default=True, doc="Print one tokenized example with its trained tokens highlighted")

    @chz.validate
    def _check_training_values(self) -> None:
        if self.dtype is not None:
            raise ValueError(
                f"dtype={self.dtype!r} was replaced by precision= (one of {', '.join(PRECISIONS)}): "
                "fp32 weights with bf16 matmuls is precision=bf16-mixed"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not one of {', '.join(PRECISIONS)}")
        positive = {"learning_rate": self.learning_rate, "batch_size": self.batch_size,
                    "micro_batch_size": self.micro_batch_size, "num_epochs": self.num_epochs,
                    "max_length": self.max_length}
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of micro_batch_size={self.micro_batch_size}"
            )
        for name in ("warmup_steps", "eval_every", "save_every", "max_grad_norm", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be > 0, got {self.max_steps}")
        if self.keep_last_checkpoints is not None and self.keep_last_checkpoints < 1:
            raise ValueError(f"keep_last_checkpoints must be >= 1 (or None to keep all), got {self.keep_last_checkpoints}")

    @chz.validate
    def _check_lora_values(self) -> None:
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: full fine-tuning), got {self.lora_rank}")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be a finite number > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        parse_target_modules(self.lora_target_modules)
        if self.lora_rank == 0:
            # A LoRA option without a rank would be silently ignored: the run would be full fine-tuning.
            defaults = {"lora_alpha": DEFAULT_ALPHA, "lora_dropout": 0.0, "lora_target_modules": ALL_LINEAR}
            given = [f"{name}={getattr(self, name)}" for name, default in defaults.items()
                     if getattr(self, name) != default]
            if given:
                raise ValueError(f"{', '.join(given)} needs lora_rank > 0 (lora_rank=0 is full fine-tuning)")


def config_as_dict(config: TrainingConfig) -> dict:
    """The config as stored in config.json; a nested builder (the data set, prompts, reward) is
    recorded with its class as `module:Class`, so two builders with the same fields stay apart."""
    values = chz.asdict(config)
    for name in chz.chz_fields(config):
        value = getattr(config, name)
        if chz.is_chz(value):
            values[name] = {"builder": f"{type(value).__module__}:{type(value).__name__}", **chz.asdict(value)}
    return values
