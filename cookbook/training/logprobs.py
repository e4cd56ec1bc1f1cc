"""Sequence log-probabilities: the sum of per-token log-probs weighted by the renderer's loss weights.

Shapes: R rows of length T go into the model; N is the number of loss tokens (tokens with a nonzero
weight) across the whole batch; S the number of sequences (completions) whose log-probs we return.

The LM head is the most expensive single matmul of a small model (SmolLM2: 49k vocab x 576), and a
DPO completion is often a fraction of its sequence. So we never form [R*T x vocab] logits: we gather
the hidden states of the N positions that predict a loss token, and push them through the head in
chunks inside a custom autograd function that recomputes each chunk's softmax in backward. Peak
extra memory is one [chunk x vocab] float32 block instead of [tokens x vocab]; the result is exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cookbook.training.attention import AttentionSpans, use_span_attention

DEFAULT_CHUNK_SIZE = 2048


def naive_token_logprobs(logits: Tensor, target_ids: Tensor) -> Tensor:
    """log softmax(logits)[target] in float32; logits [..., V], target_ids [...]."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return logprobs.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)


class _ChunkedLinearLogprob(torch.autograd.Function):
    """logp[n] = (h[n] @ W.T)[target[n]] - logsumexp(h[n] @ W.T), computed `chunk_size` rows at a time."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target_ids: Tensor, chunk_size: int) -> Tensor:
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            stop = start + chunk_size
            logits = (hidden[start:stop] @ weight.T).float()
            target_logits = logits.gather(1, target_ids[start:stop, None]).squeeze(1)
            out[start:stop] = target_logits - torch.logsumexp(logits, dim=1)
        ctx.save_for_backward(hidden, weight, target_ids)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, target_ids = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            stop = start + ctx.chunk_size
            h = hidden[start:stop]
            # d logp / d logits = onehot(target) - softmax(logits), scaled by the upstream grad.
            grad_logits = -torch.softmax((h @ weight.T).float(), dim=1)
            grad_logits.scatter_add_(
                1, target_ids[start:stop, None], torch.ones_like(grad_logits[:, :1])
            )
            grad_logits *= grad_out[start:stop, None]
            if need_hidden:
                grad_hidden[start:stop] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_weight:
                grad_weight += grad_logits.T @ h.float()
        if need_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def chunked_token_logprobs(
    hidden: Tensor, lm_head_weight: Tensor, target_ids: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Tensor:
    """Float32 log-prob of each target token given its hidden state; hidden [N, H], weight [V, H]."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32) + 0 * lm_head_weight.sum()
    return _ChunkedLinearLogprob.apply(hidden, lm_head_weight, target_ids, chunk_size)


@dataclass
class LossTokens:
    """Which hidden states predict which loss tokens, and which sequence each belongs to.

    `hidden_index[n]` indexes the flattened [R*T] hidden states; the state there predicts
    `target_ids[n]`, weighted by `weights[n]`, and its log-prob is added to sequence
    `sequence_index[n]` (of `num_sequences`). Padded, packed and prefix-shared batches all reduce
    to this form, so one forward serves them all.
    """

    hidden_index: Tensor
    target_ids: Tensor
    weights: Tensor
    sequence_index: Tensor
    num_sequences: int

    def to(self, device: torch.device) -> LossTokens:
        return LossTokens(
            hidden_index=self.hidden_index.to(device),
            target_ids=self.target_ids.to(device),
            weights=self.weights.to(device),
            sequence_index=self.sequence_index.to(device),
            num_sequences=self.num_sequences,
        )


@dataclass
class SequenceLogprobs:
    """Per-sequence weighted log-prob sums [S] and loss-token counts [S] (weight sums), and the
    unweighted log-prob of each loss token [N] in `LossTokens` order (RL's per-token losses)."""

    logps: Tensor
    num_loss_tokens: Tensor
    token_logps: Tensor | None = None


def _reduce_to_sequences(token_logps: Tensor, loss_tokens: LossTokens) -> SequenceLogprobs:
    weights = loss_tokens.weights.float()
    zeros = torch.zeros(loss_tokens.num_sequences, dtype=torch.float32, device=token_logps.device)
    logps = zeros.index_add(0, loss_tokens.sequence_index, token_logps * weights)
    counts = zeros.index_add(0, loss_tokens.sequence_index, weights)
    return SequenceLogprobs(logps=logps, num_loss_tokens=counts, token_logps=token_logps)


def supports_chunked_head(model: nn.Module) -> bool:
    """The chunked path needs logits == hidden @ W.T: a bias-free linear head, no logit soft-capping
    or scaling (Gemma 2, Cohere ...). Other models take the plain logits path."""
    head = model.get_output_embeddings()
    config = model.config
    return (
        isinstance(head, nn.Linear)
        and head.bias is None
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) in (None, 1, 1.0)
    )


class SequenceLogprobModel(nn.Module):
    """Wraps a Hugging Face causal LM so that forward returns per-sequence log-probs.

    DDP and FSDP wrap this module, so their hooks see one forward that covers the decoder and the
    LM head (which we call as a matmul on a subset of positions rather than through `lm_head`).
    """

    def __init__(self, causal_lm: nn.Module, chunk_size: int = DEFAULT_CHUNK_SIZE, use_chunked_head: bool = True,
                 compute_context: Callable[[], contextlib.AbstractContextManager] | None = None):
        super().__init__()
        self.causal_lm = causal_lm
        self.chunk_size = chunk_size
        self.use_chunked_head = use_chunked_head and supports_chunked_head(causal_lm)
        # The decoder runs inside this context (autocast in the mixed precisions); the LM head and
        # everything after it run outside, in float32.
        self.compute_context = compute_context or contextlib.nullcontext

    def forward(
        self,
        input_ids: Tensor,
        loss_tokens: LossTokens,
        attention_mask: Tensor | AttentionSpans | None = None,
        position_ids: Tensor | None = None,
    ) -> SequenceLogprobs:
        decoder_kwargs = {}
        if isinstance(attention_mask, AttentionSpans):
            # Blocks of attention instead of a dense mask (span_attention.py); the model's own mask
            # argument stays empty.
            use_span_attention(self.causal_lm)
            decoder_kwargs, attention_mask = {"attention_spans": attention_mask}, None
        if not self.use_chunked_head:
            with self.compute_context():
                logits = self.causal_lm(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                    **decoder_kwargs,
                ).logits
            flat_logits = logits.reshape(-1, logits.shape[-1])[loss_tokens.hidden_index]
            token_logps = naive_token_logprobs(flat_logits, loss_tokens.target_ids)
            return _reduce_to_sequences(token_logps, loss_tokens)
        with self.compute_context():
            hidden = self.causal_lm.get_decoder()(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                **decoder_kwargs,
            ).last_hidden_state
        selected = hidden.reshape(-1, hidden.shape[-1])[loss_tokens.hidden_index]
        # A float32 head: bf16 logits would add about a third to the per-token log-prob error
        # of the bf16 decoder (docs/training.md, "Precision"); the head only sees loss positions, so it is cheap.
        weight = self.causal_lm.get_output_embeddings().weight.float()
        token_logps = chunked_token_logprobs(selected.float(), weight, loss_tokens.target_ids, self.chunk_size)
        return _reduce_to_sequences(token_logps, loss_tokens)


def padded_loss_tokens(input_ids: Tensor, loss_weights: Tensor) -> LossTokens:
    """LossTokens for a right-padded [B, T] batch: row b is sequence b; the state at t-1 predicts t."""
    batch, length = input_ids.shape
    target_weights = loss_weights[:, 1:]
    rows, cols = torch.nonzero(target_weights, as_tuple=True)
    return LossTokens(
        hidden_index=rows * length + cols,
        target_ids=input_ids[rows, cols + 1],
        weights=target_weights[rows, cols].float(),
        sequence_index=rows,
        num_sequences=batch,
    )


def pad_batch(sequences, pad_token_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-pad sequences (objects with .tokens and .weights) into (input_ids, loss_weights, attention_mask)."""
    length = max(len(seq.tokens) for seq in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    loss_weights = torch.zeros((len(sequences), length), dtype=torch.float32)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq.tokens)
        input_ids[row, :n] = torch.tensor(seq.tokens, dtype=torch.long)
        loss_weights[row, :n] = torch.tensor(seq.weights, dtype=torch.float32)
        attention_mask[row, :n] = 1
    return input_ids, loss_weights, attention_mask


def sequence_logprobs(model: nn.Module, input_ids: Tensor, loss_weights: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Sum over t of loss_weights[b, t] * log p(input_ids[b, t] | input_ids[b, :t]), per row [B].

    The first token's weight is ignored (nothing predicts it). `model` is a HF causal LM or a
    SequenceLogprobModel.
    """
    if not isinstance(model, SequenceLogprobModel):
        model = SequenceLogprobModel(model)
    loss_tokens = padded_loss_tokens(input_ids, loss_weights)
    return model(input_ids, loss_tokens.to(input_ids.device), attention_mask=attention_mask).logps

