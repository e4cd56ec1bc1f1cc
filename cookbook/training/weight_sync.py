"""The policy's weights as a sampling engine loads them, after each round's training.

    engine.load_weights(engine_weights(causal_lm))

Whole tensors under their Hugging Face names: FSDP2 shards are gathered (`full_tensor`, a collective:
every rank iterates to the end, in the same order), and LoRA adapters are merged into the weights
they adapt (W + scale * B A) on the fly, so the engine samples from exactly the model being trained
while the trainer's own copy (base and adapters apart) is left as it is. A tied output layer is one
parameter (`named_parameters` yields it once), which is how the engine expects it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from cookbook.training.distributed import full_tensor
from cookbook.training.lora import is_adapter_parameter


def engine_weights(causal_lm: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole tensor) for every weight of `causal_lm` (a HF causal LM, peft-modified or not)."""
    lora_layers = _lora_layers(causal_lm)
    for name, param in causal_lm.named_parameters():
        if is_adapter_parameter(name):
            continue
        prefix, _, leaf = name.rpartition(".base_layer.")
        if leaf and prefix in lora_layers:
            weight = full_tensor(param.detach())
            if leaf == "weight":
                weight = weight.float() + lora_delta(lora_layers[prefix])
            yield f"{prefix}.{leaf}", weight
        else:
            yield name, full_tensor(param.detach())


def _lora_layers(causal_lm: nn.Module) -> dict[str, nn.Module]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return {}
    layers = {name: module for name, module in causal_lm.named_modules() if isinstance(module, LoraLayer)}
    for name, module in layers.items():
        if not isinstance(module.base_layer, nn.Linear) or getattr(module, "fan_in_fan_out", False):
            raise ValueError(f"{name}: only LoRA on nn.Linear layers can be merged for the sampling engine")
    return layers


def lora_delta(layer: nn.Module) -> torch.Tensor:
    """scale * B A summed over a peft LoRA Linear's active adapters, fp32 (zeros while they are off)."""
    if getattr(layer, "disable_adapters", False):
        return torch.zeros(())
    delta = torch.zeros(())
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        a = full_tensor(layer.lora_A[adapter].weight.detach()).float()
        b = full_tensor(layer.lora_B[adapter].weight.detach()).float()
        delta = delta + (b @ a) * layer.scaling[adapter]
    return delta
