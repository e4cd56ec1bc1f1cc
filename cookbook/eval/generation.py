"""Batched generation and pair scoring on a loaded causal LM: the blocking work the provider runs
in a worker thread. Token lists in, token lists (or log-probs) out; nothing here knows inspect-ai.

Prompts are left-padded so every row's next token sits in the last column, which is what
`model.generate` needs to decode a batch in lockstep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingSettings:
    """Everything that must be equal for two requests to share one `generate` call."""

    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float | None = None
    top_k: int | None = None


def left_pad(prompts: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, T], attention_mask [B, T]) with each prompt right-aligned."""
    if not prompts or any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("every prompt needs at least one token")
    length = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, length - len(prompt) :] = 1
    return input_ids, attention_mask


def cut_at_stop(tokens: list[int], stop_token_ids: set[int]) -> list[int]:
    """Tokens up to and including the first stop token (the rest of a finished row is padding)."""
    for index, token in enumerate(tokens):
        if token in stop_token_ids:
            return tokens[: index + 1]
    return tokens


@torch.inference_mode()
def generate_batch(
    model,
    prompts: list[list[int]],
    settings: SamplingSettings,
    pad_token_id: int,
    stop_token_ids: list[int],
    stop_strings: list[str] | None = None,
    tokenizer=None,
) -> list[list[int]]:
    """Completion tokens for each prompt, each cut after its first stop token."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad(prompts, pad_token_id)
    sampled = settings.temperature > 0
    # A fresh GenerationConfig, so a checkpoint's own generation_config.json (which may turn sampling
    # on) cannot override what the eval asked for.
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=sampled,
        temperature=settings.temperature if sampled else None,
        top_p=settings.top_p if sampled else None,
        top_k=settings.top_k if sampled else None,
        eos_token_id=list(stop_token_ids) or None,
        pad_token_id=pad_token_id,
        stop_strings=stop_strings or None,
    )
    extra = {"tokenizer": tokenizer} if stop_strings else {}
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        generation_config=config,
        **extra,
    )
    completions = output[:, input_ids.shape[1] :].tolist()
    stops = set(stop_token_ids)
    return [cut_at_stop(tokens, stops) for tokens in completions]


@torch.inference_mode()
def score_sequences(model, sequences, pad_token_id: int, max_rows: int) -> list[float]:
    """Weighted log-prob sum of each sequence (objects with .tokens and .weights), `max_rows` a time."""
    from cookbook.preference.logprobs import pad_batch, sequence_logprobs

    device = next(model.parameters()).device
    logps: list[float] = []
    for start in range(0, len(sequences), max_rows):
        input_ids, loss_weights, attention_mask = pad_batch(sequences[start : start + max_rows], pad_token_id)
        values = sequence_logprobs(model, input_ids.to(device), loss_weights.to(device), attention_mask.to(device))
        logps.extend(values.float().cpu().tolist())
    return logps
