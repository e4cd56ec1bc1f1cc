"""Getting reference log-probs for training: a precomputed cache or a frozen model.

With `precompute_reference=true` (the default) the reference runs once over all pairs; when the
reference is the starting policy and we are not resuming, the policy itself (identical weights,
before any update) computes them, so no second model is ever loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from rich.console import Console

from cookbook.models import load_model_and_tokenizer
from cookbook.preference import reference as ref
from cookbook.preference.logprobs import SequenceLogprobModel
from cookbook.training import distributed as dist_utils


@dataclass
class ReferenceSource:
    """`for_split(name)` gives a callable batch -> (chosen, rejected) reference log-probs, or None."""

    tables: dict[str, torch.Tensor] | None = None
    model: torch.nn.Module | None = None

    def for_split(self, split: str) -> Callable | None:
        if self.tables is not None:
            return ref.TableReference(self.tables[split])
        if self.model is not None:
            return ref.ModelReference(self.model)
        return None


def prepare_reference(config, info, console: Console, policy_lm, reference_name: str, start_name: str,
                      resumed: bool, data, collate) -> ReferenceSource:
    if not config.loss_settings.needs_reference:
        return ReferenceSource()
    reuse_policy = reference_name == start_name and not resumed

    def load_reference() -> SequenceLogprobModel:
        if reuse_policy and config.precompute_reference:
            return SequenceLogprobModel(policy_lm)
        model, _ = load_model_and_tokenizer(reference_name, dtype=config.dtype, device=str(info.device))
        model.requires_grad_(False)
        return SequenceLogprobModel(model).eval()

    if not config.precompute_reference:
        console.print(f"Reference model: {reference_name} (frozen copy, run in every step)")
        return ReferenceSource(model=load_reference())

    # The key needs the reference weights' fingerprint; on resume a matching cache spares loading them.
    data_key = ref.data_key(data.train, data.test)
    cached = None
    if resumed and info.is_main:
        cached = ref.load_cached(config.log_path, data_key=data_key)
    cached = dist_utils.broadcast_object(cached, info)
    if cached is not None:
        console.print(f"Reference log-probs: reusing {config.log_path}/{ref.CACHE_NAME}")
        return ReferenceSource(tables={"train": cached["train"], "test": cached["test"]})

    reference_model = load_reference()
    key = ref.cache_key(reference_name, ref.model_fingerprint(reference_model), data.train, data.test)
    cached = ref.load_cached(config.log_path, key=key) if info.is_main else None
    cached = dist_utils.broadcast_object(cached, info)
    if cached is None:
        was_training = reference_model.training
        reference_model.eval()
        tables = {}
        for split, pairs in (("train", data.train), ("test", data.test)):
            table = ref.compute_reference_logps(reference_model, pairs, collate, config.micro_batch_size,
                                                info.device, info.rank, info.world_size, desc=f"reference ({split})")
            tables[split] = dist_utils.all_reduce_tensor_sum(table.to(info.device), info).cpu()
        reference_model.train(was_training)
        if info.is_main:
            ref.save_cache(config.log_path, key, data_key, tables)
    else:
        tables = {"train": cached["train"], "test": cached["test"]}
    del reference_model
    return ReferenceSource(tables=tables)

