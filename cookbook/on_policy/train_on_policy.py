"""On-policy preference training on the shared loop: the policy writes its own pairs.

    for each round: the round's prompts -> samples_per_prompt replies each from the policy as it is
    now -> the reward scores every reply -> best versus worst per prompt -> steps_per_round
    preference steps on those pairs -> (IFEval on the bundled set) -> checkpoint

`Config` is what the command line fills in (the shared training and preference options, plus
prompts, reward, rounds and sampling), `OnPolicyTask` the recipe's part of the loop (a micro-batch
of pair ids, which carry their round, becomes the preference loss on that round's pairs against
their stored reference log-probs; a round's first step also reports how its samples scored; the
held-out eval is IFEval on the bundled set), and `main(config)` runs it. Everything that is not
on-policy's own — the optimizer, precision, LoRA,
accumulation, checkpoints, resume, DDP/FSDP2, metrics — is the shared loop's (`training/loop.py`):
the recipe hands it a `RoundSchedule`, whose first batch of each round has the `RoundStore` sample
the round, and an `OnPolicyTask`.

Who samples (`sampler=`): `native`, the model being trained itself (no second copy; with LoRA
through its adapters), or `vllm`, a vLLM engine in this process, built once from the start model,
that gets the policy's weights (gathered under FSDP2, LoRA merged in) before each round; with
several ranks each runs its own engine on its share of the prompts, with the seeds one process
would give them. `auto` (the default) takes vLLM when it is installed and prints which it chose and why.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import chz
from torch import nn

from cookbook.errors import UserError
from cookbook.on_policy.rounds import (
    RoundSampling,
    RoundSchedule,
    RoundStore,
    SampledRoundsConfig,
    in_run_ifeval,
    render_prompts,
    sampling_engine,
    split_pair_id,
)
from cookbook.preference import reference as ref
from cookbook.preference.batching import make_collate
from cookbook.preference.step import LossSettings, PreferenceConfig, pair_micro_batch, pair_step_metrics
from cookbook.sampling import SamplingSettings
from cookbook.training import distributed as dist_utils
from cookbook.training.logprobs import SequenceLogprobModel
from cookbook.training.loop import MicroBatchOutput, Run, run_recipe

__all__ = ["Config", "OnPolicyTask", "main"]


ReferenceChoice = Literal["round_start", "initial"]


REFERENCE_CHOICES = ("round_start", "initial")


def _every_round(config: Config, value: int | None) -> int:
    return config.steps_per_round if value is None else value


@chz.chz
class Config(PreferenceConfig, SampledRoundsConfig):
    log_path: str = chz.field(default="runs/on-policy", doc="Directory for config.json, metrics.jsonl, "
                              "rounds/<n>/samples.jsonl, checkpoints")
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
    eval_every: int = chz.field(default=0, doc="IFEval every N steps too (0: at the start and the end only; "
                                "steps_per_round: after every round)")
    save_every: int = chz.field(default=None, munger=_every_round, x_type=int | None,
                                doc="Resumable checkpoint every N steps (default: steps_per_round, every round)")
    learning_rate: float = chz.field(default=3e-5, doc="Peak AdamW learning rate")
    batch_size: int = chz.field(default=16, doc="Pairs per optimizer step, over all ranks")

    @chz.validate
    def _check_on_policy_values(self) -> None:
        for name in ("rounds", "prompts_per_round", "steps_per_round"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt must be >= 2 (a pair needs two replies), got {self.samples_per_prompt}")
        if not (math.isfinite(self.min_reward_gap) and self.min_reward_gap >= 0):
            raise ValueError(f"min_reward_gap must be a finite number >= 0, got {self.min_reward_gap}")
        if self.reference not in REFERENCE_CHOICES:
            raise ValueError(f"reference={self.reference!r} is not one of {', '.join(REFERENCE_CHOICES)}")
        if self.num_epochs != 1:
            raise ValueError("num_epochs does not apply to on-policy training: each round trains steps_per_round "
                             "steps on its own pairs (set steps_per_round)")


def main(config: Config) -> Path | None:
    """Train; returns the final checkpoint directory (None on ranks other than 0)."""
    return run_recipe(config, lambda run: _train(config, run))


def _train(config: Config, run: Run) -> Path | None:
    info, console = run.info, run.console
    start_name = config.load_checkpoint_path or config.model_name
    tokenizer, renderer = run.tokenizer_and_renderer(start_name)
    prompts, prompt_tokens, too_long = render_prompts(config, renderer, console)
    scorer = config.reward.build(info.device)

    causal_lm = run.load_model(run.model_source(start_name), packed_rows=config.layout != "padded")
    layout = make_collate(config.layout, tokenizer.pad_token_id, causal_lm)
    console.print(f"Batch layout: {layout.name}")
    policy = run.wrap(SequenceLogprobModel(causal_lm, compute_context=run.plan.autocast), causal_lm)
    lockstep = dist_utils.decode_lockstep(run.strategy, info)
    sampling_scope = lambda: dist_utils.direct_forwards(policy, run.strategy)  # noqa: E731
    # Autocast caches its bf16 copy only of weights that take gradients: with LoRA, whose base is
    # frozen, it would re-cast every weight at every decode step, slower than fp32.
    sampling_context = (run.plan.autocast if config.sample_in_compute_precision and run.lora is None
                        else contextlib.nullcontext)
    sampling = RoundSampling(SamplingSettings(config.max_new_tokens, config.temperature, config.top_p),
                        config.samples_per_prompt, config.sampling_batch_size, config.min_reward_gap, config.seed)
    engine = sampling_engine(config, run, start_name, int(prompt_tokens.lengths().max()), causal_lm.config)
    store = RoundStore(run, causal_lm, prompts, prompt_tokens, renderer, scorer, sampling, config.prompts_per_round,
                       layout.collate, _reference_for_round(config, run, policy, start_name)
                       if config.loss_settings.needs_reference else None, sampling_scope, sampling_context, lockstep,
                       engine=engine)
    try:
        schedule = RoundSchedule(store, config.rounds, config.steps_per_round, config.batch_size,
                                 config.micro_batch_size, config.max_steps, config.seed, info.rank, info.world_size)
    except ValueError as error:
        raise UserError(str(error)) from None
    store.schedule = schedule
    evaluate = in_run_ifeval(config, causal_lm, renderer, info, sampling_scope, lockstep)
    task = OnPolicyTask(store, config.loss_settings, info.device, evaluate)
    metadata = {"renderer_name": run.renderer_name, "base_model_name": start_name,
                "reference": config.reference}
    return run.train(policy, causal_lm, task, schedule, tokenizer, metadata,
                     start_metrics={"prompts": len(prompts), "prompts_too_long": too_long},
                     eval_tasks="cookbook/ifeval")


def _reference_for_round(config: Config, run: Run, policy, start_name: str):
    """Round index -> (model, context) computing that round's reference log-probs: the policy as the
    round starts, or (reference=initial) the starting model: the first round's start, the policy
    with its LoRA adapters off, or a frozen copy loaded once."""
    frozen = {}

    def reference_for_round(round_index: int):
        if config.reference == "round_start" or round_index == 0:
            return policy, contextlib.nullcontext
        if run.lora is not None:
            return dist_utils.unwrap(policy), run.lora.adapters_off
        if "model" not in frozen:
            causal_lm = run.load_model(start_name, trainable=False)
            causal_lm.requires_grad_(False)
            model = SequenceLogprobModel(causal_lm, compute_context=run.plan.autocast)
            frozen["model"] = run.wrap(model, causal_lm, trainable=False).eval()
        return frozen["model"], contextlib.nullcontext

    return reference_for_round


class OnPolicyTask:
    def __init__(self, store: RoundStore, settings: LossSettings, device, evaluate: Callable[[], dict] | None):
        self.store, self.settings, self.device, self._evaluate = store, settings, device, evaluate

    def loss_denominator(self, global_ids: Sequence[int]) -> float:
        return float(len(global_ids))

    def forward(self, model: nn.Module, ids: list[int]) -> MicroBatchOutput:
        rounds, local = zip(*(split_pair_id(i) for i in ids))
        if len(set(rounds)) != 1:
            raise ValueError(f"a micro-batch mixes rounds {sorted(set(rounds))}")
        data = self.store.round(rounds[0])
        pairs = [data.paired[i].tokenized_pair() for i in local]
        batch = self.store.collate(pairs, list(local)).to(self.device)
        reference = ref.TableReference(self.store.tables[rounds[0]]) if self.settings.needs_reference else None
        return pair_micro_batch(model, batch, self.settings, reference)

    def step_metrics(self, sums: dict[str, float], denominator: float) -> dict[str, float]:
        return {**self.store.round_summary(), **pair_step_metrics(sums)}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self._evaluate() if self._evaluate is not None else {}
