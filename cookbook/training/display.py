"""Showing a person what the trainer sees: the resolved config, and which tokens carry loss."""

from __future__ import annotations

import json

from rich.console import Console
from rich.panel import Panel
from rich.text import Text


def print_config(console: Console, config_dict: dict) -> None:
    console.print(Panel(json.dumps(config_dict, indent=2, default=str), title="config", expand=False))


def weighted_tokens_text(tokenizer, tokens: list[int], weights: list[float]) -> Text:
    """Tokens decoded one by one: green where they carry loss, dim where they do not."""
    text = Text()
    for token, weight in zip(tokens, weights):
        piece = tokenizer.decode([token])
        text.append(piece, style="bold green" if weight > 0 else "dim")
    return text


def print_pair(console: Console, tokenizer, pair) -> None:
    console.print(Panel(weighted_tokens_text(tokenizer, pair.chosen.tokens, pair.chosen.weights), title="chosen (green = trained tokens)"))
    console.print(Panel(weighted_tokens_text(tokenizer, pair.rejected.tokens, pair.rejected.weights), title="rejected"))
