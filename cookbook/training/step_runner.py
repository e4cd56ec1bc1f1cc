"""One optimizer step of the shared loop, and the optimizer it steps.

The rank's micro-batches with gradient accumulation (DDP/FSDP sync only on the last), the fp16
gradient scaler, clipping, the divergence check, the optimizer and the LR schedule. Metric sums go
over ranks in one collective together with the stop vote, so every rank stops at the same step.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from cookbook.errors import UserError
from cookbook.training import checkpoint as ckpt
from cookbook.training import distributed as dist_utils
from cookbook.training.config import TrainingConfig
from cookbook.training.log_dir import StopRequest
from cookbook.training.precision import CompensatedAdamW, PrecisionPlan
from cookbook.training.schedule import BatchSchedule


class TrainingDivergedError(UserError, RuntimeError):
    """A step's loss or gradient norm is not finite (too high a learning rate, or bad data)."""


def make_optimizer(policy: nn.Module, config: TrainingConfig, plan: PrecisionPlan, info: dist_utils.DistInfo,
                   strategy: str) -> torch.optim.Optimizer:
    params = [p for p in policy.parameters() if p.requires_grad]
    # Float32 parameters in bf16-true (LoRA adapters beside a bf16 base) keep full precision with plain AdamW.
    if plan.compensated_optimizer and all(p.dtype == torch.bfloat16 for p in params):
        return CompensatedAdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    # The fused kernel is one pass over each tensor on CPU as on GPU; FSDP's DTensor parameters on
    # CPU take the foreach path.
    fused = info.device.type == "cuda" or strategy != "fsdp"
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused)


class StepRunner:
    """One optimizer step: the rank's micro-batches with gradient accumulation, the gradient scaler
    (fp16), clipping, the divergence check, the optimizer and the LR schedule; returns the step's
    metrics, summed over ranks, and whether any rank was asked to stop."""

    def __init__(self, config: TrainingConfig, info, policy, strategy: str, optimizer, scheduler, scaler,
                 schedule: BatchSchedule, task):
        self.config, self.info, self.policy, self.strategy = config, info, policy, strategy
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.schedule, self.task = schedule, task
        self.skipped_steps = 0

    def run(self, step: int, stop: StopRequest) -> tuple[dict, bool]:
        info = self.info
        start = time.perf_counter()
        sums: dict[str, float] = {}
        denominator = self.task.loss_denominator(self.schedule.global_batch(step))
        micro_batches = self.schedule.micro_batches(step)
        for index, ids in enumerate(micro_batches):
            with dist_utils.gradient_sync(self.policy, self.strategy, enabled=index == len(micro_batches) - 1):
                output = self.task.forward(self.policy, ids)
                loss = output.loss_sum * (info.world_size / denominator)
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            for key, value in output.metric_sums.items():
                sums[key] = sums.get(key, 0.0) + value
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = _clip_gradients(self.policy, self.config.max_grad_norm)
        keys = sorted(sums)
        # One collective for every metric and for the stop vote (read now, after the step's work,
        # so a Ctrl-C during this step stops after it), so all ranks stop at the same step.
        totals = dist_utils.all_reduce_sum([sums[k] for k in keys] + [float(stop.requested)], info)
        summed = dict(zip(keys, totals))
        stop_votes = totals[-1]
        mean_loss = summed["loss"] / denominator
        if not math.isfinite(mean_loss) or (self.scaler is None and not math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDivergedError(
                f"step {step}: loss={mean_loss} grad_norm={grad_norm} is not finite; stopping without updating. "
                f"{_last_good_checkpoint(self.config.log_path)} Try a lower learning_rate or precision=fp32."
            )
        learning_rate = self.scheduler.get_last_lr()[0]
        if self.scaler is not None:
            # The scaler skips a step whose fp16 gradients overflowed and lowers its scale: counted, not fatal.
            scale_before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.skipped_steps += int(self.scaler.get_scale() < scale_before)
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        batch_time = time.perf_counter() - start
        metrics = {
            **self.task.step_metrics(summed, denominator),
            "learning_rate": learning_rate, "grad_norm": grad_norm,
            "num_tokens": int(summed.get("num_tokens", 0)),
            "batch_time": batch_time, "tokens_per_second": summed.get("num_tokens", 0) / batch_time,
            "progress": (step + 1) / self.schedule.total_steps, "epoch": step // self.schedule.steps_per_epoch,
        }
        if "num_slots" in summed:
            metrics["slot_fill"] = summed["num_tokens"] / max(summed["num_slots"], 1)
        if self.scaler is not None:
            metrics["skipped_steps"] = self.skipped_steps
            metrics["loss_scale"] = self.scaler.get_scale()
        return metrics, stop_votes > 0


def _last_good_checkpoint(log_path: str) -> str:
    entry = ckpt.latest_resumable_checkpoint(log_path)
    if entry is None:
        return "No checkpoint was saved before it."
    return f"The last good checkpoint is {entry['path']} (step {entry['step']})."


def _clip_gradients(model: nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)
