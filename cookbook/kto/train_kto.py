"""KTO (Kahneman-Tversky optimisation) on the shared loop (`cookbook/training/loop.py`): preference
training from unpaired feedback, one completion to a prompt marked desirable or undesirable.

`Config` is what the recipe's command line fills in; `main(config)` runs it:

    load examples through the renderer -> reference log-probs of each example's own completion and of
    a mismatched one (precomputed once, or a frozen model) -> for each step: the reference point z0
    over the global batch -> micro-batches of examples -> policy log-probs -> KTO loss -> AdamW step
    -> metrics to the rich table and metrics.jsonl, held-out eval, atomic HF checkpoints.

With r = log pi(y|x) - log ref(y|x), a desirable completion costs w_d * (1 - sigma(beta*(r - z0))) and
an undesirable one w_u * (1 - sigma(beta*(z0 - r))); z0 = max(0, KL estimate) from mismatched
sequences (`kto/step.py`). The loss of a step is the mean over its global batch of examples, so
at step 0 (policy = reference) it is 0.5 with unit weights, at any micro-batch or world size.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import chz

from cookbook.datasets.load import load_unpaired_data
from cookbook.datasets.summary import print_supervised_example
from cookbook.datasets.unpaired import UNPAIRED_DATASETS, UnpairedDatasetBuilder
from cookbook.kto.step import KLPairData, KTOSettings, KTOTask, TrainRows, held_out_pairs
from cookbook.preference.batching import Layout, make_collate
from cookbook.preference.losses import kto_balance_warning
from cookbook.preference.reference import (
    AUTO_PRECOMPUTE_MAX_PAIRS,
    PrecomputeReference,
    model_fingerprint,
    prepare_reference,
)
from cookbook.training.config import TrainingConfig
from cookbook.training.logprobs import SequenceLogprobModel
from cookbook.training.loop import Run, run_recipe

__all__ = ["Config", "main"]


@chz.chz
class Config(TrainingConfig):
    log_path: str = chz.field(default="runs/kto", doc="Directory for config.json, metrics.jsonl, checkpoints")
    dataset: UnpairedDatasetBuilder = chz.field(
        default_factory=UNPAIRED_DATASETS.resolve(UNPAIRED_DATASETS.default),
        meta_factory=UNPAIRED_DATASETS.meta_factory(),
        doc="Unpaired feedback: unpaired:<preference set> (e.g. unpaired:demo, unpaired:hhh; chosen replies "
            "desirable, rejected undesirable), file, a .jsonl/.json/.parquet path of prompt, completion, label "
            "rows, or module:Class",
    )
    kto_beta: float = chz.field(default=0.1, doc="beta: how sharply the loss saturates in the log-ratio to the reference (> 0)")
    desirable_weight: float = chz.field(default=1.0, doc="w_d: weight of a desirable example's loss")
    undesirable_weight: float = chz.field(default=1.0, doc="w_u: weight of an undesirable example's loss")
    layout: Layout = chz.field(
        default="auto", doc="Batch layout of each example's own and mismatched sequence: auto, padded, packed "
                            "(no padding) or prefix_shared (prompt run once)"
    )
    reference_model_name: str | None = chz.field(
        default=None, doc="Reference model; default: the starting policy (load_checkpoint_path or model_name)"
    )
    precompute_reference: PrecomputeReference = chz.field(
        default="auto",
        doc="true: score every example (own and mismatched completion) with the reference once, before step 1, "
            "and free the reference model; false: run the reference inside every step; auto: true up to "
            f"{AUTO_PRECOMPUTE_MAX_PAIRS:,} examples to score, false above",
    )

    @chz.validate
    def _check_kto_values(self) -> None:
        if not (math.isfinite(self.kto_beta) and self.kto_beta > 0):
            raise ValueError(f"kto_beta must be a finite number > 0, got {self.kto_beta}")
        for name in ("desirable_weight", "undesirable_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")

    @property
    def kto_settings(self) -> KTOSettings:
        return KTOSettings(self.kto_beta, self.desirable_weight, self.undesirable_weight)


def main(config: Config) -> Path | None:
    """Train; returns the final checkpoint directory (None on ranks other than 0)."""
    return run_recipe(config, lambda run: _train(config, run))


def _train(config: Config, run: Run) -> Path | None:
    info, console = run.info, run.console
    start_name = config.load_checkpoint_path or config.model_name
    reference_name = config.reference_model_name or start_name
    tokenizer, renderer = run.tokenizer_and_renderer(start_name)
    data = load_unpaired_data(config.dataset, renderer, config.max_length, console=console)
    num_desirable = data.summary.train_desirable
    warning = kto_balance_warning(num_desirable, data.summary.train_examples - num_desirable,
                                  config.desirable_weight, config.undesirable_weight)
    if warning:
        console.print(f"[yellow]Warning: {warning}")
    if config.show_example and info.is_main:
        print_supervised_example(console, tokenizer, data.train[0].sequence)
    schedule = run.schedule(len(data.train))

    causal_lm = run.load_model(run.model_source(start_name), packed_rows=config.layout != "padded")
    layout = make_collate(config.layout, tokenizer.pad_token_id, causal_lm)
    console.print(f"Batch layout: {layout.name}")
    model = SequenceLogprobModel(causal_lm, compute_context=run.plan.autocast)
    start_fingerprint = model_fingerprint(model)
    policy = run.wrap(model, causal_lm)
    rows = TrainRows.of(data.train, schedule, config.max_length)
    schedule_key = f"{config.seed}/{config.batch_size}/{config.num_epochs}/{schedule.total_steps}"
    pairs = KLPairData(rows.pairs, held_out_pairs(data.test, config.max_length),
                       fingerprint=hashlib.sha256(f"{data.fingerprint}|{schedule_key}".encode()).hexdigest())
    reference = prepare_reference(run, policy, start_fingerprint, reference_name, start_name, data=pairs,
                                  collate=layout.collate, train_batches=rows.batches)
    task = KTOTask(config.kto_settings, data, rows, pairs, layout.collate, reference, info, config.micro_batch_size)
    metadata = {"renderer_name": run.renderer_name, "base_model_name": start_name,
                "reference_model_name": reference_name}
    return run.train(policy, causal_lm, task, schedule, tokenizer, metadata, start_metrics=data.summary.as_metrics())
