"""The RL math against hand computations (cookbook/rl/losses.py)."""

import math

import pytest
import torch
from torch.testing import assert_close

from cookbook.rl.losses import (
    aggregate,
    clipped_policy_gradient,
    group_advantages,
    k3_kl,
    shaped_rewards,
    zero_variance_groups,
)

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [3.0, 1.0, 2.0, 0.0]])


def test_grpo_divides_the_centered_reward_by_the_groups_std():
    """A = (r - mean) / (std + eps), std with Bessel's correction: [1,0,0,1] has mean 0.5, std sqrt(1/3)."""
    advantages = group_advantages(REWARDS, "grpo", eps=0.0)
    std = math.sqrt(1 / 3)
    assert_close(advantages[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std)
    assert_close(advantages[2], torch.tensor([1.5, -0.5, 0.5, -1.5]) / math.sqrt(5 / 3))
    # A zero-variance group: 0 / eps = 0, never NaN.
    assert_close(group_advantages(REWARDS, "grpo")[1], torch.zeros(4))


def test_dr_grpo_only_centers():
    """A = r - mean."""
    assert_close(group_advantages(REWARDS, "dr_grpo")[2], torch.tensor([1.5, -0.5, 0.5, -1.5]))


def test_rloo_subtracts_the_mean_of_the_other_replies():
    """A_i = r_i - (sum_j r_j - r_i) / (K - 1): for [3,1,2,0], 3 - 1 = 2, 1 - 5/3, 2 - 4/3, 0 - 2."""
    assert_close(group_advantages(REWARDS, "rloo")[2], torch.tensor([2.0, 1 - 5 / 3, 2 - 4 / 3, -2.0]))


def test_a_group_needs_two_replies_and_a_known_kind():
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.ones(3, 1), "grpo")
    with pytest.raises(ValueError, match="advantage='ppo'"):
        group_advantages(REWARDS, "ppo")


def test_shaped_rewards_give_a_cut_off_reply_the_cut_off_reward():
    """Replies that did not stop get cut_off_reward in place of their score; None changes nothing.
    A group tied on score but not on stopping then has variance: [0.5, 0.5, 0.5, 0.5] with the
    last two cut off becomes [0.5, 0.5, 0, 0]."""
    stopped = torch.tensor([[True, False, True, True], [True, True, False, False], [True] * 4])
    shaped = shaped_rewards(REWARDS, stopped, 0.0)
    assert_close(shaped, torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.0, 0.0], [3.0, 1.0, 2.0, 0.0]]))
    assert_close(shaped_rewards(REWARDS, stopped, -1.0)[0], torch.tensor([1.0, -1.0, 0.0, 1.0]))
    assert shaped_rewards(REWARDS, stopped, None) is REWARDS
    assert zero_variance_groups(shaped).tolist() == [False, False, False]


def test_zero_variance_groups_are_the_all_equal_ones():
    assert zero_variance_groups(REWARDS).tolist() == [False, True, False]


def test_clipped_policy_gradient_takes_the_smaller_surrogate():
    """loss = -min(ratio A, clip(ratio, 1 - 0.2, 1 + 0.3) A): ratio 1.5, A=+1 -> -1.3 (clipped);
    ratio 1.5, A=-1 -> 1.5 (unclipped, the pessimistic side); ratio 0.5, A=-2 -> 1.6 (clipped);
    ratio 0.5, A=+2 -> -1.0 (unclipped); ratio 1 -> -A."""
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.0])
    advantages = torch.tensor([1.0, -1.0, -2.0, 2.0, 0.7])
    old = torch.tensor([-1.0, -2.0, -0.5, -3.0, -1.2])
    logps = (old + ratios.log()).requires_grad_(True)
    pg = clipped_policy_gradient(logps, old, advantages, clip_low=0.2, clip_high=0.3)
    assert_close(pg.losses, torch.tensor([-1.3, 1.5, 1.6, -1.0, -0.7]))
    assert pg.clipped.tolist() == [True, False, True, False, False]
    assert_close(pg.ratios, ratios)
    # A clipped token gives no gradient; an unclipped one d(-ratio A)/dlogp = -ratio A.
    pg.losses.sum().backward()
    assert_close(logps.grad, torch.tensor([0.0, 1.5, 0.0, -1.0, -0.7]))


def test_k3_kl_is_zero_at_the_reference_and_positive_elsewhere():
    """k3 = exp(ref - logp) - (ref - logp) - 1: delta = ln 2 gives 2 - ln 2 - 1."""
    logps = torch.tensor([-1.0, -1.0, -2.0])
    reference = torch.tensor([-1.0, -1.0 + math.log(2), -2.0 - 1.0])
    assert_close(k3_kl(logps, reference), torch.tensor([0.0, 1 - math.log(2), math.exp(-1) + 1 - 1]))


def test_aggregation_token_is_the_mean_over_tokens_and_sequence_the_mean_of_reply_means():
    """Replies of 1 and 3 tokens, losses [4] and [1, 2, 3]: token = 10 / 4 tokens; sequence =
    (4 + 2) / 2 replies. aggregate returns the sums the loop divides by those denominators."""
    losses = torch.tensor([4.0, 1.0, 2.0, 3.0])
    index = torch.tensor([0, 1, 1, 1])
    assert_close(aggregate(losses, index, 2, "token") / 4, torch.tensor(2.5))
    assert_close(aggregate(losses, index, 2, "sequence") / 2, torch.tensor(3.0))
    with pytest.raises(ValueError, match="loss_aggregation"):
        aggregate(losses, index, 2, "prompt")
