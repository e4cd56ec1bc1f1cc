"""Turning a `Comparison` into token ids through a renderer: a `TokenizedPair`.

Both sequences are `build_generation_prompt(prompt) + completion`, with loss weight 1 on the
completion's reply tokens only; the prompt tokens are an exact, shared prefix of length
`prompt_length`.

`max_length` bounds each sequence. A completion that does not fit is cut from its end (the prompt
is never cut: a reply to half a question is a different example). A pair whose prompt leaves fewer
than `MIN_COMPLETION_TOKENS` tokens of room is dropped as `too_long`, since a few tokens of each
reply carry almost no preference signal. A pair whose two completions have the same tokens (after
any cut) is dropped as `identical`: its DPO loss is constant, so it only dilutes the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from cookbook.datasets.comparison import Comparison, Skip

MIN_COMPLETION_TOKENS = 8


@dataclass(frozen=True)
class TokenizedSequence:
    """Prompt + completion token ids, and a loss weight per token (1.0 on completion replies)."""

    tokens: list[int]
    weights: list[float]

    def __post_init__(self):
        if len(self.tokens) != len(self.weights):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.weights)} weights")

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class TokenizedPair:
    """A preference pair as tokens. `chosen.tokens[:prompt_length] == rejected.tokens[:prompt_length]`
    are the prompt; `truncated` says whether max_length cut either completion."""

    chosen: TokenizedSequence
    rejected: TokenizedSequence
    prompt_length: int
    truncated: bool = False

    @property
    def chosen_completion_length(self) -> int:
        return len(self.chosen) - self.prompt_length

    @property
    def rejected_completion_length(self) -> int:
        return len(self.rejected) - self.prompt_length


def tokenize_comparison(comparison: Comparison, renderer, max_length: int | None) -> TokenizedPair | Skip:
    """The pair's tokens, or a Skip: `too_long`, `identical`, or `malformed` when the renderer
    rejects the messages."""
    try:
        prompt_tokens = renderer.build_generation_prompt(comparison.prompt)
        chosen = renderer.build_completion_example(comparison.prompt, comparison.chosen)
        rejected = renderer.build_completion_example(comparison.prompt, comparison.rejected)
    except ValueError as error:
        return Skip("malformed", f"renderer: {error}")
    prompt_length = len(prompt_tokens)
    for example in (chosen, rejected):
        # The renderer promises this; DPO's shared-prompt log-probs silently go wrong without it.
        if example.tokens[:prompt_length] != prompt_tokens:
            raise ValueError(
                "renderer broke its contract: the generation prompt is not a prefix of the example"
            )
    truncated = False
    if max_length is not None:
        room = max_length - prompt_length
        if room < MIN_COMPLETION_TOKENS:
            return Skip(
                "too_long",
                f"prompt is {prompt_length} tokens; max_length={max_length} leaves {room} for the completion "
                f"(need >= {MIN_COMPLETION_TOKENS})",
            )
        truncated = len(chosen.tokens) > max_length or len(rejected.tokens) > max_length
    chosen_sequence = _cut(chosen.tokens, chosen.weights, max_length)
    rejected_sequence = _cut(rejected.tokens, rejected.weights, max_length)
    if chosen_sequence.tokens[prompt_length:] == rejected_sequence.tokens[prompt_length:]:
        cut = f" within max_length={max_length}" if truncated else ""
        return Skip("identical", f"chosen and rejected completions have the same tokens{cut}")
    return TokenizedPair(chosen_sequence, rejected_sequence, prompt_length, truncated)


def _cut(tokens: list[int], weights: list[float], max_length: int | None) -> TokenizedSequence:
    if max_length is None:
        return TokenizedSequence(list(tokens), list(weights))
    return TokenizedSequence(list(tokens[:max_length]), list(weights[:max_length]))
