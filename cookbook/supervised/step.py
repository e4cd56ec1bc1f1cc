"""One micro-batch of supervised training: the summed token NLL, the counts to normalise it, and
metric sums; and the held-out NLL (`evaluate_supervised`), the same measure without gradients.

The loss of a step is the mean NLL over the trained tokens of the whole global batch (all
micro-batches on all ranks):

    loss = sum over trained tokens t of  -w_t log p(y_t | y_<t)  /  sum over trained tokens t of w_t

Per token, not per sequence: every trained token counts the same, so a long reply is not
down-weighted against a short one (under a per-sequence mean, a 5-token reply's tokens would each
count ten times a 50-token reply's), the training loss is the same quantity as `test/nll` and
perplexity, and it does not depend on how sequences are split into micro-batches or ranks. The
price: a batch's gradient leans toward its long replies (per-sequence weighting would make every
example count the same whatever its length; `sequence_nll` reports that view as a metric).

`sft_forward` returns sums; the loop divides by the global trained-token count, which is known
before the first forward: `trained_token_count(sequences, global_batch_ids)` is a pure function of
the data, so every rank computes the same value without a collective.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cookbook.supervised.batching import SupervisedBatch
from cookbook.training.distributed import DistInfo, all_reduce_sum
from cookbook.training.schedule import eval_batches


@dataclass
class SupervisedStepResult:
    nll_sum: Tensor  # differentiable: sum of -w_t log p over the batch's trained tokens (float32)
    num_trained_tokens: float  # sum of w_t over the batch's trained tokens
    num_sequences: int
    metric_sums: dict[str, float]  # summed over the batch (`loss` = nll_sum); see `step_metrics`


def sft_forward(model: nn.Module, batch: SupervisedBatch) -> SupervisedStepResult:
    """NLL sum and counts of one micro-batch; `model` is a (wrapped) `SequenceLogprobModel`."""
    out = model(
        batch.input_ids,
        batch.loss_tokens,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
    )
    nll_sum = -out.logps.sum()
    sequence_nll = -out.logps.detach() / out.num_loss_tokens.clamp(min=1)
    # One device sync for all the numbers instead of one per value.
    nll, trained, sequence_nll_sum = torch.stack(
        [nll_sum.detach(), out.num_loss_tokens.sum(), sequence_nll.sum()]
    ).tolist()
    metric_sums = {
        "loss": nll,  # the NLL sum: the loss before the loop divides by the global trained tokens
        "sequence_nll": sequence_nll_sum,
        "num_trained_tokens": trained,
        "num_sequences": float(batch.num_sequences),
        "num_tokens": float(batch.num_real_tokens),
        "num_slots": float(batch.num_slots),
    }
    return SupervisedStepResult(nll_sum, trained, batch.num_sequences, metric_sums)


def trained_token_count(sequences: Sequence, example_ids: Sequence[int]) -> float:
    """Sum of the loss weights of the trained tokens of `sequences[i]` for i in `example_ids`: the
    denominator of the step loss when `example_ids` is the global batch."""
    return float(sum(sequences[i].num_trained_tokens for i in example_ids))


def step_metrics(sums: Mapping[str, float], denominator: float) -> dict[str, float]:
    """Step metrics from `metric_sums` added over micro-batches and ranks, `denominator` being the
    step's `trained_token_count` (equal to the summed `num_trained_tokens`).

    loss = nll: mean NLL per trained token (what is optimised); sequence_nll: mean over sequences of
    each one's per-token NLL (comparable to the preference recipe's `nll`); num_sequences,
    num_trained_tokens. The loop adds num_tokens (all tokens), slot_fill and the timings.
    """
    nll = sums["loss"] / max(denominator, 1e-12)
    return {
        "loss": nll,
        "nll": nll,
        "sequence_nll": sums["sequence_nll"] / max(sums["num_sequences"], 1),
        "num_sequences": int(sums["num_sequences"]),
        "num_trained_tokens": int(round(sums["num_trained_tokens"])),
    }


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
