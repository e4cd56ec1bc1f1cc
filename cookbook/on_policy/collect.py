"""One round's data: the policy samples `samples_per_prompt` replies to each prompt, the reward
scores them, and each prompt gets its best-versus-worst pair.

Under DDP or FSDP every rank samples and scores its share of the prompts and all ranks end with
every record. The generator is seeded from (seed, round, rank), so a round sampled again after a
crash gives the same replies from the same weights.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cookbook.on_policy.pairs import select_pair
from cookbook.on_policy.prompt import PromptItem
from cookbook.on_policy.round_files import PromptRecord, Reply
from cookbook.sampling import SamplingSettings, padding_token_id, sample
from cookbook.training import distributed as dist_utils


@dataclass(frozen=True)
class RoundSampling:
    """How a round samples: settings, replies per prompt, sampler batch, pair threshold."""

    settings: SamplingSettings
    samples_per_prompt: int
    batch_size: int
    min_reward_gap: float
    seed: int


@dataclass(frozen=True)
class SamplingStats:
    generated_tokens: int  # over all ranks
    seconds: float  # sampling wall time (the slowest rank)


def collect_round(causal_lm, prompts: list[PromptItem], prompt_tokens: list[list[int]], renderer, scorer,
                  how: RoundSampling, round_index: int, info: dist_utils.DistInfo,
                  compute_context: Callable = contextlib.nullcontext,
                  lockstep: Callable[[bool], bool] | None = None) -> tuple[list[PromptRecord], SamplingStats]:
    """Every prompt's record (same order as `prompts`, on every rank) and the sampling stats."""
    mine = list(range(info.rank, len(prompts), info.world_size))
    repeat = how.samples_per_prompt
    generator = torch.Generator().manual_seed(how.seed * 1_000_003 + round_index * 1_009 + info.rank)
    filler = lockstep_filler(len(prompts), len(mine), info, lockstep)
    stop_token_ids = list(renderer.get_stop_token_ids())
    started = time.perf_counter()
    completions = sample(
        causal_lm, [prompt_tokens[i] for i in mine + [0] * filler for _ in range(repeat)], how.settings,
        stop_token_ids=stop_token_ids, pad_token_id=padding_token_id(renderer.tokenizer, stop_token_ids),
        batch_size=how.batch_size, generator=generator, compute_context=compute_context, lockstep=lockstep,
    )
    seconds = time.perf_counter() - started
    completions = completions[: len(mine) * repeat]
    texts = [str(renderer.parse_response(c.tokens).message["content"]) for c in completions]
    rewards = scorer.score([prompts[i] for i in mine for _ in range(repeat)], texts)
    records = []
    for n, index in enumerate(mine):
        span = range(n * repeat, (n + 1) * repeat)
        replies = [Reply(completions[j].tokens, texts[j], float(rewards[j]), completions[j].stopped) for j in span]
        choice = select_pair([reply.reward for reply in replies], how.min_reward_gap)
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


def lockstep_filler(total: int, mine: int, info: dist_utils.DistInfo, lockstep) -> int:
    """How many stand-in items this rank adds to its share of `total` so that, in lockstep (FSDP),
    every rank runs as many forwards; their results are dropped. 0 without lockstep."""
    return (-(-total // info.world_size) - mine) if lockstep is not None else 0

