"""Prefill and decode of one batch of prompts on a Hugging Face causal LM, with our own loop.

Where transformers' `generate` spends a decode step (SmolLM2-135M, 8 rows, fp32, one CPU thread,
110-130 ms a step): about 75% in the weight matmuls, which at 8 rows are bound by streaming the
540 MB of fp32 weights once per step (270 MB in bf16; a 2 GFLOP step would take ~25 ms at the
core's matmul peak), 10-15% in attention, and the rest in growing its cache by `torch.cat`
(O(t) bytes per step), mask building, logits processors and rows that already ended. No loop can
make the matmuls cheaper, so this one removes the rest and otherwise stays out of the way:

- prompts are left-padded so every row's next token sits in the same column; the mask and the
  position ids are built once (a pad query attends to itself only, so no softmax row is empty);
- the key/value cache is allocated once and written in place (`kv_cache.py`);
- the LM head runs on the last position only (`logits_to_keep=1`), never on the prompt;
- finished rows leave the batch (the cache is compacted when a row ends);
- the compute context (the training precision's autocast) is entered once per batch, not per
  forward, so autocast casts each weight to bf16 once per batch rather than once per step.

The model sees explicit position ids and a 4D boolean mask [rows, 1, queries, keys]; transformers
uses a 4D mask as given, so this works for any decoder whose attention is plain causal attention
(Llama, Mistral, Qwen2/3, SmolLM; not sliding-window or hybrid-attention models).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from cookbook.sampling.kv_cache import PreallocatedCache
from cookbook.sampling.stops import StopRule
from cookbook.sampling.token_choice import choose_tokens


@dataclass(frozen=True)
class Completion:
    tokens: list[int]  # generated tokens, up to and including the first stop token
    stopped: bool  # True: ended by a stop token/string; False: hit max_new_tokens


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, T], attention_mask [B, T], 1 on prompt tokens) with each prompt right-aligned."""
    if not prompts or any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("every prompt needs at least one token")
    length = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        attention_mask[row, length - len(prompt) :] = 1
    return input_ids, attention_mask


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def cache_keyword(model) -> str:
    """The forward's name for the cache: `cache` in transformers >= 5.2x, `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def idle_forward(model, pad_token_id: int) -> None:
    """A one-token forward whose result is thrown away: what a rank with nothing left to decode
    runs so that sharded layers still gather their weights as often as on the other ranks."""
    input_ids = torch.full((1, 1), pad_token_id, dtype=torch.long, device=model_device(model))
    model(input_ids=input_ids, use_cache=False, logits_to_keep=1)


class BatchDecoder:
    """The rows of one batch still decoding, with their cache, mask and positions."""

    def __init__(self, model, prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_token_id: int) -> None:
        self.model = model
        self.cache_keyword = cache_keyword(model)
        device = model_device(model)
        input_ids, prompt_mask = left_pad(prompts, pad_token_id)
        rows, width = input_ids.shape
        self.width = width
        self.input_ids = input_ids.to(device)
        # Keys each row may attend to, over every column the batch will fill: its prompt (not the
        # padding) and everything generated after it.
        self.key_mask = torch.cat([prompt_mask.bool(), torch.ones(rows, max_new_tokens, dtype=torch.bool)], 1).to(device)
        self.prompt_lengths = prompt_mask.sum(-1).to(device)
        self.cache = PreallocatedCache(capacity=width + max_new_tokens)
        self.steps_fed = 0  # generated tokens fed back so far

    def _forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        kwargs = {self.cache_keyword: self.cache}
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        return output.logits[:, -1]

    def prefill(self) -> torch.Tensor:
        """Logits [rows, vocab] for the first generated token."""
        width, device = self.width, self.input_ids.device
        columns = torch.arange(width, device=device)
        causal = columns[None, :] <= columns[:, None]  # [query, key]
        keys = self.key_mask[:, None, :width] | torch.eye(width, dtype=torch.bool, device=device)
        mask = (causal[None] & keys)[:, None]  # [rows, 1, width, width]
        padding = width - self.prompt_lengths
        positions = (columns[None, :] - padding[:, None]).clamp(min=0)
        return self._forward(self.input_ids, mask, positions)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed each live row its newest token [rows]; logits [rows, vocab] for the next one."""
        filled = self.width + self.steps_fed + 1
        mask = self.key_mask[:, None, None, :filled]
        positions = (self.prompt_lengths + self.steps_fed)[:, None]
        self.steps_fed += 1
        return self._forward(tokens[:, None], mask, positions)

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.cache.keep_rows(rows)
        self.key_mask = self.key_mask[rows]
        self.prompt_lengths = self.prompt_lengths[rows]


class RowProgress:
    """Each row's tokens so far, whether it stopped, and which rows are still decoding."""

    def __init__(self, rows: int, rule: StopRule) -> None:
        self.rule = rule
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.stopped = [False] * rows
        self.live = list(range(rows))  # batch rows still decoding, in the decoder's row order

    def add(self, chosen: list[int]) -> list[int]:
        """Append each live row's new token; the positions (among the live rows) of those that go on."""
        keep = []
        for position, (row, token) in enumerate(zip(self.live, chosen)):
            self.tokens[row].append(token)
            done, self.stopped[row] = self.rule.finished(self.tokens[row])
            if not done:
                keep.append(position)
        self.live = [self.live[position] for position in keep]
        return keep

    def completions(self) -> list[Completion]:
        return [Completion(tokens, stopped) for tokens, stopped in zip(self.tokens, self.stopped)]


def decode_batch(
    model,
    prompts: Sequence[Sequence[int]],
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    rule: StopRule,
    pad_token_id: int,
    uniforms: torch.Tensor | None,
    compute_context: Callable[[], AbstractContextManager],
    lockstep: Callable[[bool], bool] | None,
) -> list[Completion]:
    """Completions of `prompts` (one batch). `uniforms` [rows, max_new_tokens]: row r's draw for
    its token i (None when greedy). With `lockstep`, steps continue (idle forwards once this
    batch is done) for as long as `lockstep(this rank has unfinished rows)` says any rank does."""
    decoder = BatchDecoder(model, prompts, rule.max_new_tokens, pad_token_id)
    device = decoder.input_ids.device
    if uniforms is not None:
        uniforms = uniforms.to(device)
    progress = RowProgress(len(prompts), rule)
    with compute_context():
        logits = decoder.prefill()
        step = 0  # index of the token being chosen
        while True:
            if progress.live:
                draws = None if uniforms is None else uniforms[progress.live, step]
                chosen = choose_tokens(logits, temperature, top_k, top_p, draws)
                before = len(progress.live)
                keep = progress.add(chosen.tolist())
                if keep and len(keep) < before:
                    kept = torch.tensor(keep, device=device)
                    decoder.keep_rows(kept)
                    chosen = chosen[kept]
            busy = bool(progress.live)
            if not (lockstep(busy) if lockstep is not None else busy):
                break
            if busy:
                logits = decoder.step(chosen)
                step += 1
            else:
                idle_forward(model, pad_token_id)
    return progress.completions()
