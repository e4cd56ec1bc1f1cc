"""One micro-batch of preference training: policy (and reference) log-probs, loss, metric sums; and
the options every preference recipe (offline DPO, on-policy) shares, so `loss_type=`, `dpo_beta=` or
`layout=` mean the same in each.

Returns sums rather than means so that gradient accumulation and data parallelism can divide by
the global number of pairs once, and a step means the same thing at any micro-batch size or world
size: `pair_micro_batch` is what a recipe's task hands the shared loop, `pair_step_metrics` turns
the sums over micro-batches and ranks into the step's means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import chz
import torch
from torch import Tensor, nn

from cookbook.preference.batching import Layout, PairBatch
from cookbook.preference.losses import LOSS_TYPES, REFERENCE_FREE, LossType, PreferenceLogps, preference_loss
from cookbook.training.config import TrainingConfig
from cookbook.training.loop import MicroBatchOutput


@dataclass(frozen=True)
class LossSettings:
    loss_type: LossType = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    nll_weight: float = 0.0

    @property
    def needs_reference(self) -> bool:
        return self.loss_type not in REFERENCE_FREE


@dataclass(frozen=True)
class PairLogps:
    chosen: Tensor  # [P]
    rejected: Tensor  # [P]
    chosen_lengths: Tensor  # [P]
    rejected_lengths: Tensor  # [P]


def pair_logps(model: nn.Module, batch: PairBatch) -> PairLogps:
    """Chosen and rejected log-probs of every pair in the batch, from one forward pass."""
    out = model(
        batch.input_ids,
        batch.loss_tokens,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
    )
    return PairLogps(
        chosen=out.logps[batch.chosen_index],
        rejected=out.logps[batch.rejected_index],
        chosen_lengths=out.num_loss_tokens[batch.chosen_index],
        rejected_lengths=out.num_loss_tokens[batch.rejected_index],
    )


@torch.no_grad()
def reference_pair_logps(reference_model: nn.Module, batch: PairBatch) -> tuple[Tensor, Tensor]:
    logps = pair_logps(reference_model, batch)
    return logps.chosen, logps.rejected


@dataclass
class MicroBatchResult:
    loss_sum: Tensor  # differentiable sum of per-pair losses
    metric_sums: dict[str, float]  # summed over pairs (divide by num_pairs for means)
    num_pairs: int
    num_real_tokens: int
    num_loss_tokens: int


def preference_forward(
    policy: nn.Module,
    batch: PairBatch,
    settings: LossSettings,
    reference_logps: tuple[Tensor, Tensor] | None,
) -> MicroBatchResult:
    """Loss and metric sums for one micro-batch. `reference_logps` is (chosen [P], rejected [P]),
    from a frozen reference model or the precomputed cache; None for reference-free losses."""
    logps = pair_logps(policy, batch)
    reference_chosen, reference_rejected = reference_logps if reference_logps is not None else (None, None)
    result = preference_loss(
        PreferenceLogps(
            chosen_logps=logps.chosen,
            rejected_logps=logps.rejected,
            chosen_lengths=logps.chosen_lengths,
            rejected_lengths=logps.rejected_lengths,
            reference_chosen_logps=reference_chosen,
            reference_rejected_logps=reference_rejected,
        ),
        loss_type=settings.loss_type,
        beta=settings.beta,
        label_smoothing=settings.label_smoothing,
        simpo_gamma=settings.simpo_gamma,
        nll_weight=settings.nll_weight,
    )
    margins = result.chosen_rewards - result.rejected_rewards
    chosen_nll = -logps.chosen.detach() / logps.chosen_lengths.clamp(min=1)
    metric_values = {
        "loss": result.losses.detach().sum(),
        # A tie (policy == reference at step 0) counts half, so accuracy starts at 0.5, not 0.
        "accuracy": ((margins > 0).float() + 0.5 * (margins == 0).float()).sum(),
        "logp_accuracy": (logps.chosen.detach() > logps.rejected.detach()).float().sum(),
        "margin": margins.sum(),
        "chosen_reward": result.chosen_rewards.sum(),
        "rejected_reward": result.rejected_rewards.sum(),
        "chosen_logps": logps.chosen.detach().sum(),
        "rejected_logps": logps.rejected.detach().sum(),
        "nll": chosen_nll.sum(),
        "num_loss_tokens": logps.chosen_lengths.sum() + logps.rejected_lengths.sum(),
    }
    # One device sync for all metrics instead of one per value.
    metric_sums = dict(zip(metric_values, torch.stack(list(metric_values.values())).tolist()))
    num_loss_tokens = int(metric_sums.pop("num_loss_tokens"))
    return MicroBatchResult(
        loss_sum=result.losses.sum(),
        metric_sums=metric_sums,
        num_pairs=batch.num_pairs,
        num_real_tokens=batch.num_real_tokens,
        num_loss_tokens=num_loss_tokens,
    )


def pair_micro_batch(model: nn.Module, batch, settings: LossSettings, reference) -> MicroBatchOutput:
    """A collated micro-batch of pairs -> its summed preference loss and metric sums, for the loop."""
    reference_logps = reference(batch) if reference else None
    result = preference_forward(model, batch, settings, reference_logps)
    sums = {**result.metric_sums, "num_pairs": result.num_pairs, "num_tokens": result.num_real_tokens,
            "num_slots": batch.num_slots}
    return MicroBatchOutput(result.loss_sum, sums)


def pair_step_metrics(sums: dict[str, float]) -> dict[str, float]:
    """A step's preference metrics (means over its pairs) from sums over micro-batches and ranks."""
    num_pairs = max(sums["num_pairs"], 1)
    metrics = {key: sums[key] / num_pairs for key in
               ("accuracy", "margin", "chosen_reward", "rejected_reward", "logp_accuracy", "nll")}
    return {"dpo_loss": sums["loss"] / num_pairs, **metrics, "num_pairs": int(sums["num_pairs"])}


@chz.chz
class PreferenceConfig(TrainingConfig):
    dpo_beta: float = chz.field(default=0.1, doc="beta: strength of the KL anchor to the reference (> 0)")
    loss_type: LossType = chz.field(default="dpo", doc="dpo, ipo, hinge, simpo (reference-free) or orpo")
    label_smoothing: float = chz.field(default=0.0, doc="Conservative/robust DPO: assumed label noise in [0, 0.5)")
    simpo_gamma: float = chz.field(default=0.5, doc="SimPO target reward margin")
    nll_weight: float = chz.field(default=0.0, doc="Weight of the chosen-completion NLL added to the loss (RPO)")
    layout: Layout = chz.field(
        default="auto", doc="Batch layout: auto, padded, packed (no padding) or prefix_shared (prompt run once)"
    )

    @chz.validate
    def _check_preference_values(self) -> None:
        if not (math.isfinite(self.dpo_beta) and self.dpo_beta > 0):
            raise ValueError(f"dpo_beta must be a finite number > 0, got {self.dpo_beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        for name in ("nll_weight", "simpo_gamma"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")

    @property
    def loss_settings(self) -> LossSettings:
        return LossSettings(self.loss_type, self.dpo_beta, self.label_smoothing, self.simpo_gamma, self.nll_weight)
