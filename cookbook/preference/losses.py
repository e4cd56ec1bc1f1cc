"""Preference losses as pure tensor functions: per-pair losses and implicit rewards, no reduction.

Every input is a float tensor of shape [P] (one entry per pair). `*_logps` are summed, weighted
log-probs of a completion; `*_lengths` its number of loss tokens. The training loop averages the
losses and turns the rewards into metrics.

    dpo    -(1-eps) log sigma(beta*h) - eps log sigma(-beta*h),  h = (pi_c - ref_c) - (pi_r - ref_r)
    ipo    (h_avg - 1/(2*beta))^2, h_avg uses per-token-averaged log-ratios
    hinge  max(0, 1 - beta*h)
    simpo  -log sigma(beta*(pi_c/|c| - pi_r/|r|) - gamma)            (reference-free)
    orpo   -pi_c/|c| - beta * log sigma(log odds(c) - log odds(r)),  odds(y) = p/(1-p), p = exp(pi_y/|y|)
    nll_weight > 0 adds nll_weight * (-pi_c/|c|) to any of them (RPO-style).

KTO (unpaired feedback) has its own function, since its examples are single completions with a
label: with r = pi(y|x) - ref(y|x) and the reference point z0 (`kto_reference_point`),

    kto    w_d * (1 - sigma(beta*(r - z0)))  for a desirable completion,
           w_u * (1 - sigma(beta*(z0 - r)))  for an undesirable one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LossType = Literal["dpo", "ipo", "hinge", "simpo", "orpo"]
LOSS_TYPES: tuple[str, ...] = ("dpo", "ipo", "hinge", "simpo", "orpo")
REFERENCE_FREE: frozenset[str] = frozenset({"simpo", "orpo"})


@dataclass(frozen=True)
class PreferenceLogps:
    """Policy (and, for reference-based losses, reference) log-probs of each pair's completions."""

    chosen_logps: Tensor
    rejected_logps: Tensor
    chosen_lengths: Tensor
    rejected_lengths: Tensor
    reference_chosen_logps: Tensor | None = None
    reference_rejected_logps: Tensor | None = None


@dataclass(frozen=True)
class PreferenceLoss:
    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def _log_ratios(logps: PreferenceLogps) -> tuple[Tensor, Tensor]:
    if logps.reference_chosen_logps is None or logps.reference_rejected_logps is None:
        raise ValueError("this loss needs reference log-probs")
    return (
        logps.chosen_logps - logps.reference_chosen_logps,
        logps.rejected_logps - logps.reference_rejected_logps,
    )


def dpo_loss(logps: PreferenceLogps, beta: float, label_smoothing: float = 0.0) -> PreferenceLoss:
    chosen_ratio, rejected_ratio = _log_ratios(logps)
    logits = beta * (chosen_ratio - rejected_ratio)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def ipo_loss(logps: PreferenceLogps, beta: float) -> PreferenceLoss:
    chosen_ratio, rejected_ratio = _log_ratios(logps)
    chosen_avg = chosen_ratio / logps.chosen_lengths.clamp(min=1)
    rejected_avg = rejected_ratio / logps.rejected_lengths.clamp(min=1)
    losses = (chosen_avg - rejected_avg - 1 / (2 * beta)) ** 2
    return PreferenceLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def hinge_loss(logps: PreferenceLogps, beta: float) -> PreferenceLoss:
    chosen_ratio, rejected_ratio = _log_ratios(logps)
    losses = torch.relu(1 - beta * (chosen_ratio - rejected_ratio))
    return PreferenceLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def _average_logps(logps: PreferenceLogps) -> tuple[Tensor, Tensor]:
    return (
        logps.chosen_logps / logps.chosen_lengths.clamp(min=1),
        logps.rejected_logps / logps.rejected_lengths.clamp(min=1),
    )


def simpo_loss(logps: PreferenceLogps, beta: float, gamma: float) -> PreferenceLoss:
    chosen_avg, rejected_avg = _average_logps(logps)
    losses = -F.logsigmoid(beta * (chosen_avg - rejected_avg) - gamma)
    return PreferenceLoss(losses, beta * chosen_avg.detach(), beta * rejected_avg.detach())


def orpo_loss(logps: PreferenceLogps, beta: float) -> PreferenceLoss:
    chosen_avg, rejected_avg = _average_logps(logps)
    # log odds(p) = log p - log(1 - p), with log p = the average log-prob (always < 0).
    log_odds_ratio = (chosen_avg - torch.log1p(-torch.exp(chosen_avg).clamp(max=1 - 1e-6))) - (
        rejected_avg - torch.log1p(-torch.exp(rejected_avg).clamp(max=1 - 1e-6))
    )
    losses = -chosen_avg - beta * F.logsigmoid(log_odds_ratio)
    return PreferenceLoss(losses, beta * chosen_avg.detach(), beta * rejected_avg.detach())


def preference_loss(
    logps: PreferenceLogps,
    loss_type: LossType = "dpo",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    nll_weight: float = 0.0,
) -> PreferenceLoss:
    """Dispatch on `loss_type`; `nll_weight` adds the length-normalised chosen NLL."""
    if loss_type == "dpo":
        result = dpo_loss(logps, beta, label_smoothing)
    elif loss_type == "ipo":
        result = ipo_loss(logps, beta)
    elif loss_type == "hinge":
        result = hinge_loss(logps, beta)
    elif loss_type == "simpo":
        result = simpo_loss(logps, beta, simpo_gamma)
    elif loss_type == "orpo":
        result = orpo_loss(logps, beta)
    else:
        raise ValueError(f"loss_type={loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
    if nll_weight:
        chosen_nll = -logps.chosen_logps / logps.chosen_lengths.clamp(min=1)
        result = PreferenceLoss(result.losses + nll_weight * chosen_nll, result.chosen_rewards, result.rejected_rewards)
    return result


# -- KTO --------------------------------------------------------------------------------------------

# The KTO paper recommends (w_d * n_d) / (w_u * n_u) in [1, 4/3]; outside this wider band the run
# is told once (a ratio far off starves one side of the gradient).
KTO_BALANCE_WARN_RANGE: tuple[float, float] = (0.5, 2.0)


@dataclass(frozen=True)
class KTOLoss:
    losses: Tensor  # [N]
    rewards: Tensor  # [N] beta * r, detached


def kto_reference_point(kl_log_ratios: Tensor) -> Tensor:
    """z0 = max(0, mean(kl_log_ratios)), detached, in fp32: the KL estimate, where kl_log_ratios [K]
    is log pi(y'|x) - log ref(y'|x) of mismatched sequences (a prompt, another example's completion)."""
    return kl_log_ratios.detach().float().mean().clamp(min=0)


def kto_loss(logps: Tensor, reference_logps: Tensor, desirable: Tensor, reference_point: Tensor | float,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> KTOLoss:
    """Per-example KTO losses (see the module docstring). `logps`, `reference_logps`: [N] summed
    log-probs of each completion; `desirable`: bool [N]; `reference_point`: z0, a scalar."""
    log_ratio = logps.float() - reference_logps.float()
    z0 = torch.as_tensor(reference_point, dtype=torch.float32, device=log_ratio.device).detach()
    desirable = desirable.to(device=log_ratio.device, dtype=torch.bool)
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (log_ratio - z0)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - log_ratio)))
    losses = torch.where(desirable, desirable_losses, undesirable_losses)
    return KTOLoss(losses, beta * log_ratio.detach())


def kto_balance(num_desirable: int, num_undesirable: int, desirable_weight: float,
                undesirable_weight: float) -> float:
    """(w_d * n_d) / (w_u * n_u): how much the desirable side weighs against the undesirable one."""
    if num_undesirable == 0 or undesirable_weight == 0:
        return float("inf")
    return (desirable_weight * num_desirable) / (undesirable_weight * num_undesirable)


def kto_balance_warning(num_desirable: int, num_undesirable: int, desirable_weight: float,
                        undesirable_weight: float) -> str | None:
    """A one-line warning when `kto_balance` is far outside the paper's [1, 4/3]; None otherwise."""
    ratio = kto_balance(num_desirable, num_undesirable, desirable_weight, undesirable_weight)
    low, high = KTO_BALANCE_WARN_RANGE
    if low <= ratio <= high:
        return None
    return (f"desirable_weight * desirable / (undesirable_weight * undesirable) = {desirable_weight:g} * "
            f"{num_desirable:,} / ({undesirable_weight:g} * {num_undesirable:,}) = {ratio:.3g}, far outside the "
            "KTO paper's recommended [1, 4/3]; set desirable_weight / undesirable_weight to bring it inside")
