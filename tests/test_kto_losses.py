"""The KTO loss, its reference point and the weight-balance warning, against hand computations."""

import math

import pytest
import torch

from cookbook.preference.losses import kto_balance, kto_balance_warning, kto_loss, kto_reference_point


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kto_loss_matches_a_hand_computation():
    """r = pi - ref; z0 = max(0, mean(pi(y'|x) - ref(y'|x)));
    desirable:   w_d * (1 - sigmoid(beta * (r - z0)))
    undesirable: w_u * (1 - sigmoid(beta * (z0 - r)))
    rewards = beta * r.

    Here pi = [-3, -7, -2], ref = [-4, -6, -2.5], desirable = [T, F, F], z0 = 0.4, beta = 0.5,
    w_d = 1.5, w_u = 0.75: r = [1, -1, 0.5], so the losses are
    1.5 * (1 - s(0.3)), 0.75 * (1 - s(0.7)), 0.75 * (1 - s(-0.05)).
    """
    logps = torch.tensor([-3.0, -7.0, -2.0], requires_grad=True)
    reference = torch.tensor([-4.0, -6.0, -2.5])
    desirable = torch.tensor([True, False, False])
    result = kto_loss(logps, reference, desirable, 0.4, beta=0.5, desirable_weight=1.5, undesirable_weight=0.75)
    expected = torch.tensor([1.5 * (1 - sigmoid(0.5 * 0.6)), 0.75 * (1 - sigmoid(0.5 * 1.4)),
                             0.75 * (1 - sigmoid(0.5 * -0.1))])
    torch.testing.assert_close(result.losses, expected)
    torch.testing.assert_close(result.rewards, torch.tensor([0.5, -0.5, 0.25]))
    assert not result.rewards.requires_grad
    # d/d pi of w * (1 - s(beta*(r - z0))) = -w * beta * s'(.), and the opposite sign when undesirable
    result.losses.sum().backward()

    def ds(x):
        return sigmoid(x) * (1 - sigmoid(x))

    expected_grad = torch.tensor([-1.5 * 0.5 * ds(0.3), 0.75 * 0.5 * ds(0.7), 0.75 * 0.5 * ds(-0.05)])
    torch.testing.assert_close(logps.grad, expected_grad)


def test_at_policy_equal_reference_every_example_costs_half_its_weight():
    logps = torch.tensor([-5.0, -9.0, -1.0, -2.0])
    result = kto_loss(logps, logps.clone(), torch.tensor([True, False, True, False]), kto_reference_point(
        torch.zeros(4)), beta=0.1)
    torch.testing.assert_close(result.losses, torch.full((4,), 0.5))


def test_the_reference_point_is_the_mean_kl_log_ratio_clamped_at_zero_and_detached():
    """z0 = max(0, mean(kl_log_ratios)): mean([0.3, -0.1, 0.4]) = 0.2; mean([-1, 0.5]) < 0 gives 0."""
    ratios = torch.tensor([0.3, -0.1, 0.4], requires_grad=True)
    z0 = kto_reference_point(ratios)
    torch.testing.assert_close(z0, torch.tensor(0.2))
    assert not z0.requires_grad
    assert kto_reference_point(torch.tensor([-1.0, 0.5])).item() == 0.0


def test_the_loss_is_computed_in_fp32_from_half_precision_inputs():
    logps = torch.tensor([-3.0, -4.0], dtype=torch.bfloat16)
    result = kto_loss(logps, logps.clone(), torch.tensor([True, False]), 0.0)
    assert result.losses.dtype == torch.float32


def test_the_balance_warning_names_the_numbers_outside_half_to_two():
    """(w_d * n_d) / (w_u * n_u): 1 * 300 / (1 * 100) = 3 is outside [0.5, 2]; 1.33 * 100 / 100 is not."""
    assert kto_balance(300, 100, 1.0, 1.0) == pytest.approx(3.0)
    message = kto_balance_warning(300, 100, 1.0, 1.0)
    assert message is not None and "300" in message and "100" in message and "= 3" in message and "[1, 4/3]" in message
    assert kto_balance_warning(100, 100, 1.33, 1.0) is None
    assert kto_balance_warning(100, 300, 1.0, 1.0) is not None  # 1/3, too few desirable
    assert kto_balance_warning(10, 0, 1.0, 1.0) is not None  # no undesirable at all
