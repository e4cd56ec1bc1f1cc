"""Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling, in fp32.

Pure tensor functions, so each filter is tested on a hand-made distribution. The order is the
usual one (and transformers'): divide by the temperature, keep the top k, then the top-p nucleus.

A sampled token is drawn by inverse CDF from one uniform number per row and step (`uniforms`),
which the caller draws from the row's own generator: a row's tokens then depend on its own seed
and logits only, never on which other prompts share its batch or how many draws they took.
"""

from __future__ import annotations

import torch


def filter_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """`logits` [rows, vocab] with everything below each row's k-th largest value set to -inf
    (ties with the k-th value are kept)."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """`logits` [rows, vocab] with -inf outside each row's nucleus: the fewest most-likely tokens
    whose probabilities sum to at least `top_p` (the most likely token is always kept)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the tokens ranked above
    drop_sorted = mass_before >= top_p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sampling_probs(
    logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution tokens are drawn from: softmax(filtered logits / temperature), fp32."""
    logits = logits.float() / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None:
        logits = filter_top_p(logits, top_p)
    return torch.softmax(logits, dim=-1)


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row by inverse CDF: the first token whose cumulative probability exceeds
    `uniforms[row]` (in [0, 1)) times the row's total. A zero-probability token has an empty
    interval and is never drawn."""
    cdf = torch.cumsum(probs, dim=-1)
    targets = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    tokens = torch.searchsorted(cdf, targets, right=True).squeeze(-1)
    return tokens.clamp_(max=probs.shape[-1] - 1)


def choose_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    uniforms: torch.Tensor | None,
) -> torch.Tensor:
    """Next token per row from `logits` [rows, vocab]: argmax when temperature == 0, else drawn
    with `uniforms` [rows]."""
    logits = logits.float()  # bf16 logits (autocast) would also make argmax several times slower
    if temperature == 0:
        return logits.argmax(dim=-1)
    if uniforms is None:
        raise ValueError("sampling with temperature > 0 needs uniforms")
    return draw(sampling_probs(logits, temperature, top_k, top_p), uniforms)
