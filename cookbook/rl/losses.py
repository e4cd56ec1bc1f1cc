"""The math of RL with verifiable rewards (the GRPO family), as pure tensor functions.

Shapes: G groups (prompts) of K replies each; N tokens of sampled replies across a micro-batch,
each belonging to one of S replies (`sequence_index` [N] in [0, S)). Log-probs are float32.

- `shaped_rewards`: the rewards advantages are taken from, a cut-off reply's replaced if asked;
- `group_advantages`: reward minus the group's baseline, per reply;
- `clipped_policy_gradient`: the PPO-style clipped surrogate per token, against the sampling
  policy's log-probs;
- `k3_kl`: the k3 estimator of KL(policy || reference) per token;
- `aggregate`: the sum over a micro-batch that the loop divides by the batch's denominator
  (`loss_aggregation=token` or `sequence`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

AdvantageKind = Literal["grpo", "dr_grpo", "rloo"]


ADVANTAGE_KINDS = ("grpo", "dr_grpo", "rloo")


LossAggregation = Literal["token", "sequence"]


LOSS_AGGREGATIONS = ("token", "sequence")


def shaped_rewards(rewards: Tensor, stopped: Tensor, cut_off_reward: float | None) -> Tensor:
    """Rewards [G, K] with every reply that did not stop (cut off at max_new_tokens; `stopped` [G, K]
    bool) given `cut_off_reward` instead of its score, or unchanged with None. A cut-off reply
    otherwise earns the score of its first max_new_tokens tokens, so the policy learns to run to the
    cap (DAPO's overlong penalty, in its simplest form)."""
    if cut_off_reward is None:
        return rewards
    return torch.where(stopped, rewards, torch.full_like(rewards, cut_off_reward))


def zero_variance_groups(rewards: Tensor) -> Tensor:
    """[G] bool: groups whose K rewards are all equal (every advantage would be 0)."""
    return rewards.amax(dim=1) == rewards.amin(dim=1)


def group_advantages(rewards: Tensor, kind: AdvantageKind, eps: float = 1e-6) -> Tensor:
    """Advantages [G, K] from rewards [G, K] (K >= 2).

    grpo: (r - mean) / (std + eps), std with Bessel's correction; dr_grpo: r - mean (no division,
    so a group's spread of rewards keeps its scale); rloo: r - mean of the other K-1 rewards.
    """
    rewards = rewards.float()
    if rewards.shape[1] < 2:
        raise ValueError(f"a group needs at least 2 replies, got {rewards.shape[1]}")
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if kind == "dr_grpo":
        return centered
    if kind == "grpo":
        return centered / (rewards.std(dim=1, keepdim=True) + eps)
    if kind == "rloo":
        count = rewards.shape[1]
        leave_one_out = (rewards.sum(dim=1, keepdim=True) - rewards) / (count - 1)
        return rewards - leave_one_out
    raise ValueError(f"advantage={kind!r} is not one of {', '.join(ADVANTAGE_KINDS)}")


@dataclass(frozen=True)
class PolicyGradient:
    losses: Tensor  # [N] per-token loss, differentiable in logps
    ratios: Tensor  # [N] exp(logps - old_logps), detached
    clipped: Tensor  # [N] bool: the clipped term was the smaller one (the token gives no gradient)


def clipped_policy_gradient(logps: Tensor, old_logps: Tensor, advantages: Tensor, clip_low: float,
                            clip_high: float) -> PolicyGradient:
    """Per token: -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A), ratio = exp(logp - old_logp).

    `advantages` [N] is each token's reply's advantage; `old_logps` [N] the sampling policy's.
    """
    ratios = torch.exp(logps - old_logps)
    unclipped = ratios * advantages
    clipped = ratios.clamp(1 - clip_low, 1 + clip_high) * advantages
    return PolicyGradient(losses=-torch.minimum(unclipped, clipped), ratios=ratios.detach(),
                          clipped=(clipped < unclipped).detach())


def k3_kl(logps: Tensor, reference_logps: Tensor) -> Tensor:
    """Per token: exp(ref - logp) - (ref - logp) - 1, an unbiased, non-negative estimate of
    KL(policy || reference) from tokens sampled by the policy."""
    delta = reference_logps - logps
    return torch.exp(delta) - delta - 1


def aggregate(token_losses: Tensor, sequence_index: Tensor, num_sequences: int, mode: LossAggregation) -> Tensor:
    """The micro-batch's share of the batch loss, as a sum the loop divides by the batch's
    denominator: token: sum of token losses (the batch's trained tokens divide it, a mean over all
    tokens); sequence: sum over replies of each reply's mean token loss (the batch's reply count
    divides it)."""
    if mode == "token":
        return token_losses.sum()
    if mode == "sequence":
        zeros = torch.zeros(num_sequences, dtype=token_losses.dtype, device=token_losses.device)
        sums = zeros.index_add(0, sequence_index, token_losses)
        counts = zeros.index_add(0, sequence_index, torch.ones_like(token_losses))
        return (sums / counts.clamp(min=1)).sum()
    raise ValueError(f"loss_aggregation={mode!r} is not one of {', '.join(LOSS_AGGREGATIONS)}")
