"""Reward-model training on the shared loop (`cookbook/training/loop.py`): a scalar head on a causal
LM, trained on preference pairs to score the chosen reply above the rejected one.

`Config` is what the recipe's command line fills in; `main(config)` runs it:

    load pairs through the renderer (the preference recipes' `dataset=`) -> the causal LM as an
    `AutoModelForSequenceClassification` with one label (a new head on its decoder, or a reward
    model's own) -> for each step: micro-batches of pairs laid out as for DPO (prefix-shared,
    packed or padded) -> a score per sequence, at its last non-pad token -> Bradley-Terry loss
    -> AdamW step -> metrics, held-out pairwise accuracy, atomic HF checkpoints.

Why it is built this way:

1. The checkpoint is a plain sequence classifier (`architectures` [...ForSequenceClassification],
   `num_labels` 1, `pad_token_id`, the head as `score.weight`), so `transformers` loads it as it is
   and the on-policy recipe scores with it through `reward=reward_model reward.model_name=<final>`.
2. A new head starts at zero, so at step 0 every score is 0 and the loss is ln 2 (tested); the score
   is read where transformers reads it (the rightmost token that is not the pad token),
   so a loaded checkpoint gives the scores training saw (tested).
3. The loss is a pure tensor function (`losses.py`): -log sigma(r_c - r_r - m) (m: the pair's
   `margin` from the data with `use_margin=true`, else 0) plus a small centering
   term center_coef * (r_c + r_r)^2 (default 0.01) that keeps scores near 0 for the policy that
   will read them. Only what is reward modelling's own lives here; precision, accumulation, resume,
   checkpoints, LoRA (the head trains in full beside the adapters; `final/merged` is the classifier)
   and DDP/FSDP2 are the loop's.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from pathlib import Path

import chz
import torch
from torch import nn

from cookbook.datasets.load import load_preference_data
from cookbook.datasets.preference import PREFERENCE_DATASETS, DemoBuilder, DPODatasetBuilder
from cookbook.models import DEFAULT_MODEL
from cookbook.preference.batching import Layout
from cookbook.reward_model.batching import make_score_collate
from cookbook.reward_model.model import SAVE_PREFIX, SequenceScoreModel, zero_new_head
from cookbook.reward_model.step import evaluate_scores, score_micro_batch, score_step_metrics
from cookbook.training.config import TrainingConfig
from cookbook.training.display import print_pair
from cookbook.training.loop import MicroBatchOutput, Run, run_recipe
from cookbook.training.lora import MERGED_NAME

__all__ = ["Config", "RewardModelTask", "main"]


@chz.chz
class Config(TrainingConfig):
    log_path: str = chz.field(default="runs/reward_model", doc="Directory for config.json, metrics.jsonl, checkpoints")
    dataset: DPODatasetBuilder = chz.field(
        default_factory=DemoBuilder,
        meta_factory=PREFERENCE_DATASETS.meta_factory(),
        doc="Preference pairs: a registered name (demo, hhh, helpsteer3, ultrafeedback, file), a "
            ".jsonl/.json/.parquet path, or module:Class",
    )
    layout: Layout = chz.field(
        default="auto", doc="Batch layout: auto, padded, packed (no padding) or prefix_shared (prompt run once)"
    )
    center_coef: float = chz.field(
        default=0.01, doc="Weight of the centering term center_coef * (r_chosen + r_rejected)^2 (0: pure Bradley-Terry)"
    )
    use_margin: bool = chz.field(
        default=False,
        doc="Subtract each pair's `margin` (a numeric field of the data rows) inside the loss: the chosen "
            "score must beat the rejected one by at least that much; pairs without one use 0",
    )
    learning_rate: float = chz.field(default=2e-5, doc="Peak AdamW learning rate")
    eval_every: int = chz.field(
        default=5, doc="Held-out eval (test/accuracy, test/loss) every N steps (0: only at start and end)"
    )

    @chz.validate
    def _check_reward_model_values(self) -> None:
        if not (math.isfinite(self.center_coef) and self.center_coef >= 0):
            raise ValueError(f"center_coef must be a finite number >= 0, got {self.center_coef}")


def main(config: Config) -> Path | None:
    """Train; returns the final checkpoint directory (None on ranks other than 0)."""
    return run_recipe(config, lambda run: _train(config, run))


def _train(config: Config, run: Run) -> Path | None:
    info, console = run.info, run.console
    start_name = config.load_checkpoint_path or config.model_name
    tokenizer, renderer = run.tokenizer_and_renderer(start_name)
    data = load_preference_data(config.dataset, renderer, config.max_length, console=console)
    if config.show_example and info.is_main:
        print_pair(console, tokenizer, data.train[0])
    schedule = run.schedule(len(data.train))
    classifier = run.load_model(run.model_source(start_name), packed_rows=config.layout != "padded", num_labels=1)
    # The head skips this token when it pools (batching.py), and a reader pads with the tokenizer's.
    classifier.config.pad_token_id = tokenizer.pad_token_id
    if not run.resumed and zero_new_head(classifier):  # a resumed head (LoRA: on a causal LM) stays
        console.print("Reward head: new, started at zero (every score 0 at step 0)")
    layout = make_score_collate(config.layout, tokenizer.pad_token_id, classifier)
    console.print(f"Batch layout: {layout.name}")
    model = run.wrap(SequenceScoreModel(classifier, compute_context=run.plan.autocast), classifier)
    task = RewardModelTask(config, run, layout.collate, data)
    metadata = {"renderer_name": run.renderer_name, "base_model_name": start_name}
    return run.train(model, classifier, task, schedule, tokenizer, metadata, start_metrics=data.summary.as_metrics(),
                     save_prefix=SAVE_PREFIX, next_command=lambda final: on_policy_command(final, start_name))


def on_policy_command(final_path: Path, start_name: str) -> str:
    """What to run next: on-policy preference training of the model this one started from (an SFT
    checkpoint, say), its samples scored by this reward model (with LoRA, final/merged)."""
    policy = [] if start_name == DEFAULT_MODEL else [f"model_name={start_name}"]
    if (final_path / MERGED_NAME).is_dir():
        final_path = final_path / MERGED_NAME
    return shlex.join(["python", "-m", "cookbook.recipes.preference.on_policy", "log_path=runs/on_policy_rm",
                       *policy, "prompts=prompts:demo", "reward=reward_model", f"reward.model_name={final_path}"])


class RewardModelTask:
    """Pairs -> Bradley-Terry loss, for the shared loop: a step's loss is its pairs' summed loss divided
    by `batch_size` (every pair weighs the same, whatever its length)."""

    def __init__(self, config: Config, run: Run, collate, data):
        self.config, self.run, self.collate, self.data = config, run, collate, data

    def loss_denominator(self, global_ids: Sequence[int]) -> float:
        return float(len(global_ids))

    def forward(self, model: nn.Module, ids: list[int]) -> MicroBatchOutput:
        pairs = [self.data.train[i] for i in ids]
        batch = self.collate(pairs, ids).to(self.run.info.device)
        return score_micro_batch(model, batch, self.config.center_coef, self._margins(pairs))

    def step_metrics(self, sums: dict[str, float], denominator: float) -> dict[str, float]:
        return score_step_metrics(sums)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.data.test:
            return {}
        return evaluate_scores(model, self.data.test, self.collate, self.config.micro_batch_size,
                               self.config.center_coef, self.run.info,
                               margins=lambda ids: self._margins([self.data.test[i] for i in ids]))

    def _margins(self, pairs: Sequence) -> torch.Tensor | None:
        if not self.config.use_margin:
            return None
        values = [pair.margin if pair.margin is not None else 0.0 for pair in pairs]
        return torch.tensor(values, dtype=torch.float32, device=self.run.info.device)
