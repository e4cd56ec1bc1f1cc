"""A round of on-policy training, from sampling to the pairs the loop trains on, and its schedule.

A round: the round's prompts each get `samples_per_prompt` replies from the policy as it is now
(`collect_round`), the reward scores them, and each prompt gets its best-versus-worst pair
(`select_pair`: a pure function of the rewards, so a reader of `samples.jsonl` can redo it by hand;
among equal rewards the earlier reply wins, sampling already made the order random). Under DDP or
FSDP every rank samples and scores its share of the prompts and all ranks end with every record.
Each reply's seed comes from (seed, round): a round sampled again after a crash gives the same
replies from the same weights. With vLLM it comes from the reply's place in the round alone, so
any number of ranks give one process's replies; the native sampler's generator also takes the rank.

What a round leaves on disk: `rounds/<n>/samples.jsonl`, one line per prompt, holding the prompt
(messages and rendered tokens), every sampled reply (tokens, text, reward, whether it ended with a
stop token), the pair chosen (or why none) and the pair's reference log-probs; so a user can read
what the policy wrote and how it was scored, and a resumed run trains on exactly these pairs.
`rounds/<n>/round.json` holds the round's summary metrics and the options the round was made with,
so a fresh run can tell a round of its own from one an earlier attempt with other options left
behind. Both are written to a temporary name and renamed, `samples.jsonl` last: a round whose
`samples.jsonl` exists is complete, and a kill mid-round leaves nothing that resume would trust.

`RoundStore`, asked for round r (by the schedule, at the round's first step), reads the round back
when a previous attempt finished it, and otherwise samples it, computes the pairs' reference
log-probs over the very micro-batches training will use, and writes its files. So resuming after a
kill in the middle of sampling samples that round again from the same checkpoint and seed, and
resuming in the middle of training trains on the pairs already written.

`RoundSchedule` is the schedule the shared loop walks. Step s belongs to round s // steps_per_round;
a round's pairs exist only once the policy has sampled them, so asking for the first batch of a
round makes the store sample (or read back) that round: the loop needs no notion of rounds. Within
a round, batches walk seeded permutations of the round's pairs, one after another, so a round with
fewer pairs than batch slots cycles through them. A pair id carries its round: round *
ROUND_STRIDE + index.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import chz
import torch

from cookbook.datasets.cache import TokenListSet
from cookbook.datasets.load import load_prompt_tokens
from cookbook.datasets.tokenize import MIN_COMPLETION_TOKENS, TokenizedPair, TokenizedSequence
from cookbook.errors import UserError
from cookbook.eval.ifeval import bundled_ifeval_rows, ifeval_metrics
from cookbook.models import adapter_base_model, is_adapter_checkpoint, resolve_model_path
from cookbook.on_policy.ifeval_synthetic import IFEvalSyntheticPrompts
from cookbook.on_policy.prompts import PROMPT_SOURCES, PromptItem, PromptSource
from cookbook.on_policy.rewards import REWARDS, IFEvalReward, Reward
from cookbook.preference import reference as ref
from cookbook.sampling import SamplingSettings, padding_token_id, prompt_seeds, sample
from cookbook.sampling.vllm_engine import EngineOptions, SamplerName, choose_sampler, get_engine
from cookbook.training import checkpoint as ckpt
from cookbook.training import distributed as dist_utils
from cookbook.training.config import TrainingConfig
from cookbook.training.resume_config import ResumeConfigError, check_resume_config
from cookbook.training.schedule import check_batch_sizes, epoch_order, rank_micro_batches
from cookbook.training.weight_sync import engine_weights

PairSkip = Literal["tie", "small_gap"]


@chz.chz
class SampledRoundsConfig(TrainingConfig):
    """The options of every recipe that trains on its own samples (on-policy preference, RL): what
    it samples on, what scores the replies, and how it samples."""

    prompts: PromptSource = chz.field(
        default_factory=IFEvalSyntheticPrompts, meta_factory=PROMPT_SOURCES.meta_factory(),
        doc="Prompts to sample on: ifeval_synthetic, file (a JSONL, or give the path), prompts:<preference data "
            "set> (e.g. prompts:hhh) or module:Class",
    )
    reward: Reward = chz.field(
        default_factory=IFEvalReward, meta_factory=REWARDS.meta_factory(),
        doc="Scores each reply: ifeval (fraction of the prompt's instructions followed), reward_model "
            "(reward.model_name=...), sum (weighted terms: reward.terms.0.reward=ifeval reward.terms.0.weight=1 "
            "reward.terms.1.reward=reward_model reward.terms.1.reward.model_name=DIR ...), module:Class or module:function",
    )
    temperature: float = chz.field(default=0.7, doc="Sampling temperature (> 0)")
    top_p: float = chz.field(default=1.0, doc="Nucleus sampling: keep the smallest set of tokens with this mass")
    max_new_tokens: int = chz.field(default=256, doc="Most tokens per sampled reply")
    sampling_batch_size: int = chz.field(default=32, doc="Sequences decoded together when sampling (native "
                                         "sampler; vLLM schedules its own batches)")
    sampler: SamplerName = chz.field(default="auto", doc="Who samples the rounds: vllm (a vLLM engine in this "
                                     "process, the policy's weights loaded into it each round), native (our "
                                     "KV-cache loop on the policy itself), auto (vllm when installed)")
    vllm_kv_cache_gib: float = chz.field(default=1.0, doc="vLLM engine: memory for its key/value cache, "
                                         "allocated once (GiB, on each rank)")
    vllm_compile: bool = chz.field(default=True, doc="vLLM engine: compile the model at start (about a minute "
                                   "of CPU once, faster sampling after)")
    sample_in_compute_precision: bool = chz.field(
        default=True, doc="Sample under the training's autocast (bf16 with precision=bf16-mixed) instead of fp32: "
                          "about 2x the decoding speed on a CPU with native bf16 (full fine-tuning; a LoRA run "
                          "samples in fp32 either way)")
    eval_ifeval: bool = chz.field(default=False, doc="IFEval on the dev half of the bundled set (greedy, as "
                                  "`run_inspect_evals tasks=cookbook/ifeval ifeval_split=dev dtype=float32` scores it) at the start, "
                                  "the end and every eval_every steps, logged as test/ifeval_* (held out from training; "
                                  "report on ifeval_split=test)")
    eval_max_new_tokens: int = chz.field(default=512, doc="Most tokens of an IFEval reply (run_inspect_evals' "
                                         "max_tokens, whose default is 512)")

    @chz.validate
    def _check_sampling_values(self) -> None:
        for name in ("max_new_tokens", "sampling_batch_size", "eval_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (math.isfinite(self.vllm_kv_cache_gib) and self.vllm_kv_cache_gib > 0):
            raise ValueError(f"vllm_kv_cache_gib must be a finite number > 0, got {self.vllm_kv_cache_gib}")


def in_run_ifeval(config: SampledRoundsConfig, causal_lm, renderer, info, sampling_scope: Callable,
                  lockstep: Callable[[bool], bool] | None = None) -> Callable[[], dict[str, float]] | None:
    """With `eval_ifeval`, () -> IFEval on the dev half of the bundled prompts (greedy, the native
    sampler on the policy as it is now, fp32 as the eval command scores it); else None."""
    if not config.eval_ifeval:
        return None
    rows = bundled_ifeval_rows()

    def evaluate() -> dict[str, float]:
        with sampling_scope():
            return ifeval_metrics(causal_lm, renderer, rows, info, config.sampling_batch_size,
                                  max_new_tokens=config.eval_max_new_tokens, lockstep=lockstep)

    return evaluate


def render_prompts(config: SampledRoundsConfig, renderer, console) -> tuple[list[PromptItem], TokenListSet, int]:
    """The usable prompts, their generation-prompt tokens, and how many did not fit max_length."""
    source = config.prompts()
    config.reward.check_prompts(source)  # e.g. reward=ifeval on prompts without instructions: fail now
    # Batched tokenizer calls, cached like training data (cookbook.datasets.load).
    all_tokens, cache_note = load_prompt_tokens([item.messages for item in source], renderer)
    room = config.max_length - max(config.max_new_tokens, MIN_COMPLETION_TOKENS)
    kept = [i for i, length in enumerate(all_tokens.lengths().tolist()) if length <= room]
    too_long = len(source) - len(kept)
    console.print(f"Prompts: {source.describe()}" + (f"; {too_long:,} left out, longer than max_length="
                  f"{config.max_length} - max_new_tokens={config.max_new_tokens}" if too_long else "")
                  + f"; {cache_note}")
    if not kept:
        raise UserError(f"none of the prompts fits max_length={config.max_length} with max_new_tokens="
                        f"{config.max_new_tokens} ({too_long} prompts too long)")
    return [source[i] for i in kept], all_tokens.subset(kept), too_long


def sampling_engine(config: SampledRoundsConfig, run, start_name: str, longest_prompt: int, model_config=None):
    """This process's vLLM engine when `sampler=` chooses vLLM for the model of `model_config`, else
    None; says which and why."""
    sample_dtype = run.plan.compute_dtype if config.sample_in_compute_precision else torch.float32
    try:
        choice = choose_sampler(config.sampler, lora=run.lora is not None, device=run.info.device, dtype=sample_dtype,
                                world_size=run.info.world_size, model_config=model_config)
    except ValueError as error:
        raise UserError(str(error)) from None
    if choice.name == "native":
        run.console.print(f"Sampler: native ({choice.reason})")
        return None
    # The engine takes the architecture and tokenizer from the start model; its weights are the
    # policy's, loaded before every round.
    model_dir = resolve_model_path(start_name)
    if is_adapter_checkpoint(model_dir):
        model_dir = resolve_model_path(adapter_base_model(model_dir))
    options = EngineOptions(model_dir, dtype=str(sample_dtype).removeprefix("torch."),
                            max_model_len=longest_prompt + config.max_new_tokens,
                            kv_cache_bytes=int(config.vllm_kv_cache_gib * 2**30), compile=config.vllm_compile,
                            seed=config.seed, world_size=run.info.world_size)
    engine, failure = None, ""
    try:
        engine = get_engine(options)
    except Exception as error:  # an architecture or option vLLM does not serve
        failure = f"{type(error).__name__}: {error}"
    # Every rank samples with the same sampler: one rank's failure sends them all to the native one.
    # An engine that did start stays unused until the run ends: closing it would close the process group.
    if dist_utils.all_reduce_max(float(engine is None), run.info) > 0:
        failure = failure or "it failed on another rank"
        if config.sampler == "vllm":
            raise UserError(f"sampler=vllm: the vLLM engine did not start ({failure})")
        run.console.print(f"Sampler: native (the vLLM engine did not start: {failure})")
        return None
    run.console.print(f"Sampler: vllm ({choice.reason}); {engine.describe()}")
    return engine


@dataclass(frozen=True)
class ChosenPair:
    chosen: int  # index of the best reply
    rejected: int  # index of the worst reply
    gap: float  # reward(chosen) - reward(rejected) > 0


def select_pair(rewards: list[float], min_reward_gap: float = 0.0) -> ChosenPair | PairSkip:
    """Best versus worst of one prompt's replies, or why there is no pair: `tie` when every reply
    has the same reward (nothing to learn from), `small_gap` when best - worst < min_reward_gap."""
    if len(rewards) < 2:
        raise ValueError(f"a pair needs at least 2 replies, got {len(rewards)}")
    best = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
    worst = min(range(len(rewards)), key=lambda i: (rewards[i], i))
    gap = rewards[best] - rewards[worst]
    if gap <= 0:
        return "tie"
    if gap < min_reward_gap:
        return "small_gap"
    return ChosenPair(chosen=best, rejected=worst, gap=gap)


ROUNDS_DIR = "rounds"


SAMPLES_NAME = "samples.jsonl"


SUMMARY_NAME = "round.json"


@dataclass(frozen=True)
class Reply:
    tokens: list[int]  # sampled tokens, the stop token included when there was one
    text: str  # the assistant message the renderer parses from them
    reward: float
    stopped: bool  # False: cut off at max_new_tokens
    # The sampler's log-prob of each token, when asked for (RoundSampling.logprobs); not written to disk.
    sampler_logprobs: list[float] | None = field(default=None, compare=False)


@dataclass
class PromptRecord:
    key: str
    messages: list[dict]
    prompt_tokens: list[int]
    replies: list[Reply]
    pair: ChosenPair | None = None
    skip: str | None = None  # why there is no pair: tie, small_gap
    reference_logps: tuple[float, float] | None = None  # (chosen, rejected), set before training

    def tokenized_pair(self) -> TokenizedPair:
        """The pair as training tokens: prompt + reply, loss weight 1 on every sampled token."""
        if self.pair is None:
            raise ValueError(f"prompt {self.key!r} has no pair ({self.skip})")
        prompt = self.prompt_tokens

        def sequence(reply: Reply) -> TokenizedSequence:
            return TokenizedSequence(prompt + reply.tokens, [0.0] * len(prompt) + [1.0] * len(reply.tokens))

        chosen, rejected = self.replies[self.pair.chosen], self.replies[self.pair.rejected]
        return TokenizedPair(sequence(chosen), sequence(rejected), prompt_length=len(prompt),
                             truncated=not (chosen.stopped and rejected.stopped))

    def as_json(self) -> dict:
        return {
            "key": self.key, "messages": self.messages, "prompt_tokens": self.prompt_tokens,
            "replies": [{"text": r.text, "reward": r.reward, "stopped": r.stopped, "tokens": r.tokens}
                        for r in self.replies],
            "pair": None if self.pair is None else {"chosen": self.pair.chosen, "rejected": self.pair.rejected,
                                                    "gap": self.pair.gap},
            "skip": self.skip,
            "reference_logps": None if self.reference_logps is None else list(self.reference_logps),
        }

    @classmethod
    def from_json(cls, row: dict) -> PromptRecord:
        pair = row["pair"]
        return cls(
            key=row["key"], messages=row["messages"], prompt_tokens=row["prompt_tokens"],
            replies=[Reply(r["tokens"], r["text"], r["reward"], r["stopped"]) for r in row["replies"]],
            pair=None if pair is None else ChosenPair(pair["chosen"], pair["rejected"], pair["gap"]),
            skip=row["skip"],
            reference_logps=None if row["reference_logps"] is None else tuple(row["reference_logps"]),
        )


@dataclass
class RoundData:
    """A complete round: every prompt's record, the summary metrics, the options it was made with."""

    index: int
    records: list[PromptRecord]
    summary: dict[str, float] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @property
    def paired(self) -> list[PromptRecord]:
        return [record for record in self.records if record.pair is not None]


def round_dir(log_path: str | Path, index: int) -> Path:
    return Path(log_path) / ROUNDS_DIR / f"{index:04d}"


def write_round(log_path: str | Path, data: RoundData) -> Path:
    """Write the round's files (summary first, samples last, each by rename); the samples path."""
    directory = round_dir(log_path, data.index)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomically(directory / SUMMARY_NAME,
                      json.dumps({"summary": data.summary, "config": data.config}, indent=2, default=str) + "\n")
    lines = "".join(json.dumps(record.as_json(), ensure_ascii=False) + "\n" for record in data.records)
    return _write_atomically(directory / SAMPLES_NAME, lines)


def read_round(log_path: str | Path, index: int, record_type=PromptRecord) -> RoundData | None:
    """The round as written, or None when its samples were never completely written; each line is
    read with `record_type.from_json` (the RL recipe's rounds hold their own records)."""
    directory = round_dir(log_path, index)
    samples = directory / SAMPLES_NAME
    if not samples.exists():
        return None
    with open(samples, encoding="utf-8") as handle:
        records = [record_type.from_json(json.loads(line)) for line in handle if line.strip()]
    summary_path = directory / SUMMARY_NAME
    stored = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return RoundData(index, records, stored.get("summary", {}), stored.get("config", {}))


def _write_atomically(path: Path, text: str) -> Path:
    staging = path.with_name(path.name + ".tmp")
    with open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)
    return path


def round_metrics(records: list[PromptRecord]) -> dict[str, float]:
    """The round's sample metrics: reward mean over all replies, best and worst per prompt
    averaged over prompts, the fraction of prompts that gave a pair, reply length in tokens."""
    replies = [reply for record in records for reply in record.replies]
    if not replies:
        return {"samples/prompts": 0}
    best = [max(r.reward for r in record.replies) for record in records]
    worst = [min(r.reward for r in record.replies) for record in records]
    return {
        "samples/prompts": len(records),
        "samples/reward_mean": sum(r.reward for r in replies) / len(replies),
        "samples/reward_best": sum(best) / len(best),
        "samples/reward_worst": sum(worst) / len(worst),
        "samples/pair_fraction": sum(record.pair is not None for record in records) / len(records),
        "samples/ties": sum(record.skip == "tie" for record in records),
        "samples/reply_tokens": sum(len(r.tokens) for r in replies) / len(replies),
        "samples/cut_off_fraction": sum(not r.stopped for r in replies) / len(replies),
    }


@dataclass(frozen=True)
class RoundSampling:
    """How a round samples: settings, replies per prompt, sampler batch, pair threshold."""

    settings: SamplingSettings
    samples_per_prompt: int
    batch_size: int
    min_reward_gap: float
    seed: int
    logprobs: bool = False  # the sampler also returns each token's log-prob (Reply.sampler_logprobs)


@dataclass(frozen=True)
class SamplingStats:
    generated_tokens: int  # over all ranks
    seconds: float  # sampling wall time (the slowest rank)


def collect_round(causal_lm, prompts: list[PromptItem], prompt_tokens: list[list[int]], renderer, scorer,
                  sampling: RoundSampling, round_index: int, info: dist_utils.DistInfo,
                  compute_context: Callable = contextlib.nullcontext,
                  lockstep: Callable[[bool], bool] | None = None,
                  engine=None) -> tuple[list[PromptRecord], SamplingStats]:
    """Every prompt's record (same order as `prompts`, on every rank) and the sampling stats. With a
    vLLM `engine` (already holding the policy's weights) it samples this rank's share there, each
    reply with the seed one process gives it (drawn for the whole round, as the native sampler
    draws them, and shared out by prompt), so the round's replies do not depend on how many ranks
    sample it; otherwise with the native sampler, from a generator of its own on each rank."""
    mine = list(range(info.rank, len(prompts), info.world_size))
    repeat = sampling.samples_per_prompt
    round_seed = sampling.seed * 1_000_003 + round_index * 1_009
    stop_token_ids = list(renderer.get_stop_token_ids())
    started = time.perf_counter()
    if engine is not None:
        seeds = prompt_seeds(len(prompts) * repeat, torch.Generator().manual_seed(round_seed))
        rows = [(prompt_tokens[i], seeds[i * repeat + k]) for i in mine for k in range(repeat)]
        completions = engine.sample([tokens for tokens, _ in rows], sampling.settings, stop_token_ids,
                                    seeds=[seed for _, seed in rows], logprobs=sampling.logprobs)
    else:
        generator = torch.Generator().manual_seed(round_seed + info.rank)
        filler = dist_utils.lockstep_filler(len(prompts), len(mine), info, lockstep)
        completions = sample(
            causal_lm, [prompt_tokens[i] for i in mine + [0] * filler for _ in range(repeat)], sampling.settings,
            stop_token_ids=stop_token_ids, pad_token_id=padding_token_id(renderer.tokenizer, stop_token_ids),
            batch_size=sampling.batch_size, generator=generator, compute_context=compute_context, lockstep=lockstep,
            return_logprobs=sampling.logprobs,
        )
    seconds = time.perf_counter() - started
    completions = completions[: len(mine) * repeat]
    texts = [str(renderer.parse_response(c.tokens).message["content"]) for c in completions]
    rewards = scorer.score([prompts[i] for i in mine for _ in range(repeat)], texts)
    records = []
    for n, index in enumerate(mine):
        span = range(n * repeat, (n + 1) * repeat)
        replies = [Reply(completions[j].tokens, texts[j], float(rewards[j]), completions[j].stopped,
                         completions[j].logprobs) for j in span]
        choice = select_pair([reply.reward for reply in replies], sampling.min_reward_gap)
        item = prompts[index]
        records.append((index, PromptRecord(
            key=item.key, messages=[dict(m) for m in item.messages], prompt_tokens=prompt_tokens[index],
            replies=replies, pair=None if isinstance(choice, str) else choice,
            skip=choice if isinstance(choice, str) else None)))
    generated = sum(len(c.tokens) for c in completions)
    gathered = dist_utils.all_gather_objects((records, generated, seconds), info)
    ordered = sorted((pair for part, _, _ in gathered for pair in part), key=lambda pair: pair[0])
    stats = SamplingStats(sum(part[1] for part in gathered), max(part[2] for part in gathered))
    return [record for _, record in ordered], stats


def round_prompt_indices(round_index: int, prompts_per_round: int, num_prompts: int) -> list[int]:
    """Indices of a round's prompts: the next prompts_per_round, wrapping around the list."""
    count = min(prompts_per_round, num_prompts)
    return [(round_index * count + i) % num_prompts for i in range(count)]


def sample_round(store, round_index: int, lockstep: Callable[[bool], bool] | None = None):
    """The replies of round `round_index`'s prompts from the policy as it is now, for a store of
    sampled rounds (on-policy's RoundStore, RL's GroupStore): (records, stats, the round's sampling
    metrics). The store's engine, when it has one, gets the policy's weights first."""
    indices = store.round_prompts(round_index)
    store.run.console.print(f"Round {round_index}: sampling {store.sampling.samples_per_prompt} replies to each "
                            f"of {len(indices)} prompts")
    sync_seconds = 0.0
    if store.engine is not None:
        # Every round, the first included: a resumed run's policy is not the engine's start model.
        sync_seconds = store.engine.load_weights(engine_weights(store.causal_lm))
    with contextlib.nullcontext() if store.engine is not None else store.sampling_scope():
        records, stats = collect_round(
            store.causal_lm, [store.prompts[i] for i in indices], [store.prompt_tokens[i] for i in indices],
            store.renderer, store.scorer, store.sampling, round_index, store.run.info,
            compute_context=store.sampling_context, lockstep=lockstep, engine=store.engine)
    metrics = {"samples/tokens_per_second": stats.generated_tokens / max(stats.seconds, 1e-9),
               "samples/seconds": stats.seconds,
               **({"samples/weight_sync_seconds": sync_seconds} if store.engine is not None else {})}
    return records, stats, metrics


class NoUsablePairsError(UserError):
    """Every prompt of a round tied (or fell under min_reward_gap): there is nothing to train on."""


# round index -> (the model that computes its reference log-probs, the context to run it in)
ReferenceForRound = Callable[[int], tuple[torch.nn.Module, Callable]]


class RoundStore:
    def __init__(self, run, causal_lm, prompts: list[PromptItem], prompt_tokens: list[list[int]], renderer,
                 scorer, sampling: RoundSampling, prompts_per_round: int, collate, reference: ReferenceForRound | None,
                 sampling_scope: Callable = contextlib.nullcontext,
                 sampling_context: Callable = contextlib.nullcontext,
                 lockstep: Callable[[bool], bool] | None = None, engine=None):
        self.run, self.causal_lm, self.prompts, self.prompt_tokens = run, causal_lm, prompts, prompt_tokens
        self.renderer, self.scorer, self.sampling, self.prompts_per_round = renderer, scorer, sampling, prompts_per_round
        self.collate, self.reference = collate, reference
        # Entered around all of a round's sampling (FSDP gathers the root's weights for it).
        # The precision sampling computes in (the training's autocast, entered once per batch).
        self.sampling_scope, self.sampling_context, self.lockstep = sampling_scope, sampling_context, lockstep
        # A vLLM engine samples instead of the policy when given; it gets the policy's weights first.
        self.engine = engine
        self.schedule = None  # set by the recipe once the schedule exists (they refer to each other)
        self.current: RoundData | None = None
        self.tables: dict[int, torch.Tensor] = {}
        self.first_step_of_round = False

    # -- what the schedule asks --------------------------------------------------------------------

    def num_pairs(self, round_index: int, step: int) -> int:
        self.first_step_of_round = step % self.schedule.steps_per_round == 0
        return len(self.round(round_index, step).paired)

    def round(self, round_index: int, step: int | None = None) -> RoundData:
        if self.current is None or self.current.index != round_index:
            self.current = self._load_or_make(round_index, step)
            paired = self.current.paired
            self.tables = {round_index: torch.tensor([record.reference_logps or (float("nan"),) * 2
                                                     for record in paired], dtype=torch.float32).reshape(-1, 2)}
        return self.current

    def round_summary(self) -> dict[str, float]:
        """The current round's summary metrics, logged with the round's first step."""
        return dict(self.current.summary) if self.current and self.first_step_of_round else {}

    # -- making a round ----------------------------------------------------------------------------

    def round_prompts(self, round_index: int) -> list[int]:
        return round_prompt_indices(round_index, self.prompts_per_round, len(self.prompts))

    def _load_or_make(self, round_index: int, step: int | None) -> RoundData:
        run = self.run
        data = read_round(run.log_path, round_index) if run.info.is_main else None
        data = dist_utils.broadcast_object(data, run.info)
        if data is not None and not run.resumed and not same_meaning(data.config, run.config_dict()):
            # Left by an earlier attempt that never trained, with other options: not this run's.
            run.console.print(f"Round {round_index}: {round_dir(run.log_path, round_index)} was sampled with other "
                              "options by an earlier attempt; sampling it again")
            data = None
        if data is not None:
            run.console.print(f"Round {round_index}: reusing {round_dir(run.log_path, round_index)}")
            if not data.paired:
                raise self._no_pairs_error(data)
            return data
        if step is not None and step % self.schedule.steps_per_round:
            raise UserError(f"{round_dir(run.log_path, round_index)} holds no complete samples.jsonl, but the run "
                            f"resumes at step {step}, in the middle of round {round_index}: the round's samples "
                            "cannot be drawn again from its starting model. Restart the run "
                            "(behavior_if_log_dir_exists=delete).")
        return self._make(round_index)

    def _make(self, round_index: int) -> RoundData:
        run = self.run
        records, stats, sampling_metrics = sample_round(self, round_index, lockstep=self.lockstep)
        data = RoundData(round_index, records, config=run.config_dict())
        started = time.perf_counter()
        if data.paired and self.reference is not None:
            self._fill_reference(data)
        data.summary = {"round": round_index, **round_metrics(records), **sampling_metrics,
                        "samples/reference_seconds": time.perf_counter() - started}
        if run.info.is_main:
            write_round(run.log_path, data)
        dist_utils.barrier(run.info)
        summary = data.summary
        run.console.print(
            f"Round {round_index}: {summary.get('samples/pair_fraction', 0):.0%} of prompts gave a pair; reward "
            f"mean {summary.get('samples/reward_mean', 0):.3f}, best {summary.get('samples/reward_best', 0):.3f}, "
            f"worst {summary.get('samples/reward_worst', 0):.3f}; {stats.generated_tokens:,} tokens in "
            f"{stats.seconds:.1f} s ({summary['samples/tokens_per_second']:.0f}/s)")
        if not data.paired:
            raise self._no_pairs_error(data)
        return data

    def _fill_reference(self, data: RoundData) -> None:
        """Reference log-probs of the round's pairs, over this rank's training micro-batches of the
        round (so with reference=round_start the round's first step starts at policy == reference)."""
        run, info = self.run, self.run.info
        pairs = [record.tokenized_pair() for record in data.paired]
        batches = [ids for ids in self.schedule.round_micro_batches(data.index, len(pairs)) if ids]
        model, context = self.reference(data.index)
        num_forwards = int(dist_utils.all_reduce_max(len(batches), info)) if run.strategy == "fsdp" else len(batches)
        was_training = model.training
        model.eval()
        with context():
            rows = ref.fill_reference_logps(model, pairs, batches, num_forwards, len(pairs), self.collate,
                                            info.device, info.is_main, desc=f"reference log-probs (round {data.index})")
        model.train(was_training)
        table = dist_utils.combine_ranks(rows, info)
        for record, (chosen, rejected) in zip(data.paired, table.tolist()):
            record.reference_logps = (chosen, rejected)

    def _no_pairs_error(self, data: RoundData) -> NoUsablePairsError:
        ties = sum(record.skip == "tie" for record in data.records)
        gaps = sum(record.skip == "small_gap" for record in data.records)
        entry = ckpt.latest_resumable_checkpoint(self.run.log_path)
        saved = (f"The model so far is {entry['path']} (step {entry['step']})." if entry
                 else "No training step had run yet.")
        return NoUsablePairsError(
            f"round {data.index}: none of its {len(data.records)} prompts gave a pair ({ties} with all replies "
            f"scored equal, {gaps} under min_reward_gap); stopping. Its samples are in "
            f"{round_dir(self.run.log_path, data.index)}. {saved} More samples_per_prompt, a higher temperature or "
            "another reward may give pairs.")


def same_meaning(stored: dict, new: dict) -> bool:
    """Whether two configs agree on every option that changes what a run computes."""
    try:
        check_resume_config(stored, new)
    except ResumeConfigError:
        return False
    return True


ROUND_STRIDE = 1_000_000_000


class RoundSource(Protocol):
    def num_pairs(self, round_index: int, step: int) -> int:
        """How many pairs round `round_index` has, sampling it first if needed (asked at `step`)."""


def split_pair_id(pair_id: int) -> tuple[int, int]:
    return divmod(pair_id, ROUND_STRIDE)


@dataclass
class RoundSchedule:
    source: RoundSource
    rounds: int
    steps_per_round: int
    batch_size: int  # global, over all ranks
    micro_batch_size: int  # per rank and forward pass
    max_steps: int | None
    seed: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        check_batch_sizes(self.batch_size, self.micro_batch_size, self.world_size)

    @property
    def steps_per_epoch(self) -> int:  # the loop logs `epoch`: here, the round
        return self.steps_per_round

    @property
    def total_steps(self) -> int:
        total = self.rounds * self.steps_per_round
        return total if self.max_steps is None else min(total, self.max_steps)

    def round_of(self, step: int) -> int:
        return step // self.steps_per_round

    def global_batch(self, step: int) -> list[int]:
        round_index, offset = divmod(step, self.steps_per_round)
        local = round_batch(self.seed, round_index, self.source.num_pairs(round_index, step), self.batch_size, offset)
        return [round_index * ROUND_STRIDE + i for i in local]

    def micro_batches(self, step: int) -> list[list[int]]:
        """This rank's micro-batches at `step`: every world_size-th pair of the global batch."""
        return rank_micro_batches(self.global_batch(step), self.rank, self.world_size, self.micro_batch_size)

    def round_micro_batches(self, round_index: int, num_pairs: int) -> list[list[int]]:
        """This rank's micro-batches of every step of the round, as pair indices within the round."""
        steps = range(round_index * self.steps_per_round,
                      min((round_index + 1) * self.steps_per_round, self.total_steps))
        offsets = [step - round_index * self.steps_per_round for step in steps]
        return [ids for offset in offsets for ids in rank_micro_batches(
            round_batch(self.seed, round_index, num_pairs, self.batch_size, offset),
            self.rank, self.world_size, self.micro_batch_size)]


def round_batch(seed: int, round_index: int, num_pairs: int, batch_size: int, offset: int) -> list[int]:
    """Pair indices of the `offset`-th batch of a round: slots [offset*B, (offset+1)*B) of the round's
    seeded permutations laid end to end."""
    if num_pairs < 1:
        raise ValueError(f"round {round_index} has no pairs")
    start = offset * batch_size
    ids = []
    for slot in range(start, start + batch_size):
        cycle, position = divmod(slot, num_pairs)
        ids.append(epoch_order(seed * 7_919 + round_index, cycle, num_pairs)[position])
    return ids
