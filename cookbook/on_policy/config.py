"""The on-policy recipe's options: the shared training and preference options, plus prompts,
reward, rounds and sampling."""

from __future__ import annotations

import math
from typing import Literal

import chz

from cookbook.on_policy.prompts import IFEvalSyntheticPrompts, PromptSource, prompt_meta_factory
from cookbook.on_policy.rewards import IFEvalReward, Reward, reward_meta_factory
from cookbook.preference.options import PreferenceConfig

ReferenceChoice = Literal["round_start", "initial"]
REFERENCE_CHOICES = ("round_start", "initial")


def _every_round(config: Config, value: int | None) -> int:
    return config.steps_per_round if value is None else value


@chz.chz
class Config(PreferenceConfig):
    log_path: str = chz.field(default="runs/on-policy", doc="Directory for config.json, metrics.jsonl, "
                              "rounds/<n>/samples.jsonl, checkpoints")
    prompts: PromptSource = chz.field(
        default_factory=IFEvalSyntheticPrompts, meta_factory=prompt_meta_factory(),
        doc="Prompts to sample on: ifeval_synthetic, file (a JSONL, or give the path), prompts:<preference data "
            "set> (e.g. prompts:hhh) or module:Class",
    )
    reward: Reward = chz.field(
        default_factory=IFEvalReward, meta_factory=reward_meta_factory(),
        doc="Scores each reply: ifeval (fraction of the prompt's instructions followed), reward_model "
            "(reward.model_name=...), module:Class or module:function",
    )
    rounds: int = chz.field(default=2, doc="Rounds of sample -> score -> pair -> train")
    prompts_per_round: int = chz.field(default=64, doc="Prompts sampled each round (the next ones each round, "
                                       "wrapping around the prompt list)")
    samples_per_prompt: int = chz.field(default=4, doc="Replies sampled per prompt; its best and worst make a pair")
    steps_per_round: int = chz.field(default=4, doc="Optimizer steps on each round's pairs (cycling through them)")
    min_reward_gap: float = chz.field(default=0.0, doc="Skip a prompt whose best and worst rewards differ by less "
                                      "(all-equal rewards are always skipped)")
    reference: ReferenceChoice = chz.field(
        default="round_start", doc="round_start: the model the round starts from; initial: the starting model"
    )
    temperature: float = chz.field(default=0.7, doc="Sampling temperature (> 0)")
    top_p: float = chz.field(default=1.0, doc="Nucleus sampling: keep the smallest set of tokens with this mass")
    max_new_tokens: int = chz.field(default=256, doc="Most tokens per sampled reply")
    sampling_batch_size: int = chz.field(default=32, doc="Sequences decoded together when sampling")
    sample_in_compute_precision: bool = chz.field(
        default=True, doc="Sample under the training's autocast (bf16 with precision=bf16-mixed) instead of fp32: "
                          "about 2x the decoding speed on a CPU with native bf16 (full fine-tuning; a LoRA run "
                          "samples in fp32 either way)")
    eval_ifeval: bool = chz.field(default=False, doc="IFEval on the bundled set (greedy, as `run_inspect_evals "
                                  "tasks=cookbook/ifeval` scores it) at the start, the end and every eval_every "
                                  "steps, logged as test/ifeval_*")
    eval_max_new_tokens: int = chz.field(default=512, doc="Most tokens of an IFEval reply (run_inspect_evals' "
                                         "max_tokens, whose default is 512)")
    eval_every: int = chz.field(default=0, doc="IFEval every N steps too (0: at the start and the end only; "
                                "steps_per_round: after every round)")
    save_every: int = chz.field(default=None, munger=_every_round, x_type=int | None,
                                doc="Resumable checkpoint every N steps (default: steps_per_round, every round)")
    learning_rate: float = chz.field(default=3e-5, doc="Peak AdamW learning rate")
    batch_size: int = chz.field(default=16, doc="Pairs per optimizer step, over all ranks")

    @chz.validate
    def _check_on_policy_values(self) -> None:
        for name in ("rounds", "prompts_per_round", "steps_per_round", "max_new_tokens", "sampling_batch_size",
                     "eval_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt must be >= 2 (a pair needs two replies), got {self.samples_per_prompt}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (math.isfinite(self.min_reward_gap) and self.min_reward_gap >= 0):
            raise ValueError(f"min_reward_gap must be a finite number >= 0, got {self.min_reward_gap}")
        if self.reference not in REFERENCE_CHOICES:
            raise ValueError(f"reference={self.reference!r} is not one of {', '.join(REFERENCE_CHOICES)}")
        if self.num_epochs != 1:
            raise ValueError("num_epochs does not apply to on-policy training: each round trains steps_per_round "
                             "steps on its own pairs (set steps_per_round)")
