"""Each preference loss against a hand computation of its formula."""

import math

import pytest
import torch
from torch.testing import assert_close

from cookbook.preference.losses import PreferenceLogps, preference_loss


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


LOGPS = PreferenceLogps(
    chosen_logps=torch.tensor([-10.0, -4.0]),
    rejected_logps=torch.tensor([-12.0, -3.0]),
    chosen_lengths=torch.tensor([5.0, 2.0]),
    rejected_lengths=torch.tensor([4.0, 3.0]),
    reference_chosen_logps=torch.tensor([-11.0, -4.5]),
    reference_rejected_logps=torch.tensor([-11.5, -2.0]),
)
# log-ratios: chosen (1.0, 0.5), rejected (-0.5, -1.0)  ->  h = (1.5, 1.5)


def test_dpo_matches_hand_computation():
    """loss = -log sigma(beta * ((pi_c - ref_c) - (pi_r - ref_r)))."""
    beta = 0.5
    out = preference_loss(LOGPS, "dpo", beta=beta)
    expected = [-math.log(_sigmoid(beta * 1.5))] * 2
    assert_close(out.losses, torch.tensor(expected))
    assert_close(out.chosen_rewards, torch.tensor([0.5, 0.25]))
    assert_close(out.rejected_rewards, torch.tensor([-0.25, -0.5]))


def test_dpo_label_smoothing():
    """loss = -(1-eps) log sigma(beta h) - eps log sigma(-beta h)."""
    beta, eps = 0.5, 0.1
    out = preference_loss(LOGPS, "dpo", beta=beta, label_smoothing=eps)
    z = beta * 1.5
    expected = -(1 - eps) * math.log(_sigmoid(z)) - eps * math.log(_sigmoid(-z))
    assert_close(out.losses, torch.tensor([expected, expected]))


def test_ipo_uses_length_normalised_ratios():
    """loss = ((pi_c - ref_c)/|c| - (pi_r - ref_r)/|r| - 1/(2 beta))^2."""
    beta = 0.25
    out = preference_loss(LOGPS, "ipo", beta=beta)
    h0 = 1.0 / 5 - (-0.5) / 4
    h1 = 0.5 / 2 - (-1.0) / 3
    expected = [(h0 - 2.0) ** 2, (h1 - 2.0) ** 2]
    assert_close(out.losses, torch.tensor(expected))


def test_hinge():
    """loss = max(0, 1 - beta h)."""
    assert_close(preference_loss(LOGPS, "hinge", beta=0.5).losses, torch.tensor([0.25, 0.25]))
    assert_close(preference_loss(LOGPS, "hinge", beta=1.0).losses, torch.tensor([0.0, 0.0]))


def test_simpo_is_reference_free():
    """loss = -log sigma(beta (pi_c/|c| - pi_r/|r|) - gamma); no reference needed."""
    logps = PreferenceLogps(LOGPS.chosen_logps, LOGPS.rejected_logps, LOGPS.chosen_lengths, LOGPS.rejected_lengths)
    beta, gamma = 2.0, 0.5
    out = preference_loss(logps, "simpo", beta=beta, simpo_gamma=gamma)
    expected = [-math.log(_sigmoid(beta * (-10 / 5 + 12 / 4) - gamma)),
                -math.log(_sigmoid(beta * (-4 / 2 + 3 / 3) - gamma))]
    assert_close(out.losses, torch.tensor(expected))
    assert_close(out.chosen_rewards, torch.tensor([beta * -2.0, beta * -2.0]))


def test_orpo():
    """loss = -pi_c/|c| - beta log sigma(log(p_c/(1-p_c)) - log(p_r/(1-p_r))), p = exp(avg logp)."""
    logps = PreferenceLogps(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([2.0]), torch.tensor([2.0]))
    beta = 0.1
    pc, pr = math.exp(-0.5), math.exp(-1.5)
    log_odds = math.log(pc / (1 - pc)) - math.log(pr / (1 - pr))
    expected = 0.5 - beta * math.log(_sigmoid(log_odds))
    assert_close(preference_loss(logps, "orpo", beta=beta).losses, torch.tensor([expected]))


def test_nll_weight_adds_chosen_nll():
    base = preference_loss(LOGPS, "dpo", beta=0.5).losses
    out = preference_loss(LOGPS, "dpo", beta=0.5, nll_weight=2.0).losses
    assert_close(out - base, 2.0 * torch.tensor([10.0 / 5, 4.0 / 2]))


def test_dpo_at_equal_policy_and_reference_is_ln2():
    same = PreferenceLogps(torch.tensor([-3.0, -7.0]), torch.tensor([-2.0, -9.0]), torch.ones(2), torch.ones(2),
                           torch.tensor([-3.0, -7.0]), torch.tensor([-2.0, -9.0]))
    assert_close(preference_loss(same, "dpo", beta=0.1).losses, torch.full((2,), math.log(2)))


def test_reference_losses_need_reference():
    no_ref = PreferenceLogps(LOGPS.chosen_logps, LOGPS.rejected_logps, LOGPS.chosen_lengths, LOGPS.rejected_lengths)
    with pytest.raises(ValueError, match="needs reference"):
        preference_loss(no_ref, "dpo")
    with pytest.raises(ValueError, match="loss_type='kto' is not one of"):
        preference_loss(LOGPS, "kto")


def test_gradients_flow_to_policy_logps_only():
    chosen = torch.tensor([-2.0], requires_grad=True)
    rejected = torch.tensor([-3.0], requires_grad=True)
    logps = PreferenceLogps(chosen, rejected, torch.ones(1), torch.ones(1), torch.tensor([-2.0]), torch.tensor([-3.0]))
    preference_loss(logps, "dpo", beta=1.0).losses.sum().backward()
    # d/dh of -log sigma(h) at h=0 is -1/2; h = chosen - rejected.
    assert_close(chosen.grad, torch.tensor([-0.5]))
    assert_close(rejected.grad, torch.tensor([0.5]))
