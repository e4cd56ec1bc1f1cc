"""One micro-batch of preference training: policy (and reference) log-probs, loss, metric sums.

Returns sums rather than means so that gradient accumulation and data parallelism can divide by
the global number of pairs once, and a step means the same thing at any micro-batch size or world
size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cookbook.preference.batching import PairBatch
from cookbook.preference.losses import REFERENCE_FREE, LossType, PreferenceLogps, preference_loss


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
