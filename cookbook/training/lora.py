"""LoRA adapters on the policy, built on peft: adding them, turning them off, saving, loading, merging.

With `lora_rank=N` the loop adds rank-N adapters to the target modules of the causal LM (peft
modifies the model in place, so the recipe keeps calling the HF model it loaded) and freezes
everything else, so only the adapters reach the optimizer. Adapter B matrices start at zero: at
step 0 the policy is exactly the model it started from.

The reference of DPO is the same model with its adapters off (`LoraAdapters.adapters_off`, peft's
adapter switch), so no second copy is held. Adapters stay float32 in every precision: in
bf16-true the base weights are bf16 and frozen, and the adapters, a fraction of a percent of the
parameters, keep fp32 masters and a plain AdamW.

A checkpoint of a LoRA run is an adapter in peft's format (`adapter_config.json`,
`adapter_model.safetensors`) that `PeftModel.from_pretrained(base, dir)` loads, beside our tokenizer
and metadata (the base model). `cookbook.models` loads such a directory as a full model (base +
adapter, merged), which is how `model_name=`, `load_checkpoint_path=` and the eval read one;
`save_merged` writes that full model for `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cookbook.models import DEFAULT_MODEL, METADATA_NAME, bundled_model_dir, load_merged

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
MERGED_NAME = "merged"  # final/merged/: the full model of a LoRA run
ALL_LINEAR = "all-linear"
# With alpha fixed and the update scaled by alpha / rank, the best learning rate barely moves with
# the rank, so a rank sweep needs no learning-rate sweep.
DEFAULT_ALPHA = 32.0
ADAPTER_NAME = "default"
# peft's names for adapter parameters (lora_A, lora_B, lora_embedding_A, ...), and for the trained copy
# of a module it trains whole (a sequence classifier's head: score.modules_to_save.default.weight).
ADAPTER_PARAMETER = re.compile(r"(^|\.)(lora_|modules_to_save\.)")
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_target_modules(spec: str) -> tuple[str, ...]:
    """`lora_target_modules` as names: comma-separated module names, `all-linear` among them allowed."""
    names = tuple(part.strip() for part in spec.split(",") if part.strip())
    if not names:
        raise ValueError("lora_target_modules is empty; give module names (q_proj,v_proj) or all-linear")
    for name in names:
        if name != ALL_LINEAR and not _MODULE_NAME.fullmatch(name):
            raise ValueError(f"lora_target_modules: {name!r} is not a module name (e.g. q_proj) or all-linear")
    return names


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    dropout: float
    target_modules: str

    @classmethod
    def from_config(cls, config) -> LoraSettings | None:
        """The LoRA options of a TrainingConfig; None for full fine-tuning (lora_rank=0)."""
        if not config.lora_rank:
            return None
        return cls(config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_target_modules)


def resolve_target_modules(causal_lm: nn.Module, spec: str) -> list[str]:
    """The module names to adapt: `all-linear` is every linear layer of the decoder (not the LM
    head); a name that matches no module of the model is an error naming what it has."""
    names = parse_target_modules(spec)
    decoder_linear = sorted({name.rsplit(".", 1)[-1] for name, module in causal_lm.get_decoder().named_modules()
                             if isinstance(module, nn.Linear)})
    present = {name.rsplit(".", 1)[-1] for name, _ in causal_lm.named_modules() if name}
    resolved: list[str] = []
    for name in names:
        for target in decoder_linear if name == ALL_LINEAR else [name]:
            if target not in present:
                raise ValueError(f"lora_target_modules: the model has no module named {target!r}; its linear "
                                 f"layers are {', '.join(decoder_linear)} (and the LM head, lm_head)")
            if target not in resolved:
                resolved.append(target)
    _check_tied_embeddings(causal_lm, resolved)
    return resolved


def _check_tied_embeddings(causal_lm: nn.Module, targets: list[str]) -> None:
    """An adapter on one of two tied matrices cannot be merged: merging writes its update into the
    one shared weight, which changes the other layer too (measured: log-probs off by 0.2 nats)."""
    embeddings, head = causal_lm.get_input_embeddings(), causal_lm.get_output_embeddings()
    if head is None or embeddings.weight is not head.weight:
        return
    names = {name.rsplit(".", 1)[-1] for name, module in causal_lm.named_modules() if module in (embeddings, head)}
    tied = [target for target in targets if target in names]
    if tied:
        raise ValueError(f"lora_target_modules: {', '.join(tied)} share one weight matrix in this model "
                         "(tied input and output embeddings), so an adapter on it could not be merged; adapt "
                         "the decoder's layers (all-linear) instead")


def is_adapter_parameter(name: str) -> bool:
    return bool(ADAPTER_PARAMETER.search(name))


class LoraAdapters:
    """The adapters peft added to a causal LM: `peft_model` wraps `causal_lm`, which holds them."""

    def __init__(self, peft_model, settings: LoraSettings, target_modules: list[str]):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.peft_model, self.settings, self.target_modules = peft_model, settings, target_modules
        self._layers = [module for module in self.causal_lm.modules() if isinstance(module, BaseTunerLayer)]

    @property
    def causal_lm(self) -> nn.Module:
        return self.peft_model.get_base_model()

    @contextlib.contextmanager
    def adapters_off(self) -> Iterator[None]:
        """Within this context the model computes as the base model (the DPO reference). What peft's
        `disable_adapter` does, on the adapter layers found once: it runs before every in-step
        reference forward, and peft's own walks the whole model twice (CPU time per toggle, 30 layers
        with 210 adapted modules: 37 ms for peft's, 8 ms for this)."""
        for layer in self._layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in self._layers:
                layer.enable_adapters(True)

    def describe(self) -> str:
        return (f"LoRA rank {self.settings.rank}, alpha {self.settings.alpha:g} (scale "
                f"{self.settings.alpha / self.settings.rank:g}), dropout {self.settings.dropout:g}, "
                f"on {', '.join(self.target_modules)}")

    def summary(self) -> dict:
        """What a checkpoint's metadata records about the adapters."""
        return {"rank": self.settings.rank, "alpha": self.settings.alpha, "dropout": self.settings.dropout,
                "target_modules": self.target_modules}

    def adapter_state(self, model: nn.Module, gather: Callable[[torch.Tensor], torch.Tensor],
                      prefix: str = "") -> dict[str, torch.Tensor]:
        """The adapter weights of `model` (a module holding `causal_lm` under `prefix`), whole, on CPU,
        float32, keyed by causal_lm's parameter names. `gather` is called on every adapter parameter
        in order (a collective under FSDP: every rank calls this)."""
        return {name.removeprefix(prefix): gather(param.detach()).float().cpu()
                for name, param in model.named_parameters() if is_adapter_parameter(name)}

    def save(self, directory: Path, adapter_state: dict[str, torch.Tensor], base_model_name: str) -> None:
        """Write `adapter_config.json` and `adapter_model.safetensors` (peft's format and keys)."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        config = self.peft_model.peft_config[ADAPTER_NAME]
        stored_base = config.base_model_name_or_path
        config.base_model_name_or_path = loadable_base_name(base_model_name)
        try:
            config.save_pretrained(str(directory))
        finally:
            config.base_model_name_or_path = stored_base
        # peft filters and renames a PeftModel's own keys: `base_model.model.` + the causal LM's.
        keyed = {f"base_model.model.{name}": tensor for name, tensor in adapter_state.items()}
        weights = get_peft_model_state_dict(self.peft_model, state_dict=keyed, adapter_name=ADAPTER_NAME,
                                            save_embedding_layers=False)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / ADAPTER_WEIGHTS_NAME),
                  metadata={"format": "pt"})

    def load_weights(self, directory: str | Path) -> None:
        """Set the adapters to those saved in `directory` (resume); every adapter must be there."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(Path(directory) / ADAPTER_WEIGHTS_NAME))
        result = set_peft_model_state_dict(self.peft_model, weights, adapter_name=ADAPTER_NAME)
        missing = [k for k in result.missing_keys if is_adapter_parameter(k)]
        if missing or result.unexpected_keys:
            raise ValueError(f"{directory}: the adapter does not match lora_rank/lora_target_modules "
                             f"(missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]})")


def add_adapters(causal_lm: nn.Module, settings: LoraSettings) -> LoraAdapters:
    """Add trainable LoRA adapters to `causal_lm` in place (B = 0, so its outputs are unchanged) and
    freeze every other parameter. Raises ValueError for a target module the model lacks. A sequence
    classifier (a reward model) is adapted as peft's SEQ_CLS task, which also trains its head in full
    and saves it with the adapters."""
    from peft import LoraConfig, get_peft_model

    targets = resolve_target_modules(causal_lm, settings.target_modules)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias="none",
                        task_type="SEQ_CLS" if is_sequence_classifier(causal_lm) else "CAUSAL_LM")
    with warnings.catch_warnings():
        # peft asks transformers about gradient checkpointing through a name it has deprecated.
        warnings.simplefilter("ignore", FutureWarning)
        # autocast_adapter_dtype: adapters of a bf16 (or fp16) base are made float32.
        peft_model = get_peft_model(causal_lm, config, autocast_adapter_dtype=True)
    return LoraAdapters(peft_model, settings, targets)


def is_sequence_classifier(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of `model`, each tied tensor counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def loadable_base_name(name: str) -> str:
    """What adapter_config.json records as the base: a local directory as an absolute path (so peft
    and transformers find it from anywhere on this machine), the bundled model as its converted
    directory, a hub id as it is."""
    if name == DEFAULT_MODEL:
        return str(bundled_model_dir())
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def save_merged(adapter_dir: Path, out_dir: Path, base_model: nn.Module, tokenizer, metadata: dict,
                dtype: torch.dtype = torch.float32) -> None:
    """Write the full model of `adapter_dir` (`base_model`, its base, with the adapter merged in) to
    `out_dir` as a plain HF directory with the tokenizer and `metadata`."""
    merged = load_merged(adapter_dir, base_model)
    merged.to(dtype).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / METADATA_NAME).write_text(json.dumps(metadata, indent=2))
