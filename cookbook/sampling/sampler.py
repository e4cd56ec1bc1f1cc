"""`sample`: completions of many prompts from a Hugging Face causal LM, batched, with a KV cache.

    from cookbook.sampling import SamplingSettings, sample
    completions = sample(model, prompts, SamplingSettings(max_new_tokens=256, temperature=0.7),
                         stop_token_ids=renderer.get_stop_token_ids(), pad_token_id=tokenizer.pad_token_id,
                         generator=torch.Generator().manual_seed(0))

Used by the eval provider and by on-policy training, so it accepts the model as training holds it:
a peft model (its forward runs the LoRA adapters), FSDP2-sharded layers (see `lockstep`), a model
in train mode with `config.use_cache=False` (both are restored afterwards).

Prompts are sorted by length and cut into batches of `batch_size`, so a batch holds prompts of
about the same length and pays for little padding; completions come back in input order.

It runs under `torch.no_grad()`, not `inference_mode()`: autocast keeps its bf16 copy of a weight
for the whole autocast region only outside inference mode (inside, it recasts every weight at every
forward). Measured on one CPU thread, SmolLM2-135M, 8 rows, one decode step: fp32 ~112 ms; bf16
autocast ~75 ms here, but ~120 ms under inference mode, and ~125 ms when the weights are frozen
(autocast caches casts of weights that require grad only, so a LoRA base is recast every step).
So on a CPU pass the training autocast as `compute_context` when all weights train, and
nullcontext (fp32 decode) for LoRA.

Randomness: one seed per prompt is drawn from `generator` (in input order), and each row draws its
tokens from its own stream seeded with it (see `token_choice.py`). The same call twice gives the
same tokens; a prompt's samples do not depend on the other prompts' random draws, nor on the
batch size (what other prompts share its batch can still move its logits by rounding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from cookbook.sampling.decode import Completion, StopRule, decode_batch

__all__ = ["Completion", "SamplingSettings", "sample"]


@dataclass(frozen=True)
class SamplingSettings:
    """How tokens are chosen; requests with equal settings can share a batch."""

    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float | None = None
    top_k: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@contextlib.contextmanager
def generation_mode(model) -> Iterator[None]:
    """Eval mode and `config.use_cache=True` for the duration, then whatever the caller had (the
    training loop keeps use_cache=False, and a forward would otherwise build caches it discards)."""
    was_training = model.training
    config = model.config
    use_cache = getattr(config, "use_cache", None)
    model.eval()
    config.use_cache = True
    try:
        yield
    finally:
        model.train(was_training)
        config.use_cache = use_cache


def padding_token_id(tokenizer, stop_token_ids: Sequence[int]) -> int:
    """The token that pads prompts for sampling: the tokenizer's pad token, else the first stop token,
    else 0 (padding is masked out, so any id works; a real one keeps the embedding lookup in range)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return stop_token_ids[0] if stop_token_ids else 0


def prompt_seeds(count: int, generator: torch.Generator | None) -> list[int]:
    """One seed per prompt, in input order, from `generator` (torch's default generator when None);
    the vLLM engine takes the same seeds (`vllm_engine.Engine.sample`)."""
    return torch.randint(0, 2**62, (count,), generator=generator).tolist()


def row_uniforms(count: int, draws_per_row: int, generator: torch.Generator | None) -> torch.Tensor:
    """[count, draws_per_row] uniforms in [0, 1); row i comes from a stream seeded by the i-th seed
    drawn from `generator`."""
    seeds = prompt_seeds(count, generator)
    return torch.stack(
        [torch.rand(draws_per_row, generator=torch.Generator().manual_seed(seed)) for seed in seeds]
    )


def sample(
    model,
    prompts: Sequence[Sequence[int]],
    settings: SamplingSettings,
    stop_token_ids: Sequence[int],
    pad_token_id: int,
    *,
    batch_size: int = 32,
    generator: torch.Generator | None = None,
    stop_strings: Sequence[str] | None = None,
    tokenizer=None,
    compute_context: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    lockstep: Callable[[bool], bool] | None = None,
    return_logprobs: bool = False,
) -> list[Completion]:
    """One `Completion` per prompt, in input order (with `return_logprobs`, each token's log-prob).

    `compute_context` is entered around each batch's forwards (pass the training precision's
    autocast, or nullcontext). `lockstep`, for FSDP2 where every rank must run the same forwards:
    called at each decode step with "this rank has unfinished rows", it returns whether any rank
    does (an all-reduce of max); a rank that is done keeps running idle one-token forwards until
    it returns False. Callers must give every rank the same number of prompts and the same
    `batch_size`, so that every rank runs the same number of batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not prompts:
        return []
    rule = StopRule(stop_token_ids, settings.max_new_tokens, stop_strings, tokenizer)
    sampled = settings.temperature > 0
    uniforms = row_uniforms(len(prompts), settings.max_new_tokens, generator) if sampled else None
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Completion | None] = [None] * len(prompts)
    with generation_mode(model), torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            completions = decode_batch(
                model,
                [prompts[i] for i in batch],
                temperature=settings.temperature,
                top_k=settings.top_k if sampled else None,
                top_p=settings.top_p if sampled else None,
                rule=rule,
                pad_token_id=pad_token_id,
                uniforms=uniforms[batch] if uniforms is not None else None,
                compute_context=compute_context,
                lockstep=lockstep,
                return_logprobs=return_logprobs,
            )
            for i, completion in zip(batch, completions):
                results[i] = completion
    return results
