"""Reference log-probs for training: a precomputed cache in the log dir, or a frozen model.

With `precompute_reference=true` (what `auto`, the default, picks for up to
AUTO_PRECOMPUTE_MAX_PAIRS pairs to score) the reference model runs over every train and test pair
once (a forward pass each, no gradients), its log-probs are saved to `log_path/reference_logps.pt`
and the model is freed, so it is neither in memory nor in the training step. The cache is keyed by the tokenized data and a fingerprint of the reference weights: a resumed
run reuses it, a change of data or model recomputes it. When the reference is the starting policy
and we are not resuming, the policy itself (identical weights, before any update) computes them,
so no second model is ever loaded.

With LoRA the reference is the policy with its adapters off, precomputed or in every step (and on
resume too): the base weights never change, so it is the starting model without a second copy.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from cookbook.errors import InvalidOptionError
from cookbook.preference.batching import PairBatch
from cookbook.preference.step import reference_pair_logps
from cookbook.training import distributed as dist_utils
from cookbook.training.logprobs import SequenceLogprobModel
from cookbook.training.lora import is_adapter_parameter
from cookbook.training.schedule import eval_batches

CACHE_NAME = "reference_logps.pt"


def data_fingerprint(pairs: Sequence) -> str:
    digest = hashlib.sha256()
    for pair in pairs:
        for seq in (pair.chosen, pair.rejected):
            digest.update(torch.tensor(seq.tokens, dtype=torch.int64).numpy().tobytes())
            digest.update(torch.tensor(seq.weights, dtype=torch.float32).numpy().tobytes())
            digest.update(b"|")
    return digest.hexdigest()


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """Cheap and order-sensitive: per-tensor sums and sums of squares of every parameter. LoRA
    adapters are left out: the reference of a LoRA run is the model with its adapters off."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if is_adapter_parameter(name):
            continue
        p = param.detach().double()
        digest.update(name.encode())
        digest.update(torch.stack([p.sum(), (p * p).sum()]).cpu().numpy().tobytes())
    return digest.hexdigest()


def batches_to_fill(table: Tensor, batches: Sequence[Sequence[int]]) -> list[list[int]]:
    """The micro-batches holding a pair whose row of `table` is still NaN (not computed)."""
    return [list(ids) for ids in batches if ids and torch.isnan(table[list(ids)]).any()]


@torch.no_grad()
def fill_reference_logps(
    reference_model: nn.Module,
    pairs: Sequence,
    batches: Sequence[Sequence[int]],
    num_forwards: int,
    num_pairs: int,
    collate: Callable[[Sequence, Sequence[int]], PairBatch],
    device: torch.device,
    show_progress: bool = True,
    desc: str = "reference log-probs",
) -> Tensor:
    """Reference log-probs [num_pairs, 2] (chosen, rejected) for the pairs of `batches`, NaN elsewhere.

    `batches` are the very micro-batches the policy will see, so at step 0, when policy and
    reference weights are equal, both compute bit-identical log-probs and every margin is exactly 0.
    `num_forwards` >= len(batches) forward passes are run (the extra ones on a stand-in batch whose
    result is dropped), so every rank of an FSDP run takes part in the same number of gathers.
    """
    out = empty_table(num_pairs)
    for index in tqdm(range(num_forwards), desc=desc, disable=not show_progress or not num_forwards, leave=False):
        ids = batches[index] if index < len(batches) else [0]
        batch = collate([pairs[i] for i in ids], ids).to(device)
        chosen, rejected = reference_pair_logps(reference_model, batch)
        if index >= len(batches):
            continue
        fresh = torch.stack([chosen.float().cpu(), rejected.float().cpu()], dim=1)
        keep = torch.isnan(out[ids])  # a pair seen in an earlier batch keeps its first value
        out[ids] = torch.where(keep, fresh, out[ids])
    return out


def merge_tables(base: Tensor, new_rows: Tensor) -> Tensor:
    """`base` with every non-NaN entry of `new_rows` written over it."""
    return torch.where(torch.isnan(new_rows), base, new_rows)


def empty_table(num_pairs: int) -> Tensor:
    return torch.full((num_pairs, 2), float("nan"), dtype=torch.float32)


def load_cached(log_path: str | Path, key: str | None = None, data_key: str | None = None) -> dict[str, Tensor] | None:
    """The cached tables if they match `key` (data and reference weights) or, on resume, where
    the reference weights are not loaded, at least `data_key`."""
    path = Path(log_path) / CACHE_NAME
    if not path.exists():
        return None
    cached = torch.load(path, weights_only=True)
    if key is not None and cached.get("key") != key:
        return None
    if data_key is not None and cached.get("data_key") != data_key:
        return None
    return cached


def save_cache(log_path: str | Path, key: str, data_key_value: str, tables: dict[str, Tensor]) -> None:
    path = Path(log_path) / CACHE_NAME
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"key": key, "data_key": data_key_value, **tables}, tmp)
    tmp.replace(path)


def data_key(train_pairs: Sequence, test_pairs: Sequence) -> str:
    return hashlib.sha256((data_fingerprint(train_pairs) + data_fingerprint(test_pairs)).encode()).hexdigest()


def cache_key(reference_name: str, reference_fingerprint: str, data_key_value: str) -> str:
    """Key of a cache entry: the reference model (name and weights) and the data (`data_key`)."""
    digest = hashlib.sha256()
    for part in (reference_name, reference_fingerprint, data_key_value):
        digest.update(part.encode())
    return digest.hexdigest()


class TableReference:
    """Reference log-probs looked up by pair id in a precomputed [num_pairs, 2] table."""

    def __init__(self, table: Tensor):
        self.table = table

    def __call__(self, batch: PairBatch) -> tuple[Tensor, Tensor]:
        rows = self.table[batch.pair_ids.cpu()]
        if torch.isnan(rows).any():
            raise RuntimeError("reference log-probs missing for a pair in this batch (cache out of step with the data)")
        rows = rows.to(batch.input_ids.device)
        return rows[:, 0], rows[:, 1]


class ModelReference:
    """Reference log-probs from a frozen model run on the same batch as the policy, inside
    `context` (the policy with its LoRA adapters off is such a model)."""

    def __init__(self, model: nn.Module, context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.model, self.context = model, context

    def __call__(self, batch: PairBatch) -> tuple[Tensor, Tensor]:
        with self.context():
            return reference_pair_logps(self.model, batch)


@dataclass
class ReferenceSource:
    """`for_split(name)` gives a callable batch -> (chosen, rejected) reference log-probs, or None."""

    tables: dict[str, torch.Tensor] | None = None
    model: torch.nn.Module | None = None
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def for_split(self, split: str) -> Callable | None:
        if self.tables is not None:
            return TableReference(self.tables[split])
        if self.model is not None:
            return ModelReference(self.model, self.context)
        return None


PrecomputeReference = Literal["auto", "true", "false"]
# Above this many pairs to score, `auto` runs the reference in the step: scoring first would hold
# step 1 back by a quarter of the run's compute (one forward of the three a trained pair costs),
# hours for a hub-size set on a CPU, for the price of a frozen copy in memory (none with LoRA).
AUTO_PRECOMPUTE_MAX_PAIRS = 10_000


def resolve_precompute(setting: PrecomputeReference | bool, pairs_to_score: int) -> bool:
    """Whether to score the reference before training, for `precompute_reference=setting`."""
    if setting in (True, "true"):
        return True
    if setting in (False, "false"):
        return False
    if setting == "auto":
        return pairs_to_score <= AUTO_PRECOMPUTE_MAX_PAIRS
    raise InvalidOptionError(f"precompute_reference={setting!r} is not one of auto, true, false")


def prepare_reference(run, policy: torch.nn.Module, policy_fingerprint: str, reference_name: str, start_name: str,
                      data, collate, train_batches: list[list[int]]) -> ReferenceSource:
    """Reference log-probs for the pairs of this rank's `train_batches` (the micro-batches the run
    will train on, in order) and all test pairs, from the cache when it has them; or a frozen
    model run in every step when not precomputing. `data` has `train` and `test` sequences of
    `TokenizedPair`s (KTO hands its examples as (own completion, mismatched completion) pairs);
    `run.config` the `precompute_reference` option.

    When the reference is the starting policy, the policy itself (before any update, wrapped for
    DDP/FSDP and under the run's precision) computes them, so at step 0 policy and reference agree
    exactly in every precision and layout."""
    config, info, console = run.config, run.info, run.console
    adapters_off = run.lora.adapters_off if run.lora is not None and reference_name == start_name else None
    reuse_policy = reference_name == start_name and not run.resumed
    batches = {"train": train_batches,
               "test": [ids for ids in eval_batches(len(data.test), config.micro_batch_size, info.rank, info.world_size) if ids]}
    needed = {split: sorted({i for ids in split_batches for i in ids}) for split, split_batches in batches.items()}
    # Over the whole run (not what is left on resume) and all ranks, so every rank and every resume decide alike.
    pairs_to_score = int(sum(dist_utils.all_reduce_sum([float(len(needed["train"]) + len(needed["test"]))], info)))
    precompute = resolve_precompute(config.precompute_reference, pairs_to_score)
    why = (f" (precompute_reference=auto: {pairs_to_score:,} pairs to score, over {AUTO_PRECOMPUTE_MAX_PAIRS:,}; "
           "precompute_reference=true scores them before step 1)") if config.precompute_reference == "auto" else ""

    def load_reference() -> tuple[torch.nn.Module, str]:
        """The reference model and its weights' fingerprint (taken before FSDP shards them)."""
        if adapters_off is not None:
            # Under DDP the bare module: a forward without gradients needs none of DDP's hooks.
            return dist_utils.unwrap(policy), policy_fingerprint
        if reuse_policy and precompute:
            return policy, policy_fingerprint
        causal_lm = run.load_model(reference_name, trainable=False)
        causal_lm.requires_grad_(False)
        model = SequenceLogprobModel(causal_lm, compute_context=run.plan.autocast)
        fingerprint = model_fingerprint(model)
        return run.wrap(model, causal_lm, trainable=False).eval(), fingerprint

    if not precompute:
        if adapters_off is not None:
            console.print(f"Reference model: the policy with its LoRA adapters off, run in every step{why}")
            return ReferenceSource(model=load_reference()[0], context=adapters_off)
        console.print(f"Reference model: {reference_name} (frozen copy, run in every step){why}")
        return ReferenceSource(model=load_reference()[0])

    # The loaded data names itself (its cache key); other data is hashed pair by pair.
    data_digest = getattr(data, "fingerprint", "") or data_key(data.train, data.test)
    # On resume the reference weights are not loaded (the key needs their fingerprint): a cache for
    # the same data, written by this run, is trusted.
    cached = None
    if info.is_main:
        cached = load_cached(config.log_path, data_key=data_digest) if run.resumed else None
    cached = dist_utils.broadcast_object(cached, info)
    if cached is not None and _all_ranks(_covers(cached, needed), info):
        console.print(f"Reference log-probs: reusing {config.log_path}/{CACHE_NAME}")
        return ReferenceSource(tables={split: cached[split] for split in needed})

    reference_model, fingerprint = load_reference()
    key = cache_key(reference_name, fingerprint, data_digest)
    if cached is None and info.is_main:
        cached = load_cached(config.log_path, key=key)
    cached = dist_utils.broadcast_object(cached, info)
    tables = {"train": empty_table(len(data.train)), "test": empty_table(len(data.test))}
    if cached is not None:
        tables = {split: cached[split] for split in tables}
    was_training = reference_model.training
    reference_model.eval()
    # FSDP gathers weights in every forward, collectively: all ranks must run as many.
    collective = run.strategy == "fsdp"
    with (adapters_off or contextlib.nullcontext)():
        for split, pairs in (("train", data.train), ("test", data.test)):
            todo = batches_to_fill(tables[split], batches[split])
            num_forwards = int(dist_utils.all_reduce_max(len(todo), info)) if collective else len(todo)
            new_rows = fill_reference_logps(reference_model, pairs, todo, num_forwards, len(pairs), collate,
                                                info.device, info.is_main, desc=f"reference log-probs ({split})")
            tables[split] = merge_tables(tables[split], dist_utils.combine_ranks(new_rows, info))
    reference_model.train(was_training)
    if info.is_main:
        save_cache(config.log_path, key, data_digest, tables)
    del reference_model
    return ReferenceSource(tables=tables)


def _covers(cached: dict, needed: dict[str, list[int]]) -> bool:
    return all(not torch.isnan(cached[split][ids]).any() for split, ids in needed.items() if ids)


def _all_ranks(flag: bool, info) -> bool:
    return dist_utils.all_reduce_sum([float(not flag)], info)[0] == 0
