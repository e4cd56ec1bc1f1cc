"""Batched generation and pair scoring on a loaded causal LM: the blocking work the provider runs
in a worker thread. Token lists in, token lists (or log-probs) out; nothing here knows inspect-ai.

Generation is `cookbook.sampling.sample` (our decode loop with a KV cache), the same sampler
on-policy training uses, so an eval reply and a training sample come from the same code.
"""

from __future__ import annotations

import torch

from cookbook.sampling import SamplingSettings, sample

__all__ = ["SamplingSettings", "generate_batch", "score_sequences"]


def generate_batch(
    model,
    prompts: list[list[int]],
    settings: SamplingSettings,
    pad_token_id: int,
    stop_token_ids: list[int],
    stop_strings: list[str] | None = None,
    tokenizer=None,
) -> list[list[int]]:
    """Completion tokens for each prompt (one batch), each cut after its first stop token or string.
    Sampling draws from torch's default generator, which the provider seeds from the eval's seed."""
    completions = sample(
        model,
        prompts,
        settings,
        stop_token_ids,
        pad_token_id,
        batch_size=max(len(prompts), 1),
        stop_strings=stop_strings,
        tokenizer=tokenizer,
    )
    return [completion.tokens for completion in completions]


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
