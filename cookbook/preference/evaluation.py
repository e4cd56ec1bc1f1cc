"""Held-out preference metrics: the same loss and rewards as training, without gradients."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from cookbook.preference.batching import PairBatch
from cookbook.preference.step import LossSettings, preference_forward
from cookbook.training.distributed import DistInfo, all_reduce_sum
from cookbook.training.schedule import eval_batches

EVAL_KEYS = ("loss", "accuracy", "logp_accuracy", "margin", "chosen_reward", "rejected_reward", "nll")


@torch.no_grad()
def evaluate_pairs(
    policy: nn.Module,
    pairs: Sequence,
    collate: Callable[[Sequence, Sequence[int]], PairBatch],
    micro_batch_size: int,
    settings: LossSettings,
    reference: Callable[[PairBatch], tuple] | None,
    info: DistInfo,
    prefix: str = "test/",
) -> dict[str, float]:
    """Means over all `pairs` (each rank scores a share; sums are combined over ranks).

    Keys: test/dpo_loss (the configured loss), test/accuracy (reward margin > 0, ties count half),
    test/logp_accuracy (policy log p(chosen) > log p(rejected), reference-free), test/margin,
    test/chosen_reward, test/rejected_reward, test/nll (per-token NLL of the chosen completion).
    """
    was_training = policy.training
    policy.eval()
    sums = dict.fromkeys(EVAL_KEYS, 0.0)
    count = 0
    for ids in eval_batches(len(pairs), micro_batch_size, info.rank, info.world_size):
        real = bool(ids)
        ids = ids or [0]  # a padding batch keeps collectives in step; its numbers are discarded
        batch = collate([pairs[i] for i in ids], ids).to(info.device)
        reference_logps = reference(batch) if reference is not None else None
        result = preference_forward(policy, batch, settings, reference_logps)
        if real:
            for key in EVAL_KEYS:
                sums[key] += result.metric_sums[key]
            count += result.num_pairs
    totals = all_reduce_sum([sums[k] for k in EVAL_KEYS] + [float(count)], info)
    count_total = max(totals[-1], 1.0)
    policy.train(was_training)
    metrics = {f"{prefix}{'dpo_loss' if k == 'loss' else k}": v / count_total for k, v in zip(EVAL_KEYS, totals)}
    return metrics
