"""A batch of RL training, from sampling to the replies the loop trains on, and its schedule.

A round: each of the round's prompts gets `group_size` replies from the policy as it is now
(`cookbook.on_policy.rounds.collect_round`, the same sampler, seeds and reward checks as the
on-policy recipe), the reward scores them, and each group gets its advantages
(`losses.group_advantages`). A group whose rewards are all equal teaches nothing (every advantage
is 0): it is dropped and counted. Before the first update the trainer computes, once, the fp32
log-probs of every kept reply's tokens under the policy the round starts from ("old" log-probs,
over the very micro-batches training will use, so the first update's ratio is exactly 1) and, with
kl_coef > 0, under the reference.

What a round leaves on disk is what the on-policy recipe writes, by the same atomic writer:
`rounds/<n>/round.json` (summary, options) and `rounds/<n>/samples.jsonl` (last), one line per
prompt with its replies (tokens, text, reward, stopped), advantages (null: dropped) and the
per-token old and reference log-probs. A resumed run trains on exactly these.

Batches and rounds: batch b (steps b*updates_per_batch ...) trains on the b-th round that kept a
group. A round in which every group had zero variance says so and the next round (the next
prompts) is sampled in its place; after `max_empty_rounds` such rounds the run stops with what it
saved. A reply id carries its batch: batch * ROUND_STRIDE + index among the batch's kept replies.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cookbook.datasets.tokenize import TokenizedSequence
from cookbook.errors import UserError
from cookbook.on_policy.prompts import PromptItem
from cookbook.on_policy.rounds import (
    ROUND_STRIDE,
    Reply,
    RoundData,
    RoundSampling,
    read_round,
    round_dir,
    round_prompt_indices,
    same_meaning,
    sample_round,
    write_round,
)
from cookbook.rl.losses import AdvantageKind, group_advantages, shaped_rewards, zero_variance_groups
from cookbook.training import checkpoint as ckpt
from cookbook.training import distributed as dist_utils
from cookbook.training.logprobs import LossTokens, pad_batch, padded_loss_tokens
from cookbook.training.schedule import eval_batches, rank_micro_batches

__all__ = ["GroupRecord", "GroupSchedule", "GroupStore", "NoLearningSignalError", "ReplyBatch"]


@dataclass
class GroupRecord:
    key: str
    messages: list[dict]
    prompt_tokens: list[int]
    replies: list[Reply]
    advantages: list[float] | None = None  # None: dropped, every reply scored the same
    old_logps: list[list[float]] | None = None  # per reply, per token: the round's starting policy
    reference_logps: list[list[float]] | None = None  # per reply, per token: the reference (kl_coef > 0)

    @property
    def kept(self) -> bool:
        return self.advantages is not None

    def sequence(self, reply_index: int) -> TokenizedSequence:
        """Prompt + reply as training tokens, loss weight 1 on every sampled token."""
        tokens = self.replies[reply_index].tokens
        return TokenizedSequence(self.prompt_tokens + tokens, [0.0] * len(self.prompt_tokens) + [1.0] * len(tokens))

    def as_json(self) -> dict:
        return {"key": self.key, "messages": self.messages, "prompt_tokens": self.prompt_tokens,
                "replies": [{"text": r.text, "reward": r.reward, "stopped": r.stopped, "tokens": r.tokens}
                            for r in self.replies],
                "advantages": self.advantages, "old_logps": self.old_logps, "reference_logps": self.reference_logps}

    @classmethod
    def from_json(cls, row: dict) -> GroupRecord:
        return cls(key=row["key"], messages=row["messages"], prompt_tokens=row["prompt_tokens"],
                   replies=[Reply(r["tokens"], r["text"], r["reward"], r["stopped"]) for r in row["replies"]],
                   advantages=row["advantages"], old_logps=row["old_logps"], reference_logps=row["reference_logps"])


def kept_replies(records: list[GroupRecord]) -> list[tuple[int, int]]:
    """(group, reply) of every reply the batch trains on, group by group."""
    return [(g, r) for g, record in enumerate(records) if record.kept for r in range(len(record.replies))]


def group_records(records, advantage: AdvantageKind, cut_off_reward: float | None = None) -> list[GroupRecord]:
    """The sampled prompts (on-policy `PromptRecord`s) as groups with their advantages (of the
    rewards shaped by `cut_off_reward`; each reply keeps its own score)."""
    scores = torch.tensor([[reply.reward for reply in record.replies] for record in records], dtype=torch.float64)
    stopped = torch.tensor([[reply.stopped for reply in record.replies] for record in records], dtype=torch.bool)
    rewards = shaped_rewards(scores, stopped, cut_off_reward)
    dropped = zero_variance_groups(rewards).tolist()
    advantages = group_advantages(rewards, advantage).tolist()
    return [GroupRecord(r.key, r.messages, r.prompt_tokens, r.replies, None if drop else values)
            for r, drop, values in zip(records, dropped, advantages)]


def round_metrics(records: list[GroupRecord]) -> dict[str, float]:
    """The round's sample metrics: reward mean and (per-group) std over all replies, the fraction
    of groups dropped for zero variance, reply length and the cut-off fraction."""
    replies = [reply for record in records for reply in record.replies]
    rewards = torch.tensor([[reply.reward for reply in record.replies] for record in records], dtype=torch.float64)
    return {
        "samples/prompts": len(records),
        "samples/reward_mean": float(rewards.mean()),
        "samples/reward_std": float(rewards.std(dim=1).mean()),
        "samples/zero_variance_fraction": sum(not record.kept for record in records) / len(records),
        "samples/reply_tokens": sum(len(r.tokens) for r in replies) / len(replies),
        "samples/cut_off_fraction": sum(not r.stopped for r in replies) / len(replies),
    }


def sampler_mismatch(records: list[GroupRecord]) -> dict[str, float]:
    """Mean and max |sampler log-prob - trainer's old log-prob| over the kept replies' tokens (when
    the sampler returned log-probs): how far the sampler's numerics are from the trainer's."""
    diffs = [abs(sampled - old) for record in records if record.kept
             for reply, olds in zip(record.replies, record.old_logps) if reply.sampler_logprobs is not None
             for sampled, old in zip(reply.sampler_logprobs, olds, strict=True)]
    if not diffs:
        return {}
    return {"samples/logprob_diff_mean": sum(diffs) / len(diffs), "samples/logprob_diff_max": max(diffs)}


@dataclass
class ReplyBatch:
    input_ids: torch.Tensor  # [S, T], right-padded prompt + reply
    attention_mask: torch.Tensor  # [S, T]
    loss_tokens: LossTokens  # the reply tokens, row after row
    old_logps: torch.Tensor  # [N]
    reference_logps: torch.Tensor | None  # [N]
    advantages: torch.Tensor  # [N], each token's reply's advantage

    def to(self, device: torch.device) -> ReplyBatch:
        return ReplyBatch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_tokens.to(device),
                          self.old_logps.to(device),
                          None if self.reference_logps is None else self.reference_logps.to(device),
                          self.advantages.to(device))


def collate_replies(records: list[GroupRecord], replies: list[tuple[int, int]], pad_token_id: int) -> ReplyBatch:
    """A padded batch of (group, reply) with each token's stored log-probs and advantage (0 where
    the round has not stored them yet)."""
    input_ids, weights, attention_mask = pad_batch([records[g].sequence(r) for g, r in replies], pad_token_id)

    def per_token(field: str) -> torch.Tensor:
        values = []
        for g, r in replies:
            stored = getattr(records[g], field)
            values.extend(stored[r] if stored is not None else [0.0] * len(records[g].replies[r].tokens))
        return torch.tensor(values, dtype=torch.float32)

    advantages = [records[g].advantages[r] for g, r in replies for _ in records[g].replies[r].tokens]
    return ReplyBatch(input_ids, attention_mask, padded_loss_tokens(input_ids, weights), per_token("old_logps"),
                      per_token("reference_logps") if records[replies[0][0]].reference_logps is not None else None,
                      torch.tensor(advantages, dtype=torch.float32))


class NoLearningSignalError(UserError):
    """max_empty_rounds rounds gave no group with different rewards: there is nothing to train on."""


# (the model computing a round's reference log-probs, the context to run it in), or None
Reference = tuple[torch.nn.Module, Callable] | None


@dataclass(frozen=True)
class GroupSettings:
    advantage: AdvantageKind
    prompts_per_round: int
    max_empty_rounds: int
    pad_token_id: int
    cut_off_reward: float | None


class GroupStore:
    """The rounds of a run: asked for batch b (by the schedule, at the batch's first step), it reads
    back or samples the rounds up to the one b trains on, and collates its kept replies."""

    def __init__(self, run, causal_lm, policy, prompts: list[PromptItem], prompt_tokens: list[list[int]], renderer,
                 scorer, sampling: RoundSampling, settings: GroupSettings, reference: Callable[[], Reference],
                 sampling_scope: Callable = contextlib.nullcontext,
                 sampling_context: Callable = contextlib.nullcontext,
                 lockstep: Callable[[bool], bool] | None = None, engine=None):
        self.run, self.causal_lm, self.policy, self.prompts = run, causal_lm, policy, prompts
        self.prompt_tokens, self.renderer, self.scorer = prompt_tokens, renderer, scorer
        self.sampling, self.settings, self.reference = sampling, settings, reference
        self.sampling_scope, self.sampling_context, self.lockstep = sampling_scope, sampling_context, lockstep
        self.engine = engine
        self.schedule: GroupSchedule | None = None  # set by the recipe (they refer to each other)
        self.batch_rounds: list[int] = []  # batch b trains on round batch_rounds[b]
        self.empty_rounds: list[int] = []
        self.next_round = 0
        self.current: RoundData | None = None
        self.current_batch: int | None = None
        self.replies: list[tuple[int, int]] = []
        self.first_step_of_batch = False

    # -- what the schedule and the task ask -------------------------------------------------------

    def num_replies(self, batch_index: int, step: int) -> int:
        self.first_step_of_batch = step % self.schedule.updates_per_batch == 0
        return len(self.batch(batch_index, step)[1])

    def batch(self, batch_index: int, step: int | None = None) -> tuple[RoundData, list[tuple[int, int]]]:
        if self.current_batch != batch_index:
            self.current = self._round_for_batch(batch_index, step)
            self.current_batch = batch_index
            self.replies = kept_replies(self.current.records)
        return self.current, self.replies

    def summary(self) -> dict[str, float]:
        """The current round's sample metrics, logged with its batch's first step."""
        if not (self.current and self.first_step_of_batch):
            return {}
        return {**self.current.summary, "samples/zero_variance_rounds": len(self.empty_rounds)}

    def collate(self, ids: list[int]) -> ReplyBatch:
        return collate_replies(self.current.records, [self.replies[i] for i in ids], self.settings.pad_token_id)

    # -- which round a batch trains on ------------------------------------------------------------

    def _round_for_batch(self, batch_index: int, step: int | None) -> RoundData:
        """Walk the rounds (on disk first, on resume) until batch `batch_index` has one with a kept group."""
        data = None
        while len(self.batch_rounds) <= batch_index:
            index = self.next_round
            # Only the batch being started may sample; earlier ones must be on disk.
            may_sample = len(self.batch_rounds) == batch_index and (step is None
                                                                     or step % self.schedule.updates_per_batch == 0)
            data = self._load_or_make(index, may_sample, step)
            self.next_round += 1
            if any(record.kept for record in data.records):
                self.batch_rounds.append(index)
                continue
            self.empty_rounds.append(index)
            self.run.console.print(f"[yellow]Round {index}: every group's replies scored the same (zero variance); "
                                   "nothing to train on, sampling the next prompts")
            if len(self.empty_rounds) >= self.settings.max_empty_rounds:
                raise self._no_signal_error()
        if data is None or data.index != self.batch_rounds[batch_index]:
            data = self._load_or_make(self.batch_rounds[batch_index], False, step)
        return data

    def round_prompts(self, round_index: int) -> list[int]:
        return round_prompt_indices(round_index, self.settings.prompts_per_round, len(self.prompts))

    def _load_or_make(self, index: int, may_sample: bool, step: int | None) -> RoundData:
        run = self.run
        data = read_round(run.log_path, index, GroupRecord) if run.info.is_main else None
        data = dist_utils.broadcast_object(data, run.info)
        if data is not None and not run.resumed and not same_meaning(data.config, run.config_dict()):
            # Left by an earlier attempt that never trained, with other options: not this run's.
            run.console.print(f"Round {index}: {round_dir(run.log_path, index)} was sampled with other options by "
                              "an earlier attempt; sampling it again")
            data = None
        if data is not None:
            run.console.print(f"Round {index}: reusing {round_dir(run.log_path, index)}")
            return data
        if not may_sample:
            raise UserError(f"{round_dir(run.log_path, index)} holds no complete samples.jsonl, but the run resumes "
                            f"at step {step}, after it was trained on: its samples cannot be drawn again from its "
                            "starting model. Restart the run (behavior_if_log_dir_exists=delete).")
        return self._make(index)

    # -- making a round ---------------------------------------------------------------------------

    def _make(self, index: int) -> RoundData:
        run = self.run
        sampled, stats, sampling_metrics = sample_round(self, index, lockstep=self.lockstep)
        records = group_records(sampled, self.settings.advantage, self.settings.cut_off_reward)
        data = RoundData(index, records, config=run.config_dict())
        started = time.perf_counter()
        replies = kept_replies(data.records)
        if replies:
            if run.info.world_size > len(replies):
                raise UserError(f"round {index} kept {len(replies)} replies, fewer than the {run.info.world_size} "
                                "ranks: sample more replies per round (batch_size)")
            self._fill_logps(data, replies, "old_logps", self.policy, contextlib.nullcontext)
            reference = self.reference()
            if reference is not None:
                self._fill_logps(data, replies, "reference_logps", *reference)
        data.summary = {"round": index, **round_metrics(data.records), **sampler_mismatch(data.records),
                        **sampling_metrics, "samples/logprob_seconds": time.perf_counter() - started}
        if run.info.is_main:
            write_round(run.log_path, data)
        dist_utils.barrier(run.info)
        summary = data.summary
        run.console.print(
            f"Round {index}: reward mean {summary['samples/reward_mean']:.3f} (group std "
            f"{summary['samples/reward_std']:.3f}); {summary['samples/zero_variance_fraction']:.0%} of groups dropped "
            f"for zero variance; {stats.generated_tokens:,} tokens in {stats.seconds:.1f} s "
            f"({summary['samples/tokens_per_second']:.0f}/s)")
        return data

    def _fill_logps(self, data: RoundData, replies: list[tuple[int, int]], field: str, model, context) -> None:
        """Per-token log-probs of the kept replies under `model`, over this rank's training
        micro-batches (so the old log-probs are bit-identical to the first update's), on every rank.
        An empty micro-batch is a stand-in (see GroupSchedule): it runs on reply 0, and is dropped."""
        records = data.records
        mine = {}
        was_training = model.training
        model.eval()
        with torch.no_grad(), context():
            for ids in self.schedule.batch_micro_batches(len(replies)):
                batch = collate_replies(records, [replies[i] for i in ids or [0]], self.settings.pad_token_id)
                batch = batch.to(self.run.info.device)
                out = model(batch.input_ids, batch.loss_tokens, attention_mask=batch.attention_mask)
                if not ids:
                    continue
                counts = [len(records[replies[i][0]].replies[replies[i][1]].tokens) for i in ids]
                for i, values in zip(ids, out.token_logps.float().cpu().split(counts)):
                    mine[i] = values.tolist()
        model.train(was_training)
        computed = {i: values for part in dist_utils.all_gather_objects(mine, self.run.info)
                    for i, values in part.items()}
        position = {reply: i for i, reply in enumerate(replies)}
        for g, record in enumerate(records):
            if record.kept:
                setattr(record, field, [computed[position[g, r]] for r in range(len(record.replies))])

    def _no_signal_error(self) -> NoLearningSignalError:
        entry = ckpt.latest_resumable_checkpoint(self.run.log_path)
        saved = (f"The model so far is {entry['path']} (step {entry['step']})." if entry
                 else "No training step had run yet.")
        rounds = ", ".join(str(i) for i in self.empty_rounds)
        return NoLearningSignalError(
            f"rounds {rounds}: every group's replies scored the same, {len(self.empty_rounds)} rounds without a "
            f"learning signal (max_empty_rounds={self.settings.max_empty_rounds}); stopping. Their samples are in "
            f"{round_dir(self.run.log_path, self.empty_rounds[-1]).parent}. {saved} A larger group_size, a higher "
            "temperature or a reward with partial credit may give groups whose replies differ.")


@dataclass
class GroupSchedule:
    """The schedule the shared loop walks: updates_per_batch steps per batch, each on every kept
    reply of the batch's round (this rank's share, micro_batch_size at a time). With `lockstep`
    (FSDP, whose every forward gathers weights collectively) every rank gets as many micro-batches,
    a rank with fewer replies ending with empty stand-ins that add nothing to the loss or gradient."""

    source: GroupStore
    rounds: int
    updates_per_batch: int
    micro_batch_size: int  # replies per rank and forward pass
    max_steps: int | None
    rank: int = 0
    world_size: int = 1
    lockstep: bool = False

    @property
    def steps_per_epoch(self) -> int:  # the loop logs `epoch`: here, the batch
        return self.updates_per_batch

    @property
    def total_steps(self) -> int:
        total = self.rounds * self.updates_per_batch
        return total if self.max_steps is None else min(total, self.max_steps)

    def global_batch(self, step: int) -> list[int]:
        batch_index = step // self.updates_per_batch
        return [batch_index * ROUND_STRIDE + i for i in range(self.source.num_replies(batch_index, step))]

    def micro_batches(self, step: int) -> list[list[int]]:
        global_ids = self.global_batch(step)
        return [[global_ids[i] for i in ids] for ids in self.batch_micro_batches(len(global_ids))]

    def batch_micro_batches(self, num_replies: int) -> list[list[int]]:
        """This rank's micro-batches of a batch of `num_replies`, as indices within the batch."""
        if self.lockstep:
            # The same split, each rank padded with empty micro-batches to as many as rank 0 has.
            return eval_batches(num_replies, self.micro_batch_size, self.rank, self.world_size)
        return rank_micro_batches(list(range(num_replies)), self.rank, self.world_size, self.micro_batch_size)

