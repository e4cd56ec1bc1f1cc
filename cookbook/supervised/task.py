"""`SupervisedTask`: the SFT recipe's part of the shared training loop (`cookbook.training.loop`).

The loop asks a task for four things; for SFT they are: the step's loss denominator (the trained
tokens of the global batch, see step.py for why per token), one micro-batch's NLL sum and metric
sums, the step metrics, and the held-out `test/nll`. Everything else (accumulation, clipping,
precision, checkpoints, resume) is the loop's.

    task = SupervisedTask(data, make_supervised_collate(config.layout, tokenizer.pad_token_id, causal_lm).collate,
                          config.micro_batch_size, run.info)
    run.train(policy, causal_lm, task, schedule, tokenizer, metadata, start_metrics=data.summary.as_metrics())
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from cookbook.supervised.collate import SupervisedBatch
from cookbook.supervised.evaluation import evaluate_supervised
from cookbook.supervised.load import SupervisedData
from cookbook.supervised.step import sft_forward, step_metrics, trained_token_count
from cookbook.training.distributed import DistInfo
from cookbook.training.loop import MicroBatchOutput


class SupervisedTask:
    """Sequences -> mean NLL per trained token of the global batch, for the shared loop."""

    def __init__(self, data: SupervisedData, collate: Callable[[Sequence, Sequence[int]], SupervisedBatch],
                 micro_batch_size: int, info: DistInfo):
        self.data, self.collate, self.micro_batch_size, self.info = data, collate, micro_batch_size, info

    def loss_denominator(self, global_ids: Sequence[int]) -> float:
        return trained_token_count(self.data.train, global_ids)

    def forward(self, model: nn.Module, ids: list[int]) -> MicroBatchOutput:
        batch = self.collate([self.data.train[i] for i in ids], ids).to(self.info.device)
        result = sft_forward(model, batch)
        return MicroBatchOutput(result.nll_sum, result.metric_sums)

    def step_metrics(self, sums: dict[str, float], denominator: float) -> dict[str, float]:
        return step_metrics(sums, denominator)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.data.test:
            return {}
        return evaluate_supervised(model, self.data.test, self.collate, self.micro_batch_size, self.info)
