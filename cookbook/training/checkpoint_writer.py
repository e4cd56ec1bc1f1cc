"""Writing a run's checkpoints: full weights (gathered under FSDP) and optimizer state, on rank 0.

With LoRA a checkpoint holds the adapters (peft's format) instead of the weights, and `final/`
also `merged/`, the full model with the adapters merged in (`write_merged_final`)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from cookbook.models import load_model_and_tokenizer
from cookbook.training import checkpoint as ckpt
from cookbook.training import distributed as dist_utils
from cookbook.training import lora
from cookbook.training.optim import CompensatedAdamW


class CheckpointWriter:
    """Gathers the full weights (and optimizer state) on rank 0 and writes a checkpoint atomically.

    The weights written are the fp32 masters (in bf16-true: each bf16 weight plus its compensation,
    i.e. the value the optimizer is tracking), so a checkpoint never rounds the training away."""

    def __init__(self, run, policy, causal_lm, optimizer, scheduler, scaler, tokenizer, metadata: dict,
                 save_prefix: str, keep_last: int | None):
        self.run, self.policy, self.optimizer, self.scheduler, self.scaler = run, policy, optimizer, scheduler, scaler
        self.causal_lm, self.tokenizer, self.metadata, self.save_prefix = causal_lm, tokenizer, metadata, save_prefix
        self.keep_last = keep_last
        if run.lora is not None:
            self.metadata = {**metadata, "lora": run.lora.summary()}

    def save(self, name: str, step: int, resumable: bool, export_dtype: str = "float32") -> Path | None:
        info = self.run.info
        adapters = self.run.lora
        if adapters is not None:
            model_state = adapters.adapter_state(dist_utils.unwrap(self.policy), dist_utils.full_tensor,
                                                 prefix=self.save_prefix)
        elif isinstance(self.optimizer, CompensatedAdamW):
            model_state = self.optimizer.full_master_weights(dist_utils.unwrap(self.policy), dist_utils.full_tensor)
        else:
            model_state = dist_utils.full_model_state_dict(self.policy)
        optim_state = dist_utils.full_optimizer_state_dict(self.policy, self.optimizer) if resumable else None
        path = None
        if info.is_main:
            training_state = None
            if resumable:
                training_state = {"optimizer": optim_state, "scheduler": self.scheduler.state_dict(),
                                  "rng": ckpt.capture_rng_state(), "step": step,
                                  "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None}
            dtype = getattr(torch, export_dtype)
            if adapters is not None:
                # Adapters stay float32 (they are small, and bf16 would round the training away);
                # export_dtype applies to the merged model.
                merged_dtype = dtype if name == "final" and self.run.config.write_merged_final else None
                write_weights = functools.partial(self._write_adapters, weights=model_state, merged_dtype=merged_dtype)
                path = ckpt.save_checkpoint(self.run.log_path, name, step, model_state, None, self.tokenizer,
                                            self.metadata, training_state, write_weights=write_weights)
            else:
                weights = {k.removeprefix(self.save_prefix): v.to(dtype) if v.is_floating_point() else v
                           for k, v in model_state.items() if k not in self.run.tied_aliases}
                path = ckpt.save_checkpoint(self.run.log_path, name, step, weights, self.causal_lm, self.tokenizer,
                                            self.metadata, training_state)
            self.run.console.print(f"[green]Saved checkpoint {path}")
            for name in ckpt.prune_checkpoints(self.run.log_path, self.keep_last):
                self.run.console.print(f"Removed old checkpoint {name} (keep_last_checkpoints={self.keep_last})")
        dist_utils.barrier(info)
        return path

    def _write_adapters(self, directory: Path, weights: dict, merged_dtype: torch.dtype | None) -> None:
        """The adapter files; with `merged_dtype`, also `merged/`: the base (loaded again, on CPU) with
        the adapters merged in, a plain HF directory in that dtype."""
        base_model_name = self.metadata["base_model_name"]
        self.run.lora.save(directory, weights, base_model_name)
        if merged_dtype is None:
            return
        base = load_model_and_tokenizer(base_model_name, dtype="float32", device="cpu")[0]
        lora.save_merged(directory, directory / lora.MERGED_NAME, base, self.tokenizer,
                         {key: value for key, value in self.metadata.items() if key != "lora"}, dtype=merged_dtype)
        self.run.console.print(f"Merged the adapters into the base: final/{lora.MERGED_NAME}")


def tied_aliases(model: nn.Module) -> set[str]:
    """Names under which a parameter appears a second time (lm_head tied to embed_tokens): FSDP's full
    state dict repeats them, a HF checkpoint stores them once."""
    seen: set[int] = set()
    aliases: set[str] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            aliases.add(name)
        seen.add(id(param))
    return aliases


