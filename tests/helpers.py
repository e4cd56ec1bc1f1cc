"""Helpers only the tests use: reference computations and tiny model directories."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from cookbook.models import make_tiny_model
from cookbook.training.logprobs import naive_token_logprobs


def naive_sequence_logprobs(causal_lm: nn.Module, input_ids: Tensor, loss_weights: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """The textbook path (full logits, log_softmax, gather), kept as the reference for tests."""
    logits = causal_lm(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    token_logps = naive_token_logprobs(logits, input_ids[:, 1:])
    return (token_logps * loss_weights[:, 1:].float()).sum(dim=1)


def pair_token_count(pair, layout: str = "packed") -> int:
    """Slots one pair fills in a packed (prompt twice) or prefix-shared (prompt once) row."""
    total = len(pair.chosen.tokens) + len(pair.rejected.tokens)
    return total - pair.prompt_length if layout == "prefix_shared" else total


def save_tiny_model(directory: str | Path, tokenizer, **kwargs) -> Path:
    """Write a tiny random-init model and the tokenizer as a HF directory (for CLI tests)."""
    directory = Path(directory)
    model = make_tiny_model(tokenizer, **kwargs)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
