"""Reference-model log-probs computed once before training and cached in the log dir.

With `precompute_reference=true` the reference model runs over every train and test pair once (a
forward pass each, no gradients), its log-probs are saved to `log_path/reference_logps.pt` and the
model is freed, so it is neither in memory nor in the training step. The cache is keyed by the
tokenized data and a fingerprint of the reference weights: a resumed run reuses it, a change of
data or model recomputes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from cookbook.preference.batching import PairBatch
from cookbook.preference.step import reference_pair_logps

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
    """Cheap and order-sensitive: per-tensor sums and sums of squares of every parameter."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        p = param.detach().double()
        digest.update(name.encode())
        digest.update(torch.stack([p.sum(), (p * p).sum()]).cpu().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def compute_reference_logps(
    reference_model: nn.Module,
    pairs: Sequence,
    collate: Callable[[Sequence, Sequence[int]], PairBatch],
    micro_batch_size: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    desc: str = "reference log-probs",
) -> Tensor:
    """[len(pairs), 2] float32 (chosen, rejected); each rank fills its share, zeros elsewhere
    (the caller sums over ranks)."""
    table = torch.zeros(len(pairs), 2, dtype=torch.float32)
    my_ids = list(range(rank, len(pairs), world_size))
    starts = range(0, len(my_ids), micro_batch_size)
    for start in tqdm(starts, desc=desc, disable=rank != 0, leave=False):
        ids = my_ids[start : start + micro_batch_size]
        batch = collate([pairs[i] for i in ids], ids).to(device)
        chosen, rejected = reference_pair_logps(reference_model, batch)
        table[ids, 0] = chosen.float().cpu()
        table[ids, 1] = rejected.float().cpu()
    return table


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


def cache_key(reference_name: str, reference_fingerprint: str, train_pairs: Sequence, test_pairs: Sequence) -> str:
    digest = hashlib.sha256()
    for part in (reference_name, reference_fingerprint, data_key(train_pairs, test_pairs)):
        digest.update(part.encode())
    return digest.hexdigest()


class TableReference:
    """Reference log-probs looked up by pair id in a precomputed [num_pairs, 2] table."""

    def __init__(self, table: Tensor):
        self.table = table

    def __call__(self, batch: PairBatch) -> tuple[Tensor, Tensor]:
        rows = self.table[batch.pair_ids.cpu()].to(batch.input_ids.device)
        return rows[:, 0], rows[:, 1]


class ModelReference:
    """Reference log-probs from a frozen model run on the same batch as the policy."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, batch: PairBatch) -> tuple[Tensor, Tensor]:
        return reference_pair_logps(self.model, batch)
