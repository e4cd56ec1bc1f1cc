"""RL with verifiable rewards (the GRPO family) on the shared loop: the policy is trained on the
rewards of its own replies.

    for each batch (a round): batch_size / group_size prompts -> group_size replies each from the policy as it is
    now -> the reward scores every reply -> advantage = reward - the group's baseline (groups whose
    replies all scored the same are dropped) -> the trainer's own log-probs of the sampled tokens,
    once -> updates_per_batch optimizer steps of the clipped policy gradient on every kept reply ->
    checkpoint

`Config` is what the command line fills in (the shared training options, plus prompts, reward,
sampling and the RL loss), `RLTask` the recipe's part of the loop (a micro-batch of reply ids
becomes the summed per-token loss: clipped importance-weighted advantage, plus kl_coef times the
k3 KL to the reference), and `main(config)` runs it. Sampling, rewards and the round files are the
on-policy recipe's (`cookbook.on_policy`), the math is `losses.py`, the rounds and the schedule
`groups.py`; the optimizer, precision, LoRA, accumulation, checkpoints, resume, DDP/FSDP2 and
metrics are the shared loop's (`training/loop.py`).

Under FSDP2, whose every forward gathers weights from all ranks, every rank runs as many forwards
though ranks hold different numbers of kept replies: the native sampler decodes in lockstep (as the
on-policy recipe's does), and the old and reference log-prob passes and every update pad a rank's
micro-batches with empty stand-ins (`GroupSchedule`) that run on a real reply and count for
nothing, so the loss and its normalisation are one process's.

The importance ratio is taken against the trainer's own fp32 log-probs of the sampled tokens, computed
once per round before the first update (so the first update is exactly on-policy, ratio 1, whatever
numerical differences the sampler has); the ratio moves away from 1 in the round's later updates.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import chz
from torch import nn

from cookbook.on_policy.rounds import (
    RoundSampling,
    SampledRoundsConfig,
    in_run_ifeval,
    render_prompts,
    sampling_engine,
    split_pair_id,
)
from cookbook.rl.groups import GroupSchedule, GroupSettings, GroupStore
from cookbook.rl.losses import (
    ADVANTAGE_KINDS,
    LOSS_AGGREGATIONS,
    AdvantageKind,
    LossAggregation,
    aggregate,
    clipped_policy_gradient,
    k3_kl,
)
from cookbook.sampling import SamplingSettings, padding_token_id
from cookbook.training import distributed as dist_utils
from cookbook.training.logprobs import SequenceLogprobModel
from cookbook.training.loop import MicroBatchOutput, Run, run_recipe
from cookbook.training.schedule import LRSchedule

__all__ = ["Config", "RLTask", "main"]


def _every_batch(config: Config, value: int | None) -> int:
    return config.updates_per_batch if value is None else value


@chz.chz
class Config(SampledRoundsConfig):
    log_path: str = chz.field(default="runs/rl", doc="Directory for config.json, metrics.jsonl, "
                              "rounds/<n>/samples.jsonl, checkpoints")
    # Chosen on the dev prompts (benchmarks/results/tune_rl.json): 16 rounds at 1e-4 had a higher dev
    # gain than at 5e-5, by less than the eval's own noise (the recipe README says how much).
    rounds: int = chz.field(default=16, doc="Batches of sample -> score -> train")
    learning_rate: float = chz.field(default=1e-4, doc="Peak AdamW learning rate")
    batch_size: int = chz.field(default=64, doc="Replies sampled per batch (round), over all ranks: batch_size / "
                                "group_size prompts, the next ones each round (wrapping around the prompt list)")
    micro_batch_size: int = chz.field(default=8, doc="Replies per forward pass on one rank (accumulation follows)")
    group_size: int = chz.field(default=4, doc="Replies sampled per prompt (a group); advantages are taken "
                                "within it")
    advantage: AdvantageKind = chz.field(default="grpo", doc="grpo: (reward - group mean) / (group std + 1e-6); "
                                         "dr_grpo: reward - group mean; rloo: reward - mean of the other replies")
    loss_aggregation: LossAggregation = chz.field(
        default="token", doc="token: mean over every trained token of the batch (DAPO); sequence: mean over each "
                             "reply's tokens, then over replies")
    cut_off_reward: float | None = chz.field(
        default=0.0, doc="Reward of a reply cut off at max_new_tokens, in place of its score, for its advantage "
                         "(DAPO's overlong penalty: replies learn to finish; 0 chosen on the dev prompts); None: a "
                         "cut-off reply keeps its score")
    clip_low: float = chz.field(default=0.2, doc="The ratio is clipped below at 1 - clip_low")
    clip_high: float = chz.field(default=0.2, doc="The ratio is clipped above at 1 + clip_high (DAPO raises it)")
    kl_coef: float = chz.field(default=0.0, doc="Weight of the k3 KL to the reference (the starting model; "
                               "0: no KL term, and no reference is loaded)")
    updates_per_batch: int = chz.field(default=1, doc="Optimizer steps on each batch of samples (each on all "
                                       "its kept replies); the ratio is 1 at the first")
    max_empty_rounds: int = chz.field(default=4, doc="Stop after this many rounds in which every group's replies "
                                      "scored the same (each is replaced by the next prompts)")
    temperature: float = chz.field(default=1.0, doc="Sampling temperature (> 0)")
    eval_every: int = chz.field(default=0, doc="With eval_ifeval, IFEval every N steps too (0: at the start and "
                                "the end only; updates_per_batch: after every batch)")
    save_every: int = chz.field(default=None, munger=_every_batch, x_type=int | None,
                                doc="Resumable checkpoint every N steps (default: updates_per_batch, every round)")
    lr_schedule: LRSchedule = chz.field(default="constant", doc="linear, cosine or constant decay after warmup")

    @chz.validate
    def _check_rl_values(self) -> None:
        for name in ("rounds", "updates_per_batch", "max_empty_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (an advantage compares replies), got {self.group_size}")
        if self.batch_size % self.group_size:
            raise ValueError(f"batch_size={self.batch_size} (replies per batch) must be a multiple of "
                             f"group_size={self.group_size}")
        if self.advantage not in ADVANTAGE_KINDS:
            raise ValueError(f"advantage={self.advantage!r} is not one of {', '.join(ADVANTAGE_KINDS)}")
        if self.loss_aggregation not in LOSS_AGGREGATIONS:
            raise ValueError(f"loss_aggregation={self.loss_aggregation!r} is not one of {', '.join(LOSS_AGGREGATIONS)}")
        if self.cut_off_reward is not None and not math.isfinite(self.cut_off_reward):
            raise ValueError(f"cut_off_reward must be a finite number, got {self.cut_off_reward}")
        if not 0 <= self.clip_low < 1:
            raise ValueError(f"clip_low must be in [0, 1), got {self.clip_low}")
        for name in ("clip_high", "kl_coef"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.num_epochs != 1:
            raise ValueError("num_epochs does not apply to RL: each batch of samples is trained on "
                             "updates_per_batch times (set updates_per_batch)")


def main(config: Config) -> Path | None:
    """Train; returns the final checkpoint directory (None on ranks other than 0)."""
    return run_recipe(config, lambda run: _train(config, run))


def _train(config: Config, run: Run) -> Path | None:
    info, console = run.info, run.console
    start_name = config.load_checkpoint_path or config.model_name
    tokenizer, renderer = run.tokenizer_and_renderer(start_name)
    prompts, prompt_tokens, too_long = render_prompts(config, renderer, console)
    scorer = config.reward.build(info.device)
    causal_lm = run.load_model(run.model_source(start_name))
    policy = run.wrap(SequenceLogprobModel(causal_lm, compute_context=run.plan.autocast), causal_lm)
    lockstep = dist_utils.decode_lockstep(run.strategy, info)
    sampling_context = (run.plan.autocast if config.sample_in_compute_precision and run.lora is None
                        else contextlib.nullcontext)
    stop_token_ids = list(renderer.get_stop_token_ids())
    sampling = RoundSampling(SamplingSettings(config.max_new_tokens, config.temperature, config.top_p),
                             config.group_size, config.sampling_batch_size, 0.0, config.seed, logprobs=True)
    settings = GroupSettings(config.advantage, config.batch_size // config.group_size, config.max_empty_rounds,
                             padding_token_id(tokenizer, stop_token_ids), config.cut_off_reward)
    engine = sampling_engine(config, run, start_name, int(prompt_tokens.lengths().max()), causal_lm.config)
    sampling_scope = lambda: dist_utils.direct_forwards(policy, run.strategy)  # noqa: E731
    store = GroupStore(run, causal_lm, policy, prompts, prompt_tokens, renderer, scorer, sampling, settings,
                       _reference(config, run, policy, start_name),
                       sampling_scope, sampling_context, lockstep, engine=engine)
    store.schedule = schedule = GroupSchedule(store, config.rounds, config.updates_per_batch, config.micro_batch_size,
                                              config.max_steps, info.rank, info.world_size, lockstep is not None)
    evaluate = in_run_ifeval(config, causal_lm, renderer, info, sampling_scope, lockstep)
    task = RLTask(store, config, info, evaluate)
    metadata = {"renderer_name": run.renderer_name, "base_model_name": start_name}
    return run.train(policy, causal_lm, task, schedule, tokenizer, metadata,
                     start_metrics={"prompts": len(prompts), "prompts_too_long": too_long},
                     eval_tasks="cookbook/ifeval")


def _reference(config: Config, run: Run, policy, start_name: str):
    """() -> (model, context) computing the reference log-probs (the starting model: the policy with
    its LoRA adapters off, or a frozen copy loaded once), or None with kl_coef=0."""
    frozen = {}

    def reference():
        if config.kl_coef == 0:
            return None
        if run.lora is not None:
            return dist_utils.unwrap(policy), run.lora.adapters_off
        if "model" not in frozen:
            causal_lm = run.load_model(start_name, trainable=False)
            causal_lm.requires_grad_(False)
            model = SequenceLogprobModel(causal_lm, compute_context=run.plan.autocast)
            frozen["model"] = run.wrap(model, causal_lm, trainable=False).eval()
        return frozen["model"], contextlib.nullcontext

    return reference


class RLTask:
    """The recipe's part of the loop: reply ids -> the summed clipped policy-gradient (+ KL) loss,
    divided by the batch's trained tokens (token) or replies (sequence)."""

    def __init__(self, store: GroupStore, config: Config, info: dist_utils.DistInfo,
                 evaluate: Callable[[], dict[str, float]] | None = None):
        self.store, self.config, self.info, self._evaluate = store, config, info, evaluate
        self.ratio_range = [math.inf, -math.inf]  # this step's (min, max) on this rank

    def loss_denominator(self, global_ids: Sequence[int]) -> float:
        if self.config.loss_aggregation == "sequence":
            return float(len(global_ids))
        data, replies = self.store.batch(split_pair_id(global_ids[0])[0])
        return float(sum(len(data.records[g].replies[r].tokens) for g, r in (replies[split_pair_id(i)[1]]
                                                                              for i in global_ids)))

    def forward(self, model: nn.Module, ids: list[int]) -> MicroBatchOutput:
        """The micro-batch's loss sum and metric sums; an empty `ids` is a stand-in (FSDP: see
        GroupSchedule) that runs forward and backward on the current batch's first reply, weighted 0."""
        local = [0]
        if ids:
            batches, local = zip(*(split_pair_id(i) for i in ids))
            if len(set(batches)) != 1:
                raise ValueError(f"a micro-batch mixes batches {sorted(set(batches))}")
            self.store.batch(batches[0])
        batch = self.store.collate(list(local)).to(self.info.device)
        out = model(batch.input_ids, batch.loss_tokens, attention_mask=batch.attention_mask)
        pg = clipped_policy_gradient(out.token_logps, batch.old_logps, batch.advantages, self.config.clip_low,
                                     self.config.clip_high)
        token_losses = pg.losses
        sums = {}
        if self.config.kl_coef > 0:
            kl = k3_kl(out.token_logps, batch.reference_logps)
            token_losses = token_losses + self.config.kl_coef * kl
            sums["kl"] = float(kl.detach().sum())
        loss_sum = aggregate(token_losses, batch.loss_tokens.sequence_index, batch.loss_tokens.num_sequences,
                             self.config.loss_aggregation)
        metric_sums = {
            **sums, "loss": float(loss_sum.detach()), "num_tokens": float(batch.attention_mask.sum()),
            "num_slots": float(batch.input_ids.numel()), "trained_tokens": float(pg.ratios.numel()),
            "replies": float(len(ids)), "clipped": float(pg.clipped.sum()), "ratio": float(pg.ratios.sum()),
            "advantage_abs": float(batch.advantages.abs().sum()), "token_nll": -float(out.token_logps.detach().sum()),
        }
        if not ids:
            # Its backward takes part in FSDP's gathers and adds exact zeros to the gradient.
            return MicroBatchOutput(loss_sum * 0.0, dict.fromkeys(metric_sums, 0.0))
        self.ratio_range = [min(self.ratio_range[0], float(pg.ratios.min())),
                            max(self.ratio_range[1], float(pg.ratios.max()))]
        return MicroBatchOutput(loss_sum, metric_sums)

    def step_metrics(self, sums: dict[str, float], denominator: float) -> dict[str, float]:
        tokens = max(sums["trained_tokens"], 1)
        low, high = self.ratio_range
        # min and max do not add up over ranks as sums do: one collective each.
        ratio_min = -dist_utils.all_reduce_max(-low, self.info)
        ratio_max = dist_utils.all_reduce_max(high, self.info)
        self.ratio_range = [math.inf, -math.inf]
        metrics = {
            **self.store.summary(), "loss": sums["loss"] / denominator, "pg/clip_fraction": sums["clipped"] / tokens,
            "pg/ratio_mean": sums["ratio"] / tokens, "pg/ratio_min": ratio_min, "pg/ratio_max": ratio_max,
            "pg/replies": int(sums["replies"]), "pg/advantage_abs": sums["advantage_abs"] / tokens,
            # The policy's entropy estimated from its own samples (unbiased at temperature 1, top_p 1):
            # cheap, where the exact entropy would need the full logits the chunked head never forms.
            "pg/token_nll": sums["token_nll"] / tokens,
        }
        if "kl" in sums:
            metrics["pg/kl"] = sums["kl"] / tokens
        return metrics

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self._evaluate() if self._evaluate is not None else {}

