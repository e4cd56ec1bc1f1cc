"""Prefill and decode of one batch of prompts on a Hugging Face causal LM, with our own loop.

Where transformers' `generate` spends a decode step (SmolLM2-135M, 8 rows, fp32, one CPU thread,
110-130 ms a step): about 75% in the weight matmuls, 10-15% in attention, and the rest in growing
its cache by `torch.cat` (O(t) bytes per step), mask building, logits processors and rows that
already ended. This loop removes that rest. What is left at the on-policy round's batch of 32
(bf16 autocast, 256 new tokens; `benchmarks/sampler_throughput.py --profile`, 2026-12-07) is not
the weight matmuls (24% of self CPU time) but attention over the key/value cache (43%) and tensor
copies (22%: the cache writes and autocast's casts), which grow with rows and reply length; so a
larger batch barely raises tokens per CPU-second, and vLLM's paged attention decodes about 4x
faster on a CPU (benchmarks/README.md). The loop:

- prompts are left-padded so every row's next token sits in the same column; the mask and the
  position ids are built once (a pad query attends to itself only, so no softmax row is empty);
- the key/value cache is allocated once and written in place (`PreallocatedCache` below:
  transformers' `DynamicCache` grows by `torch.cat`, O(t) bytes a step and O(t^2) over a
  completion);
- the LM head runs on the last position only (`logits_to_keep=1`), never on the prompt;
- finished rows leave the batch (the cache is compacted when a row ends);
- the compute context (the training precision's autocast) is entered once per batch, not per
  forward, so autocast casts each weight to bf16 once per batch rather than once per step.

The model sees explicit position ids and a 4D boolean mask [rows, 1, queries, keys]; transformers
uses a 4D mask as given, so this works for any decoder whose attention is plain causal attention
(Llama, Mistral, Qwen2/3, SmolLM; not sliding-window or hybrid-attention models).

A row ends at a stop token, a stop string or the token budget (`StopRule`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from cookbook.sampling.token_choice import choose_tokens


@dataclass(frozen=True)
class Completion:
    tokens: list[int]  # generated tokens, up to and including the first stop token
    stopped: bool  # True: ended by a stop token/string; False: hit max_new_tokens
    # With return_logprobs: each token's log-prob under the model's logits (temperature 1), as
    # the sampler computed them, so a trainer can measure how far its own log-probs differ.
    logprobs: list[float] | None = None


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

    def __init__(self, rows: int, rule: StopRule, logprobs: bool = False) -> None:
        self.rule = rule
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.logprobs: list[list[float]] | None = [[] for _ in range(rows)] if logprobs else None
        self.stopped = [False] * rows
        self.live = list(range(rows))  # batch rows still decoding, in the decoder's row order

    def add(self, chosen: list[int], logprobs: list[float] | None = None) -> list[int]:
        """Append each live row's new token (and its log-prob); the positions (among the live rows)
        of those that go on."""
        keep = []
        for position, (row, token) in enumerate(zip(self.live, chosen)):
            self.tokens[row].append(token)
            if self.logprobs is not None:
                self.logprobs[row].append(logprobs[position])
            done, self.stopped[row] = self.rule.finished(self.tokens[row])
            if not done:
                keep.append(position)
        self.live = [self.live[position] for position in keep]
        return keep

    def completions(self) -> list[Completion]:
        logprobs = self.logprobs or [None] * len(self.tokens)
        return [Completion(tokens, stopped, row_logprobs)
                for tokens, stopped, row_logprobs in zip(self.tokens, self.stopped, logprobs)]


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
    return_logprobs: bool = False,
) -> list[Completion]:
    """Completions of `prompts` (one batch). `uniforms` [rows, max_new_tokens]: row r's draw for
    its token i (None when greedy). With `lockstep`, steps continue (idle forwards once this
    batch is done) for as long as `lockstep(this rank has unfinished rows)` says any rank does.
    `return_logprobs` also gives each chosen token's log-softmax of the logits."""
    decoder = BatchDecoder(model, prompts, rule.max_new_tokens, pad_token_id)
    device = decoder.input_ids.device
    if uniforms is not None:
        uniforms = uniforms.to(device)
    progress = RowProgress(len(prompts), rule, return_logprobs)
    with compute_context():
        logits = decoder.prefill()
        step = 0  # index of the token being chosen
        while True:
            if progress.live:
                draws = None if uniforms is None else uniforms[progress.live, step]
                chosen = choose_tokens(logits, temperature, top_k, top_p, draws)
                logprobs = (torch.log_softmax(logits.float(), -1).gather(1, chosen[:, None]).squeeze(1).tolist()
                            if return_logprobs else None)
                before = len(progress.live)
                keep = progress.add(chosen.tolist(), logprobs)
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


class StopRule:
    """Decides after each new token whether a row is done.

    Stop strings are found by decoding the row's last few generated tokens with the tokenizer (only
    when stop strings are given: decoding costs tens of microseconds a row and step). Every token
    decodes to at least one character, so the last `longest stop string` tokens hold any stop
    string that the newest token completed; the prompt is never searched.
    """

    def __init__(
        self,
        stop_token_ids: Sequence[int],
        max_new_tokens: int,
        stop_strings: Sequence[str] | None = None,
        tokenizer=None,
    ) -> None:
        self.stop_token_ids = frozenset(stop_token_ids)
        self.max_new_tokens = max_new_tokens
        self.stop_strings = tuple(s for s in stop_strings or () if s)
        if self.stop_strings and tokenizer is None:
            raise ValueError("stop_strings need the tokenizer to decode completions")
        self.tokenizer = tokenizer
        self.tail_tokens = max((len(s) for s in self.stop_strings), default=0)

    def stopped(self, tokens: list[int]) -> bool:
        """True when `tokens` (a row's completion so far) ends with a stop token or stop string."""
        if tokens[-1] in self.stop_token_ids:
            return True
        if not self.stop_strings:
            return False
        tail = self.tokenizer.decode(tokens[-self.tail_tokens :], skip_special_tokens=False)
        return any(stop in tail for stop in self.stop_strings)

    def finished(self, tokens: list[int]) -> tuple[bool, bool]:
        """(done, stopped): done when stopped or the budget is spent."""
        stopped = self.stopped(tokens)
        return stopped or len(tokens) >= self.max_new_tokens, stopped


class PreallocatedLayer(CacheLayerMixin):
    """One layer's keys and values; columns [0, length) are filled."""

    is_sliding = False
    is_compileable = False

    def __init__(self, capacity: int, **kwargs) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        rows, heads, _, _ = key_states.shape
        self.keys = key_states.new_empty((rows, heads, self.capacity, key_states.shape[-1]))
        self.values = value_states.new_empty((rows, heads, self.capacity, value_states.shape[-1]))
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, stop = self.length, self.length + key_states.shape[-2]
        if stop > self.capacity:
            raise RuntimeError(f"KV cache holds {self.capacity} positions; a step asked for {stop}")
        self.keys[:, :, start:stop] = key_states
        self.values[:, :, start:stop] = value_states
        self.length = stop
        return self.keys[:, :, :stop], self.values[:, :, :stop]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            # Only the filled columns are worth copying; the rest is rewritten before it is read.
            filled = self.length
            self.keys = _compact(self.keys, indices, filled)
            self.values = _compact(self.values, indices, filled)


def _compact(buffer: torch.Tensor, rows: torch.Tensor, filled: int) -> torch.Tensor:
    out = buffer.new_empty((len(rows), *buffer.shape[1:]))
    out[:, :, :filled] = buffer[rows, :, :filled]
    return out


class PreallocatedCache(Cache):
    """A cache whose layers are `PreallocatedLayer`s of `capacity` positions, created on first use."""

    def __init__(self, capacity: int) -> None:
        super().__init__(layer_class_to_replicate=functools.partial(PreallocatedLayer, capacity))

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (indices into the current rows), in that order."""
        for layer in self.layers:
            layer.batch_select_indices(rows)
