"""KTO on the shared loop: unpaired examples -> the KL reference point of the step -> per-example
losses, as a `RecipeTask`.

Each example is scored on its own completion and, for the KL estimate, on a mismatched one: its
prompt followed by the completion of the next example of the step's global batch (shifted by one,
the last taking the first's). `KLPairs` hands these as `TokenizedPair`s (chosen = own completion,
rejected = mismatched), one row per (step, position in its global batch), so the preference
machinery lays them out (the prompt once per row, `prefix_shared`) and `prepare_reference`
precomputes or runs their reference log-probs exactly as for DPO pairs. The schedule is fixed by
the seed, so every step's rows are known before step 1. Held-out rows shift over the whole test
split, whose reference point is one number.

The reference point z0 = max(0, mean KL log-ratio) is one number per step, over the step's whole
global batch, so a step means the same at any micro-batch or world size. The loop asks
`loss_denominator(global_ids)` once at the start of each step, before its first micro-batch; the
task keeps those ids, and its first `forward` runs a no-gradient pass of the policy over this
rank's share of the step's rows (the reference too, unless precomputed), fills one vector per
global batch position on every rank (a single all-reduce) and takes z0 from it. Each micro-batch
then runs its rows again with gradients, laid out exactly as the reference saw them, so at step 0
policy and reference log-probs agree bit for bit in every precision (the loss is exactly 0.5);
only the own completion's log-prob enters the loss. The cost is one extra forward without
gradients per example, as in the paper's recipe, and the mismatched completion's tokens (not its
prompt, which prefix sharing runs once) in the trained pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cookbook.datasets.tokenize import TokenizedPair, TokenizedSequence
from cookbook.preference.losses import kto_loss, kto_reference_point
from cookbook.preference.step import pair_logps
from cookbook.training import distributed as dist_utils
from cookbook.training.loop import MicroBatchOutput
from cookbook.training.schedule import eval_batches, rank_micro_batches


@dataclass(frozen=True)
class KTOSettings:
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


class KLPairs(Sequence):
    """Rows of (own completion, mismatched completion) to one prompt: row j is example `own[j]` of
    `examples` with the completion of example `partner[j]` as its mismatched one, cut to
    `max_length` like any sequence."""

    def __init__(self, examples: Sequence, own: Sequence[int], partner: Sequence[int], max_length: int | None):
        self.examples, self.own, self.partner, self.max_length = examples, own, partner, max_length

    def __len__(self) -> int:
        return len(self.own)

    def __getitem__(self, row: int) -> TokenizedPair:
        own, other = self.examples[self.own[row]], self.examples[self.partner[row]]
        p, q = own.prompt_length, other.prompt_length
        tokens = own.sequence.tokens[:p] + other.sequence.tokens[q:]
        weights = own.sequence.weights[:p] + other.sequence.weights[q:]
        if self.max_length is not None:
            tokens, weights = tokens[: self.max_length], weights[: self.max_length]
        return TokenizedPair(own.sequence, TokenizedSequence(tokens, weights), p)


def shifted(ids: Sequence[int]) -> list[int]:
    """Each position's partner: the next id, the last one's the first."""
    ids = list(ids)
    return ids[1:] + ids[:1]


@dataclass(frozen=True)
class TrainRows:
    """The run's training rows: the steps' global batches one after another, each example paired with
    its neighbour's completion; `offsets` maps a global batch to its first row, `batches` are this
    rank's micro-batches of rows, step by step (the reference precompute walks them)."""

    pairs: KLPairs
    offsets: dict[tuple[int, ...], int]
    batches: list[list[int]]

    @classmethod
    def of(cls, examples: Sequence, schedule, max_length: int | None) -> TrainRows:
        own, partner, offsets, batches = [], [], {}, []
        for step in range(schedule.total_steps):
            ids = schedule.global_batch(step)
            # The same batch twice means the same rows twice: the first ones serve both.
            offsets.setdefault(tuple(ids), len(own))
            rows = list(range(len(own), len(own) + len(ids)))
            own += ids
            partner += shifted(ids)
            batches += rank_micro_batches(rows, schedule.rank, schedule.world_size, schedule.micro_batch_size)
        return cls(KLPairs(examples, own, partner, max_length), offsets, batches)


def held_out_pairs(examples: Sequence, max_length: int | None) -> KLPairs:
    """The held-out rows: every example, paired with the next one's completion over the whole split."""
    ids = list(range(len(examples)))
    return KLPairs(examples, ids, shifted(ids), max_length)


@dataclass(frozen=True)
class KLPairData:
    """What `prepare_reference` reads: both splits' rows, and their name for its cache."""

    train: KLPairs
    test: KLPairs
    fingerprint: str  # the tokenized data's, and the schedule's (which decides the training rows)


@dataclass
class ScoredPass:
    """A no-gradient pass over examples: per-example log-ratios of their own and mismatched
    completions, and the reference log-probs of their own."""

    log_ratios: Tensor  # [n] own completion: policy - reference
    kl_log_ratios: Tensor  # [n] mismatched completion: policy - reference
    reference_logps: Tensor  # [n] own completion


@torch.no_grad()
def score_pairs(model: nn.Module, pairs: Sequence[TokenizedPair], ids: list[int], collate, reference,
                device: torch.device) -> ScoredPass:
    """Rows `ids` of `pairs` through the policy and the reference, without gradients."""
    batch = collate([pairs[i] for i in ids], ids).to(device)
    logps = pair_logps(model, batch)
    reference_own, reference_kl = reference(batch)
    return ScoredPass((logps.chosen.float() - reference_own.float()).cpu(),
                      (logps.rejected.float() - reference_kl.float()).cpu(), reference_own.float().cpu())


class KTOTask:
    """Unpaired examples -> KTO loss, for the shared loop: the loss of a step is its examples'
    summed (weighted) losses divided by their number, with one reference point for the step."""

    def __init__(self, settings: KTOSettings, data, rows: TrainRows, pairs: KLPairData, collate: Callable,
                 reference, info: dist_utils.DistInfo, micro_batch_size: int):
        self.settings, self.data, self.rows, self.pairs, self.info = settings, data, rows, pairs, info
        self.collate, self.micro_batch_size = collate, micro_batch_size
        self.train_reference, self.test_reference = reference.for_split("train"), reference.for_split("test")
        self.train_desirable = torch.as_tensor(data.train.desirable())
        self._step_ids: list[int] = []
        self._row_of: dict[int, int] = {}  # example id -> its row in this step
        self._reference_point: Tensor | None = None
        self._reference_logps: dict[int, float] = {}  # row -> the reference log-prob of its own completion

    def loss_denominator(self, global_ids: Sequence[int]) -> float:
        # Called once per step before its micro-batches: the step's batch, for its reference point.
        self._step_ids, self._reference_point = list(global_ids), None
        offset = self.rows.offsets[tuple(self._step_ids)]
        self._row_of = {example: offset + position for position, example in enumerate(self._step_ids)}
        return float(len(global_ids))

    def forward(self, model: nn.Module, ids: list[int]) -> MicroBatchOutput:
        if self._reference_point is None:
            self._start_step(model)
        rows = [self._row_of[i] for i in ids]
        batch = self.collate([self.pairs.train[row] for row in rows], rows).to(self.info.device)
        logps = pair_logps(model, batch)
        reference_logps = torch.tensor([self._reference_logps[row] for row in rows], device=logps.chosen.device)
        desirable = self.train_desirable[ids]
        settings = self.settings
        result = kto_loss(logps.chosen, reference_logps, desirable, self._reference_point.to(logps.chosen.device),
                          settings.beta, settings.desirable_weight, settings.undesirable_weight)
        sums = _metric_sums(result.losses.detach().cpu(), result.rewards.cpu(), desirable, self._reference_point)
        sums.update(num_tokens=float(batch.num_real_tokens), num_slots=float(batch.num_slots))
        return MicroBatchOutput(result.losses.sum(), sums)

    def _start_step(self, model: nn.Module) -> None:
        """z0 of the step's global batch, and the reference log-probs of this rank's rows."""
        offset = self.rows.offsets[tuple(self._step_ids)]
        rows = list(range(offset, offset + len(self._step_ids)))
        kl_log_ratios = torch.zeros(len(rows), dtype=torch.float64)
        self._reference_logps = {}
        for batch_rows in rank_micro_batches(rows, self.info.rank, self.info.world_size, self.micro_batch_size):
            scored = score_pairs(model, self.pairs.train, batch_rows, self.collate, self.train_reference,
                                 self.info.device)
            for row, kl, reference in zip(batch_rows, scored.kl_log_ratios.tolist(), scored.reference_logps.tolist()):
                kl_log_ratios[row - offset] = kl
                self._reference_logps[row] = reference
        # Every position is filled by exactly one rank: the sum is the whole batch's vector.
        kl_log_ratios = dist_utils.all_reduce_tensor_sum(kl_log_ratios.to(self.info.device), self.info).cpu()
        self._reference_point = kto_reference_point(kl_log_ratios.float())

    def step_metrics(self, sums: dict[str, float], denominator: float) -> dict[str, float]:
        return kto_metrics(sums)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not len(self.data.test):
            return {}
        return evaluate_kto(model, self.pairs.test, torch.as_tensor(self.data.test.desirable()), self.collate,
                            self.test_reference, self.settings, self.micro_batch_size, self.info)


METRIC_KEYS = ("loss", "kl", "num_desirable", "num_undesirable", "desirable_reward", "undesirable_reward")


def _metric_sums(losses: Tensor, rewards: Tensor, desirable: Tensor, reference_point: Tensor) -> dict[str, float]:
    desirable = desirable.bool()
    values = torch.stack([losses.sum(), reference_point.float() * len(losses), desirable.sum().float(),
                          (~desirable).sum().float(), rewards[desirable].sum(), rewards[~desirable].sum()])
    return dict(zip(METRIC_KEYS, values.tolist()))


def kto_metrics(sums: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Means from sums over examples: loss, kl (z0), the mean reward (beta * log-ratio) of each
    side and their margin, and the counts of each side."""
    count = max(sums["num_desirable"] + sums["num_undesirable"], 1.0)
    desirable = sums["desirable_reward"] / max(sums["num_desirable"], 1.0)
    undesirable = sums["undesirable_reward"] / max(sums["num_undesirable"], 1.0)
    return {f"{prefix}loss": sums["loss"] / count, f"{prefix}kl": sums["kl"] / count,
            f"{prefix}desirable_reward": desirable, f"{prefix}undesirable_reward": undesirable,
            f"{prefix}reward_margin": desirable - undesirable,
            f"{prefix}num_desirable": int(sums["num_desirable"]), f"{prefix}num_undesirable": int(sums["num_undesirable"])}


@torch.no_grad()
def evaluate_kto(model: nn.Module, pairs: KLPairs, desirable: Tensor, collate, reference, settings: KTOSettings,
                 micro_batch_size: int, info: dist_utils.DistInfo) -> dict[str, float]:
    """Held-out `test/...` metrics: the KTO loss with z0 taken over the whole test split, the
    mean reward of each side and their margin. Each rank scores a share; sums go over ranks."""
    was_training = model.training
    model.eval()
    log_ratios = torch.zeros(len(pairs), dtype=torch.float64)
    kl_log_ratios = torch.zeros(len(pairs), dtype=torch.float64)
    for ids in eval_batches(len(pairs), micro_batch_size, info.rank, info.world_size):
        scored = score_pairs(model, pairs, ids or [0], collate, reference, info.device)
        if ids:  # an empty batch (a padding one, so every rank runs as many forwards) is dropped
            log_ratios[ids], kl_log_ratios[ids] = scored.log_ratios.double(), scored.kl_log_ratios.double()
    model.train(was_training)
    log_ratios = dist_utils.all_reduce_tensor_sum(log_ratios.to(info.device), info).cpu().float()
    kl_log_ratios = dist_utils.all_reduce_tensor_sum(kl_log_ratios.to(info.device), info).cpu().float()
    z0 = kto_reference_point(kl_log_ratios)
    result = kto_loss(log_ratios, torch.zeros_like(log_ratios), desirable, z0, settings.beta,
                      settings.desirable_weight, settings.undesirable_weight)
    return kto_metrics(_metric_sums(result.losses, result.rewards, desirable, z0), prefix="test/")
