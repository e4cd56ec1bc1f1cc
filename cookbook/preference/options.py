"""`PreferenceConfig`: the options of every preference recipe (offline DPO and on-policy) on top of
the shared training options, so `loss_type=`, `dpo_beta=` or `layout=` mean the same in each."""

from __future__ import annotations

import math

import chz

from cookbook.preference.collate import Layout
from cookbook.preference.losses import LOSS_TYPES, LossType
from cookbook.preference.step import LossSettings
from cookbook.training.config import TrainingConfig


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
