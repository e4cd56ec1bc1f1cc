"""The reward model's loss as a pure tensor function: per-pair losses, no reduction.

Inputs are float tensors of shape [P], one entry per pair: the scalar scores r_c of the chosen and
r_r of the rejected sequence, and optionally a per-pair margin m (how much better the chosen reply
is, from the data). Computed in float32 whatever the scores' dtype:

    loss = -log sigma(r_c - r_r - m) + center_coef * (r_c + r_r)^2

The first term is Bradley-Terry: the probability that chosen beats rejected is sigma(r_c - r_r).
It sees only differences, so the scores' offset drifts freely; the second term pins the mean score
of a pair near 0, which makes scores comparable across runs and keeps them in a range a policy's
reward normalisation expects, at the cost of a small pull on their scale.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def bradley_terry_loss(chosen_scores: Tensor, rejected_scores: Tensor, margins: Tensor | None = None,
                       center_coef: float = 0.0) -> Tensor:
    """Per-pair loss [P] (see the module docstring); `margins` None means 0 for every pair."""
    chosen, rejected = chosen_scores.float(), rejected_scores.float()
    difference = chosen - rejected
    if margins is not None:
        difference = difference - margins.float()
    losses = -F.logsigmoid(difference)
    if center_coef:
        losses = losses + center_coef * (chosen + rejected) ** 2
    return losses
