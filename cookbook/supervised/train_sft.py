"""Supervised fine-tuning (SFT) on the shared loop (`cookbook/training/loop.py`): the light phase
before DPO, which puts the policy in the distribution of the replies it will be asked to rank.

`Config` is what the recipe's command line fills in; `main(config)` runs it:

    load conversations through the renderer -> packed rows (no padding, one attention block per
    sequence) -> for each step: micro-batches -> summed NLL of the trained tokens -> AdamW step
    -> metrics to the rich table and metrics.jsonl, held-out test/nll, atomic HF checkpoints.

Only what is SFT's own lives here: its options, the data and layout, and `SupervisedTask`. The loss
of a step is the mean NLL per trained token of the whole global batch (see `supervised/step.py`),
so it means the same at any micro-batch or world size, and equals the held-out `test/nll`'s measure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import chz
from torch import nn

from cookbook.datasets.load import SupervisedData, load_supervised_data
from cookbook.datasets.summary import print_supervised_example
from cookbook.datasets.supervised import SUPERVISED_DATASETS, SupervisedDatasetBuilder
from cookbook.renderers.base import TrainOn
from cookbook.supervised.batching import SupervisedBatch, SupervisedLayout, make_supervised_collate
from cookbook.supervised.step import evaluate_supervised, sft_forward, step_metrics, trained_token_count
from cookbook.training.config import TrainingConfig
from cookbook.training.distributed import DistInfo
from cookbook.training.logprobs import SequenceLogprobModel
from cookbook.training.loop import MicroBatchOutput, Run, run_recipe

__all__ = ["Config", "SupervisedTask", "main"]


@chz.chz
class Config(TrainingConfig):
    log_path: str = chz.field(default="runs/sft", doc="Directory for config.json, metrics.jsonl, checkpoints")
    dataset: SupervisedDatasetBuilder = chz.field(
        default_factory=SUPERVISED_DATASETS.resolve(SUPERVISED_DATASETS.default),
        meta_factory=SUPERVISED_DATASETS.meta_factory(),
        doc="SFT data: chosen:<preference set> (e.g. chosen:demo, chosen:hhh), no_robots, file, "
            "a .jsonl/.json/.parquet path, or module:Class",
    )
    train_on: TrainOn = chz.field(
        default="last_assistant", doc="Which replies carry loss: last_assistant or all_assistant"
    )
    layout: SupervisedLayout = chz.field(
        default="packed", doc="packed (no padding, per-sequence attention) or padded rows"
    )
    learning_rate: float = chz.field(default=2e-5, doc="Peak AdamW learning rate")
    eval_every: int = chz.field(default=5, doc="Held-out eval every N steps (0: only at start and end)")


def main(config: Config) -> Path | None:
    """Train; returns the final checkpoint directory (None on ranks other than 0)."""
    return run_recipe(config, lambda run: _train(config, run))


def _train(config: Config, run: Run) -> Path | None:
    info, console = run.info, run.console
    start_name = config.load_checkpoint_path or config.model_name
    tokenizer, renderer = run.tokenizer_and_renderer(start_name)
    data = load_supervised_data(config.dataset, renderer, config.max_length, config.train_on, console=console)
    if config.show_example and info.is_main:
        print_supervised_example(console, tokenizer, data.train[0])
    schedule = run.schedule(len(data.train))
    causal_lm = run.load_model(run.model_source(start_name), packed_rows=config.layout == "packed")
    layout = make_supervised_collate(config.layout, tokenizer.pad_token_id, causal_lm)
    policy = run.wrap(SequenceLogprobModel(causal_lm, compute_context=run.plan.autocast), causal_lm)
    task = SupervisedTask(data, layout.collate, config.micro_batch_size, info)
    metadata = {"renderer_name": run.renderer_name, "base_model_name": start_name}
    return run.train(policy, causal_lm, task, schedule, tokenizer, metadata,
                     start_metrics=data.summary.as_metrics())


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
