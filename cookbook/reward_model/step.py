"""One micro-batch of reward-model training (scores -> Bradley-Terry loss -> metric sums), the
step's metrics from those sums, and the held-out eval.

Sums rather than means, as in `preference/step.py`: the loop divides the summed loss by the global
number of pairs once, so a step means the same at any micro-batch size or world size.

Metrics (means over the step's pairs): `loss`, `accuracy` (chosen scored above rejected, a tie
counting half), `chosen_score`, `rejected_score`, `margin` (chosen - rejected), `score_mean` (the
mean of both, which the centering term holds near 0); on the test split the same under `test/`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from cookbook.reward_model.batching import ScoreBatch
from cookbook.reward_model.losses import bradley_terry_loss
from cookbook.training.distributed import DistInfo, all_reduce_sum
from cookbook.training.loop import MicroBatchOutput
from cookbook.training.schedule import eval_batches

PAIR_KEYS = ("loss", "accuracy", "chosen_score", "rejected_score", "margin", "score_mean")


def pair_scores(model: nn.Module, batch: ScoreBatch) -> tuple[Tensor, Tensor]:
    """(chosen [P], rejected [P]) scores of the batch's pairs, from one forward pass."""
    pairs = batch.pairs
    scores = model(pairs.input_ids, batch.score_slots, attention_mask=pairs.attention_mask,
                   position_ids=pairs.position_ids)
    return scores[pairs.chosen_index], scores[pairs.rejected_index]


def score_micro_batch(model: nn.Module, batch: ScoreBatch, center_coef: float,
                      margins: Tensor | None = None) -> MicroBatchOutput:
    """A collated micro-batch -> its summed loss and metric sums, for the loop."""
    chosen, rejected = pair_scores(model, batch)
    losses = bradley_terry_loss(chosen, rejected, margins, center_coef)
    chosen, rejected = chosen.detach(), rejected.detach()
    difference = chosen - rejected
    values = {
        "loss": losses.detach().sum(),
        "accuracy": ((difference > 0).float() + 0.5 * (difference == 0).float()).sum(),
        "chosen_score": chosen.sum(),
        "rejected_score": rejected.sum(),
        "margin": difference.sum(),
        "score_mean": ((chosen + rejected) / 2).sum(),
    }
    sums = dict(zip(values, torch.stack(list(values.values())).tolist()))  # one device sync
    pairs = batch.pairs
    sums.update(num_pairs=pairs.num_pairs, num_tokens=pairs.num_real_tokens, num_slots=pairs.num_slots)
    return MicroBatchOutput(losses.sum(), sums)


def score_step_metrics(sums: dict[str, float]) -> dict[str, float]:
    """A step's means over its pairs, from sums over micro-batches and ranks."""
    num_pairs = max(sums["num_pairs"], 1)
    return {**{key: sums[key] / num_pairs for key in PAIR_KEYS}, "num_pairs": int(sums["num_pairs"])}


@torch.no_grad()
def evaluate_scores(model: nn.Module, pairs: Sequence, collate: Callable[[Sequence, Sequence[int]], ScoreBatch],
                    micro_batch_size: int, center_coef: float, info: DistInfo,
                    margins: Callable[[list[int]], Tensor | None] = lambda ids: None) -> dict[str, float]:
    """`test/<key>` means over all `pairs` (each rank scores a share; sums are combined over ranks),
    `test/accuracy` being held-out pairwise accuracy."""
    was_training = model.training
    model.eval()
    sums = dict.fromkeys(PAIR_KEYS, 0.0)
    count = 0
    for ids in eval_batches(len(pairs), micro_batch_size, info.rank, info.world_size):
        real = bool(ids)
        ids = ids or [0]  # a padding batch keeps collectives in step; its numbers are discarded
        batch = collate([pairs[i] for i in ids], ids).to(info.device)
        output = score_micro_batch(model, batch, center_coef, margins(ids))
        if real:
            for key in PAIR_KEYS:
                sums[key] += output.metric_sums[key]
            count += batch.num_pairs
    totals = all_reduce_sum([sums[key] for key in PAIR_KEYS] + [float(count)], info)
    model.train(was_training)
    count_total = max(totals[-1], 1.0)
    return {f"test/{key}": value / count_total for key, value in zip(PAIR_KEYS, totals)}
