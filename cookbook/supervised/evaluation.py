"""Held-out supervised metrics: the training NLL per trained token, without gradients, over all ranks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from cookbook.preference.evaluation import eval_batches
from cookbook.supervised.collate import SupervisedBatch
from cookbook.supervised.step import sft_forward
from cookbook.training.distributed import DistInfo, all_reduce_sum

# exp() of more than this overflows a float; such a perplexity is reported as inf.
MAX_LOG_PERPLEXITY = 700.0


@torch.no_grad()
def evaluate_supervised(
    model: nn.Module,
    sequences: Sequence,
    collate: Callable[[Sequence, Sequence[int]], SupervisedBatch],
    micro_batch_size: int,
    info: DistInfo,
    prefix: str = "test/",
) -> dict[str, float]:
    """NLL per trained token over all `sequences` (each rank scores every world_size-th; the sums
    are combined over ranks, so the result is the same at any world size).

    Keys: test/nll (sum of -w_t log p over all trained tokens / sum of w_t, as the training loss),
    test/ppl = exp(test/nll), test/num_trained_tokens.
    """
    was_training = model.training
    model.eval()
    nll_sum, trained = 0.0, 0.0
    for ids in eval_batches(len(sequences), micro_batch_size, info.rank, info.world_size):
        real = bool(ids)
        ids = ids or [0]  # a padding batch keeps FSDP's collectives in step; its numbers are discarded
        batch = collate([sequences[i] for i in ids], ids).to(info.device)
        result = sft_forward(model, batch)
        if real:
            nll_sum += result.metric_sums["loss"]
            trained += result.num_trained_tokens
    nll_total, trained_total = all_reduce_sum([nll_sum, trained], info)
    model.train(was_training)
    nll = nll_total / max(trained_total, 1e-12)
    return {
        f"{prefix}nll": nll,
        f"{prefix}ppl": math.exp(nll) if nll < MAX_LOG_PERPLEXITY else math.inf,
        f"{prefix}num_trained_tokens": trained_total,
    }
