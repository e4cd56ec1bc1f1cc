"""Getting reference log-probs for training: a precomputed cache or a frozen model.

With `precompute_reference=true` (the default) the reference runs once over all pairs; when the
reference is the starting policy and we are not resuming, the policy itself (identical weights,
before any update) computes them, so no second model is ever loaded.

With LoRA the reference is the policy with its adapters off, precomputed or in every step (and on
resume too): the base weights never change, so it is the starting model without a second copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cookbook.preference import reference as ref
from cookbook.preference.evaluation import eval_batches
from cookbook.preference.logprobs import SequenceLogprobModel
from cookbook.training import distributed as dist_utils


@dataclass
class ReferenceSource:
    """`for_split(name)` gives a callable batch -> (chosen, rejected) reference log-probs, or None."""

    tables: dict[str, torch.Tensor] | None = None
    model: torch.nn.Module | None = None
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def for_split(self, split: str) -> Callable | None:
        if self.tables is not None:
            return ref.TableReference(self.tables[split])
        if self.model is not None:
            return ref.ModelReference(self.model, self.context)
        return None


def prepare_reference(run, policy: torch.nn.Module, policy_fingerprint: str, reference_name: str, start_name: str,
                      data, collate, train_batches: list[list[int]]) -> ReferenceSource:
    """Reference log-probs for the pairs of this rank's `train_batches` (the micro-batches the run
    will train on, in order) and all test pairs, from the cache when it has them; or a frozen
    model run in every step when not precomputing.

    When the reference is the starting policy, the policy itself (before any update, wrapped for
    DDP/FSDP and under the run's precision) computes them, so at step 0 policy and reference agree
    exactly in every precision and layout."""
    config, info, console = run.config, run.info, run.console
    if not config.loss_settings.needs_reference:
        return ReferenceSource()
    adapters_off = run.lora.adapters_off if run.lora is not None and reference_name == start_name else None
    reuse_policy = reference_name == start_name and not run.resumed

    def load_reference() -> tuple[torch.nn.Module, str]:
        """The reference model and its weights' fingerprint (taken before FSDP shards them)."""
        if adapters_off is not None:
            # Under DDP the bare module: a forward without gradients needs none of DDP's hooks.
            return dist_utils.unwrap(policy), policy_fingerprint
        if reuse_policy and config.precompute_reference:
            return policy, policy_fingerprint
        causal_lm = run.load_model(reference_name, trainable=False)
        causal_lm.requires_grad_(False)
        model = SequenceLogprobModel(causal_lm, compute_context=run.plan.autocast)
        fingerprint = ref.model_fingerprint(model)
        return run.wrap(model, causal_lm, trainable=False).eval(), fingerprint

    if not config.precompute_reference:
        if adapters_off is not None:
            console.print("Reference model: the policy with its LoRA adapters off, run in every step")
            return ReferenceSource(model=load_reference()[0], context=adapters_off)
        console.print(f"Reference model: {reference_name} (frozen copy, run in every step)")
        return ReferenceSource(model=load_reference()[0])

    batches = {"train": train_batches,
               "test": [ids for ids in eval_batches(len(data.test), config.micro_batch_size, info.rank, info.world_size) if ids]}
    needed = {split: sorted({i for ids in split_batches for i in ids}) for split, split_batches in batches.items()}
    data_key = ref.data_key(data.train, data.test)
    # On resume the reference weights are not loaded (the key needs their fingerprint): a cache for
    # the same data, written by this run, is trusted.
    cached = None
    if info.is_main:
        cached = ref.load_cached(config.log_path, data_key=data_key) if run.resumed else None
    cached = dist_utils.broadcast_object(cached, info)
    if cached is not None and _all_ranks(_covers(cached, needed), info):
        console.print(f"Reference log-probs: reusing {config.log_path}/{ref.CACHE_NAME}")
        return ReferenceSource(tables={split: cached[split] for split in needed})

    reference_model, fingerprint = load_reference()
    key = ref.cache_key(reference_name, fingerprint, data_key)
    if cached is None and info.is_main:
        cached = ref.load_cached(config.log_path, key=key)
    cached = dist_utils.broadcast_object(cached, info)
    tables = {"train": ref.empty_table(len(data.train)), "test": ref.empty_table(len(data.test))}
    if cached is not None:
        tables = {split: cached[split] for split in tables}
    was_training = reference_model.training
    reference_model.eval()
    # FSDP gathers weights in every forward, collectively: all ranks must run as many.
    collective = run.strategy == "fsdp"
    with (adapters_off or contextlib.nullcontext)():
        for split, pairs in (("train", data.train), ("test", data.test)):
            todo = ref.batches_to_fill(tables[split], batches[split])
            num_forwards = int(dist_utils.all_reduce_max(len(todo), info)) if collective else len(todo)
            new_rows = ref.fill_reference_logps(reference_model, pairs, todo, num_forwards, len(pairs), collate,
                                                info.device, info.is_main, desc=f"reference log-probs ({split})")
            tables[split] = ref.merge_tables(tables[split], combine_ranks(new_rows, info))
    reference_model.train(was_training)
    if info.is_main:
        ref.save_cache(config.log_path, key, data_key, tables)
    del reference_model
    return ReferenceSource(tables=tables)


def _covers(cached: dict, needed: dict[str, list[int]]) -> bool:
    return all(not torch.isnan(cached[split][ids]).any() for split, ids in needed.items() if ids)


def _all_ranks(flag: bool, info) -> bool:
    return dist_utils.all_reduce_sum([float(not flag)], info)[0] == 0


def combine_ranks(rows: torch.Tensor, info) -> torch.Tensor:
    """Each rank holds NaN except the rows it computed; give every rank all of them. A row that
    several ranks computed (a pair trained in more than one epoch or cycle) takes the lowest such
    rank's value, so it is one computed value and not a sum of them."""
    if not info.is_distributed:
        return rows
    filled = ~torch.isnan(rows).any(dim=1)
    owner = torch.where(filled, info.rank, info.world_size).to(torch.float32)
    owner = -dist_utils.all_reduce_max_tensor(-owner.to(info.device), info).cpu()  # the lowest rank
    mine = (filled & (owner == info.rank)).unsqueeze(1)
    summed = dist_utils.all_reduce_tensor_sum(torch.where(mine, rows, 0.0).to(info.device), info).cpu()
    return torch.where((owner < info.world_size).unsqueeze(1), summed, torch.full_like(summed, float("nan")))
