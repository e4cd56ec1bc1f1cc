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
halves the parameter memory and keeps small steps with a compensated update (`CompensatedAdamW`, below).

`auto` picks bf16-mixed on a CUDA GPU with bf16, fp16-mixed on an older GPU, bf16-mixed on a CPU
with native bf16 matmuls (AVX512-BF16 or AMX), fp32 elsewhere.

`CompensatedAdamW` gives each bf16 parameter a bf16 *compensation*: the part of the past updates
that the rounding dropped (Kahan summation). The next update is added to it first, so the dropped part is carried until it moves the weight; weight +
compensation tracks an fp32 master to about 3 significant digits of the compensation itself.
The compensation starts as what casting the fp32 start weights to bf16 dropped
(`seed_compensation`), so a checkpoint (weight + compensation) is the fp32 start plus the updates,
not the bf16-rounded start plus the updates.

The moments are bf16 too, written with stochastic rounding: their per-step change (a factor 0.999
for the second moment) is below bf16's resolution, and rounding to nearest would freeze them; a
stochastic round is unbiased, so the running averages stay right on average. With bf16 gradients
that is 10 bytes of state per parameter (weight, gradient, two moments, compensation) against 16
for fp32 weights with fp32 AdamW.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

Precision = Literal["auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16-true"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16-true")


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


def stochastic_round_to_bf16(value: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Round float32 `value` to bf16 up or down with probabilities that make the result unbiased."""
    bits = value.float().contiguous().view(torch.int32)
    # Adding uniform noise below the 16 bits that bf16 keeps, then truncating, rounds up with
    # probability equal to the dropped fraction (on the magnitude; the sign bit is untouched).
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator)
    rounded = (bits + noise) & -65536  # -65536 == 0xFFFF0000 as int32
    return rounded.view(torch.float32).to(torch.bfloat16)


def _local(tensor: Tensor) -> Tensor:
    """This rank's shard of an FSDP2 DTensor (a view: writing it writes the DTensor); others as they are."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class CompensatedAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) for bf16 parameters with Kahan-compensated updates."""

    def __init__(self, params, lr: float = 1e-5, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    self._init_state(param)
                state["step"] += 1
                step = float(state["step"])
                # Under FSDP2 the parameter, its gradient and its state are DTensors holding this rank's
                # shard; the update is elementwise, so it runs on the local shards.
                weight_shard, exp_avg_shard, exp_avg_sq_shard, compensation = (
                    _local(tensor) for tensor in (param, state["exp_avg"], state["exp_avg_sq"], state["compensation"]))
                grad = _local(param.grad).float()
                exp_avg = exp_avg_shard.float().lerp_(grad, 1 - beta1)
                exp_avg_sq = exp_avg_sq_shard.float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                exp_avg_shard.copy_(stochastic_round_to_bf16(exp_avg))
                exp_avg_sq_shard.copy_(stochastic_round_to_bf16(exp_avg_sq))
                denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(group["eps"])
                weight = weight_shard.float()
                update = exp_avg.div_(denom).mul_(-group["lr"] / (1 - beta1**step))
                if group["weight_decay"]:
                    update.add_(weight, alpha=-group["lr"] * group["weight_decay"])
                # Kahan: add the carried remainder, round the sum into the weight, carry what was lost.
                carried = update.add_(compensation.float())
                new_weight = (weight + carried).to(torch.bfloat16)
                compensation.copy_(carried.sub_(new_weight.float() - weight))
                weight_shard.copy_(new_weight)
        return loss

    def _init_state(self, param: Tensor) -> dict:
        state = self.state[param]
        state["step"] = torch.zeros((), dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(param, dtype=torch.bfloat16)
        state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.bfloat16)
        state["compensation"] = torch.zeros_like(param, dtype=torch.bfloat16)
        return state

    @torch.no_grad()
    def seed_compensation(self, model: nn.Module, dropped: dict[str, Tensor]) -> None:
        """Start each parameter's compensation at `dropped[name]` (what the cast of the fp32 start
        weight to bf16 lost; whole tensors, distributed like the parameter under FSDP2)."""
        trained = {id(param) for group in self.param_groups for param in group["params"]}
        for name, param in model.named_parameters():
            if id(param) not in trained or name not in dropped:
                continue
            value = dropped[name].to(param.device if not hasattr(param, "device_mesh") else "cpu")
            if hasattr(param, "device_mesh"):  # an FSDP2 DTensor: keep this rank's shard
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value.to(param.device_mesh.device_type), param.device_mesh, param.placements)
            self._init_state(param)["compensation"].copy_(value)

    @torch.no_grad()
    def full_master_weights(self, model: nn.Module, gather: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        """Every weight of `model` as float32 weight + compensation (gathered whole with `gather`, a
        collective under FSDP: every rank calls this), keyed like `model.state_dict()`."""
        weights = {}
        for name, tensor in model.state_dict().items():
            weights[name] = gather(tensor).float().cpu()
        for name, param in model.named_parameters():
            compensation = self.state.get(param, {}).get("compensation")
            if compensation is not None:
                weights[name] = weights[name] + gather(compensation).float().cpu()
        return weights
