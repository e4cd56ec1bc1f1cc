"""Numeric precision of a training run: one decision, made here, applied at the edges.

| precision    | parameters | grads | optimizer states | matmuls | loss, log-probs |
|--------------|------------|-------|------------------|---------|-----------------|
| `fp32`       | fp32       | fp32  | fp32             | fp32    | fp32            |
| `bf16-mixed` | fp32       | fp32  | fp32             | bf16    | fp32            |
| `fp16-mixed` | fp32       | fp32  | fp32             | fp16    | fp32 (+ a gradient scaler) |
| `bf16-true`  | bf16       | bf16  | bf16 + bf16 Kahan compensation | bf16 | fp32     |

Why: a bf16 weight near 0.02 has a spacing of about 1.2e-4, while an AdamW step at DPO learning
rates (5e-7 to 5e-6) moves it by about the learning rate, so a plain optimizer on bf16 weights
rounds the update away. The mixed modes keep fp32 masters and get bf16 speed from autocast (one
process, DDP) or FSDP2's `MixedPrecisionPolicy` (bf16 gathers, fp32 gradient reduction). `bf16-true`
halves the parameter memory and keeps small steps with a compensated update (`optim.py`).

`auto` picks bf16-mixed on a CUDA GPU with bf16, fp16-mixed on an older GPU, bf16-mixed on a CPU
with native bf16 matmuls (AVX512-BF16 or AMX), fp32 elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16-true"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16-true")

# Bytes of model state per parameter (weights, gradients, optimizer), for the README's table.
STATE_BYTES_PER_PARAMETER = {"fp32": 16, "bf16-mixed": 16, "fp16-mixed": 16, "bf16-true": 10}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX): there bf16 matmuls
    run about twice as fast as fp32; elsewhere they are emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: Precision | str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "fp32"


@dataclass(frozen=True)
class PrecisionPlan:
    """What a resolved precision means for the model, the forward pass and the optimizer."""

    name: str
    device_type: str

    @property
    def param_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16-true" else torch.float32

    @property
    def compute_dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "fp16-mixed": torch.float16}.get(self.name, torch.bfloat16)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype autocast runs the matmuls in; None where the weights already are that dtype."""
        return self.compute_dtype if self.name in ("bf16-mixed", "fp16-mixed") else None

    @property
    def uses_grad_scaler(self) -> bool:
        return self.name == "fp16-mixed"

    @property
    def compensated_optimizer(self) -> bool:
        return self.name == "bf16-true"

    def autocast(self):
        """The forward-pass context: autocast in the mixed modes, nothing otherwise."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def fsdp_policy(self):
        """FSDP2's policy: gather parameters in the compute dtype, reduce gradients in fp32."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if self.autocast_dtype is None:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=self.autocast_dtype, reduce_dtype=torch.float32)

    def grad_scaler(self):
        """A gradient scaler for fp16 (its range is too small for raw gradients); None otherwise."""
        if not self.uses_grad_scaler:
            return None
        return torch.amp.GradScaler(self.device_type)


def plan_for(precision: Precision | str, device: torch.device) -> PrecisionPlan:
    return PrecisionPlan(resolve_precision(precision, device), device.type)
