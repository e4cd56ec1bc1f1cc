"""AdamW for bf16 parameters that does not lose small steps (precision=bf16-true).

A bf16 weight near 0.02 is spaced about 1.2e-4 from its neighbours; a DPO-sized update (about the
learning rate, 5e-7 to 5e-6) added to it rounds away. Each parameter here carries a bf16
*compensation*: the part of the past updates that the rounding dropped (Kahan summation). The next
update is added to it first, so the dropped part is carried until it moves the weight; weight +
compensation tracks an fp32 master to about 3 significant digits of the compensation itself.

The moments are bf16 too, written with stochastic rounding: their per-step change (a factor 0.999
for the second moment) is below bf16's resolution, and rounding to nearest would freeze them; a
stochastic round is unbiased, so the running averages stay right on average. With bf16 gradients
that is 10 bytes of state per parameter (weight, gradient, two moments, compensation) against 16
for fp32 weights with fp32 AdamW.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def stochastic_round_to_bf16(value: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Round float32 `value` to bf16 up or down with probabilities that make the result unbiased."""
    bits = value.float().contiguous().view(torch.int32)
    # Adding uniform noise below the 16 bits that bf16 keeps, then truncating, rounds up with
    # probability equal to the dropped fraction (on the magnitude; the sign bit is untouched).
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator)
    rounded = (bits + noise) & -65536  # -65536 == 0xFFFF0000 as int32
    return rounded.view(torch.float32).to(torch.bfloat16)


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
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param, dtype=torch.bfloat16)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.bfloat16)
                    state["compensation"] = torch.zeros_like(param, dtype=torch.bfloat16)
                state["step"] += 1
                step = float(state["step"])
                grad = param.grad.float()
                exp_avg = state["exp_avg"].float().lerp_(grad, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"].float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                state["exp_avg"].copy_(stochastic_round_to_bf16(exp_avg))
                state["exp_avg_sq"].copy_(stochastic_round_to_bf16(exp_avg_sq))
                denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(group["eps"])
                weight = param.float()
                update = exp_avg.div_(denom).mul_(-group["lr"] / (1 - beta1**step))
                if group["weight_decay"]:
                    update.add_(weight, alpha=-group["lr"] * group["weight_decay"])
                # Kahan: add the carried remainder, round the sum into the weight, carry what was lost.
                carried = update.add_(state["compensation"].float())
                new_weight = (weight + carried).to(torch.bfloat16)
                state["compensation"].copy_(carried.sub_(new_weight.float() - weight))
                param.copy_(new_weight)
        return loss

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
