"""DPO-family preference training on the shared loop (`cookbook/training/loop.py`).

`Config` is what the recipe's command line fills in; `main(config)` runs it:

    load data through the renderer -> reference log-probs (precomputed once, or a frozen model)
    -> for each step: micro-batches of pairs -> policy log-probs -> loss -> AdamW step
    -> metrics to the rich table and metrics.jsonl, held-out eval, atomic HF checkpoints.

This module holds only what is preference training's own: its options, the pair data and layout,
the reference, and `PreferenceTask` (a micro-batch of pairs -> summed loss and metrics). The global
batch (`batch_size` pairs) means the same at any world size; the loss is the sum over pairs divided
by `batch_size`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import chz
from torch import nn

from cookbook.datasets.load import load_preference_data
from cookbook.datasets.preference import PREFERENCE_DATASETS, DemoBuilder, DPODatasetBuilder
from cookbook.preference.batching import make_collate
from cookbook.preference.evaluation import evaluate_pairs
from cookbook.preference.reference import (
    AUTO_PRECOMPUTE_MAX_PAIRS,
    PrecomputeReference,
    ReferenceSource,
    model_fingerprint,
    prepare_reference,
)
from cookbook.preference.step import PreferenceConfig, pair_micro_batch, pair_step_metrics
from cookbook.training.display import print_pair
from cookbook.training.logprobs import SequenceLogprobModel
from cookbook.training.loop import MicroBatchOutput, Run, run_recipe

__all__ = ["Config", "PreferenceTask", "main"]


@chz.chz
class Config(PreferenceConfig):
    log_path: str = chz.field(default="runs/dpo", doc="Directory for config.json, metrics.jsonl, checkpoints")
    dataset: DPODatasetBuilder = chz.field(
        default_factory=DemoBuilder,
        meta_factory=PREFERENCE_DATASETS.meta_factory(),
        doc="Preference data: a registered name (demo, hhh, helpsteer3, ultrafeedback, file) or module:Class",
    )
    reference_model_name: str | None = chz.field(
        default=None, doc="Reference model; default: the starting policy (load_checkpoint_path or model_name)"
    )
    precompute_reference: PrecomputeReference = chz.field(
        default="auto",
        doc="true: score every pair the run trains on with the reference once, before step 1, and free the "
            "reference model; false: run the reference inside every step (training starts at once); auto: true "
            f"up to {AUTO_PRECOMPUTE_MAX_PAIRS:,} pairs to score, false above",
    )


def main(config: Config) -> Path | None:
    """Train; returns the final checkpoint directory (None on ranks other than 0, or when stopped early)."""
    return run_recipe(config, lambda run: _train(config, run))


def _train(config: Config, run: Run) -> Path | None:
    info, console = run.info, run.console
    start_name = config.load_checkpoint_path or config.model_name
    reference_name = config.reference_model_name or start_name
    tokenizer, renderer = run.tokenizer_and_renderer(start_name)
    data = load_preference_data(config.dataset, renderer, config.max_length, console=console)
    if config.show_example and info.is_main:
        print_pair(console, tokenizer, data.train[0])
    schedule = run.schedule(len(data.train))

    causal_lm = run.load_model(run.model_source(start_name), packed_rows=config.layout != "padded")
    layout = make_collate(config.layout, tokenizer.pad_token_id, causal_lm)
    console.print(f"Batch layout: {layout.name}")
    model = SequenceLogprobModel(causal_lm, compute_context=run.plan.autocast)
    start_fingerprint = model_fingerprint(model)  # of the whole weights, before FSDP shards them
    policy = run.wrap(model, causal_lm)
    reference = (prepare_reference(run, policy, start_fingerprint, reference_name, start_name, data=data,
                                   collate=layout.collate, train_batches=schedule.all_micro_batches())
                 if config.loss_settings.needs_reference else ReferenceSource())
    task = PreferenceTask(config, run, layout.collate, data, reference)
    metadata = {"renderer_name": run.renderer_name, "base_model_name": start_name,
                "reference_model_name": reference_name}
    return run.train(policy, causal_lm, task, schedule, tokenizer, metadata,
                     start_metrics=data.summary.as_metrics(), eval_tasks="cookbook/ifeval,cookbook/preference")


class PreferenceTask:
    """Pairs -> preference loss, for the shared loop: the loss of a step is its pairs' summed loss
    divided by `batch_size` (every pair weighs the same, whatever its length)."""

    def __init__(self, config: Config, run: Run, collate, data, reference):
        self.config, self.run, self.collate, self.data = config, run, collate, data
        self.train_reference, self.test_reference = reference.for_split("train"), reference.for_split("test")

    def loss_denominator(self, global_ids: Sequence[int]) -> float:
        return float(len(global_ids))

    def forward(self, model: nn.Module, ids: list[int]) -> MicroBatchOutput:
        batch = self.collate([self.data.train[i] for i in ids], ids).to(self.run.info.device)
        return pair_micro_batch(model, batch, self.config.loss_settings, self.train_reference)

    def step_metrics(self, sums: dict[str, float], denominator: float) -> dict[str, float]:
        return pair_step_metrics(sums)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.data.test:
            return {}
        return evaluate_pairs(model, self.data.test, self.collate, self.config.micro_batch_size,
                              self.config.loss_settings, self.test_reference, self.run.info)


