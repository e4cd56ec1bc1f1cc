"""Reference-model log-probs computed once before training and cached in the log dir.

With `precompute_reference=true` the reference model runs over every train and test pair once (a
forward pass each, no gradients), its log-probs are saved to `log_path/reference_logps.pt` and the
model is freed, so it is neither in memory nor in the training step. The cache is keyed by the
tokenized data and a fingerprint of the reference weights: a resumed run reuses it, a change of
data or model recomputes it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from cookbook.preference.batching import PairBatch
from cookbook.preference.step import reference_pair_logps
from cookbook.training.lora import is_adapter_parameter

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
