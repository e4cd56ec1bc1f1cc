"""Packed and prefix-shared layouts give the padded layout's log-probs, losses and gradients.

The invariant: for every pair, sum_t w_t log p(y_t | y_<t) is the same whichever way the pair's
sequences are laid out in rows, because each token sees exactly the tokens it sees in its own row, at
the same position ids. The padded path (batching.collate_padded) is the reference.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import pair_token_count

from cookbook.datasets.tokenize import TokenizedPair as Pair
from cookbook.datasets.tokenize import TokenizedSequence as Sequence
from cookbook.preference.batching import (
    SegmentedPairBatch,
    collate_packed,
    collate_padded,
    collate_pairs,
    collate_prefix_shared,
)
from cookbook.preference.step import LossSettings, pair_logps, preference_forward
from cookbook.training.attention import (
    NO_PREFIX,
    attention_implementation,
    segment_attention_mask,
    segment_block_mask,
)
from cookbook.training.logprobs import SequenceLogprobModel
from cookbook.training.packing import length_grouped_order, pack_rows

TOLERANCE = {"rtol": 1e-5, "atol": 1e-4}  # float32; logps are sums over up to ~100 tokens




def make_pair(generator, prompt: int, chosen: int, rejected: int, vocab: int = 2000, prompt_weight: float = 0.0) -> Pair:
    prompt_tokens = torch.randint(0, vocab, (prompt,), generator=generator).tolist()

    def sequence(n: int) -> Sequence:
        completion = torch.randint(0, vocab, (n,), generator=generator).tolist()
        return Sequence(prompt_tokens + completion, [prompt_weight] * prompt + [1.0] * n)

    return Pair(sequence(chosen), sequence(rejected), prompt)


@pytest.fixture
def mixed_pairs():
    """Mixed lengths: a pair far longer than the rest, prompts longer than both completions, a
    one-token prompt, and a one-token completion."""
    generator = torch.Generator().manual_seed(0)
    return [
        make_pair(generator, prompt=6, chosen=9, rejected=4),
        make_pair(generator, prompt=70, chosen=120, rejected=95),  # the long one
        make_pair(generator, prompt=30, chosen=3, rejected=5),  # prompt longer than its completions
        make_pair(generator, prompt=1, chosen=12, rejected=1),
        make_pair(generator, prompt=12, chosen=7, rejected=7, prompt_weight=0.5),  # weighted prompt tokens
    ]


def padded_logps(model, pairs):
    with torch.no_grad():
        return pair_logps(model, collate_padded(pairs, range(len(pairs)), pad_token_id=0))


def assert_same_logps(actual, expected):
    torch.testing.assert_close(actual.chosen, expected.chosen, **TOLERANCE)
    torch.testing.assert_close(actual.rejected, expected.rejected, **TOLERANCE)
    torch.testing.assert_close(actual.chosen_lengths, expected.chosen_lengths)
    torch.testing.assert_close(actual.rejected_lengths, expected.rejected_lengths)


@pytest.mark.parametrize("max_row_tokens", [None, 300, 1])
def test_packed_logps_match_padded(tiny_model, mixed_pairs, max_row_tokens):
    model = SequenceLogprobModel(tiny_model)
    batch = collate_packed(mixed_pairs, range(5), pad_token_id=0, max_row_tokens=max_row_tokens)
    assert batch.attention_mask is None  # the model derives per-sequence attention from position_ids
    assert batch.num_real_tokens == sum(len(p.chosen.tokens) + len(p.rejected.tokens) for p in mixed_pairs)
    with torch.no_grad():
        assert_same_logps(pair_logps(model, batch), padded_logps(model, mixed_pairs))


@pytest.mark.parametrize(("max_row_tokens", "pad_to_multiple_of"), [(None, 1), (260, 64)])
def test_prefix_shared_logps_match_padded(tiny_model, mixed_pairs, max_row_tokens, pad_to_multiple_of):
    model = SequenceLogprobModel(tiny_model)
    batch = collate_prefix_shared(
        mixed_pairs, range(5), pad_token_id=0, max_row_tokens=max_row_tokens, pad_to_multiple_of=pad_to_multiple_of
    )
    prompts = sum(p.prompt_length for p in mixed_pairs)
    assert (batch.input_ids != 0).sum() <= batch.num_real_tokens - prompts  # each prompt stored once
    assert batch.input_ids.shape[1] % pad_to_multiple_of == 0
    with torch.no_grad():
        assert_same_logps(pair_logps(model, batch), padded_logps(model, mixed_pairs))


def test_prefix_shared_eager_mask_matches_padded(tiny_model, mixed_pairs):
    expected = padded_logps(SequenceLogprobModel(tiny_model), mixed_pairs)
    tiny_model.set_attn_implementation("eager")
    model = SequenceLogprobModel(tiny_model)
    assert attention_implementation(model) == "eager"
    batch = collate_prefix_shared(mixed_pairs, range(5), pad_token_id=0, attention="eager")
    assert batch.attention_mask.dtype == torch.float32
    with torch.no_grad():
        assert_same_logps(pair_logps(model, batch), expected)


def test_moving_a_prefix_shared_batch_rebuilds_its_mask(tiny_model, mixed_pairs):
    model = SequenceLogprobModel(tiny_model)
    batch = collate_prefix_shared(mixed_pairs, range(5), pad_token_id=0)
    moved = replace(batch, attention_mask=None).to(torch.device("cpu"))
    assert isinstance(moved, SegmentedPairBatch)
    assert moved.attention_mask == batch.attention_mask  # sdpa: AttentionSpans, rebuilt from the segment ids
    with torch.no_grad():
        assert_same_logps(pair_logps(model, moved), padded_logps(model, mixed_pairs))


@pytest.mark.parametrize("layout", ["packed", "prefix_shared"])
def test_training_step_matches_padded(tokenizer, mixed_pairs, layout):
    """loss = sum_p dpo_loss_p / P; the same loss and the same gradient for every parameter."""
    from cookbook.models import make_tiny_model

    generator = torch.Generator().manual_seed(1)
    reference = (-50 * torch.rand(5, generator=generator), -50 * torch.rand(5, generator=generator))
    settings = LossSettings(loss_type="dpo", beta=0.1)
    results = {}
    for name in ("padded", layout):
        policy = SequenceLogprobModel(make_tiny_model(tokenizer)).train()
        batch = collate_pairs(mixed_pairs, range(5), pad_token_id=0, layout=name, attention="sdpa")
        result = preference_forward(policy, batch, settings, reference)
        (result.loss_sum / result.num_pairs).backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        results[name] = (result, grads)
    (padded, padded_grads), (other, other_grads) = results["padded"], results[layout]
    torch.testing.assert_close(other.loss_sum, padded.loss_sum, rtol=1e-5, atol=1e-6)
    assert other.num_loss_tokens == padded.num_loss_tokens
    assert other.num_real_tokens == padded.num_real_tokens
    for key, value in padded.metric_sums.items():
        assert other.metric_sums[key] == pytest.approx(value, rel=1e-5, abs=1e-4), key
    assert padded_grads.keys() == other_grads.keys() and padded_grads
    for name, grad in padded_grads.items():
        torch.testing.assert_close(other_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_first_rejected_token_is_predicted_by_the_prompts_last_state():
    generator = torch.Generator().manual_seed(2)
    pairs = [make_pair(generator, 4, 3, 2), make_pair(generator, 5, 2, 3)]
    batch = collate_prefix_shared(pairs, [10, 11], pad_token_id=0)
    loss = batch.loss_tokens
    # Pair 1 starts after pair 0's 4 + 3 + 2 slots; its rejected sequence is sequence 2 + 1 = 3.
    rejected_slots = loss.hidden_index[loss.sequence_index == 3].tolist()
    chosen_slots = loss.hidden_index[loss.sequence_index == 1].tolist()
    prompt_last = 9 + 5 - 1
    assert chosen_slots == [prompt_last, prompt_last + 1]
    assert rejected_slots == [prompt_last, prompt_last + 3, prompt_last + 4]
    assert loss.target_ids[loss.sequence_index == 3].tolist() == pairs[1].rejected.tokens[5:]
    # Both completions continue the prompt's positions.
    assert batch.position_ids[0, 9:19].tolist() == [0, 1, 2, 3, 4, 5, 6, 5, 6, 7]
    assert batch.pair_ids.tolist() == [10, 11]


def test_prefix_shared_mask_hides_the_other_completion():
    segment_ids = torch.tensor([[0, 0, 1, 1, 2, 3]])  # prompt, chosen, rejected, padding
    prefix_ids = torch.tensor([[NO_PREFIX, NO_PREFIX, 0, 0, 0, NO_PREFIX]])
    mask = segment_attention_mask(segment_ids, prefix_ids)[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # rejected: the prompt and itself, not the chosen completion
        [0, 0, 0, 0, 0, 1],  # padding sees only itself, so no softmax row is empty
    ]


def test_block_mask_agrees_with_dense_mask(mixed_pairs):
    from torch.nn.attention.flex_attention import create_mask

    batch = collate_prefix_shared(mixed_pairs, range(5), pad_token_id=0, max_row_tokens=260, pad_to_multiple_of=128)
    block_mask = segment_block_mask(batch.segment_ids, batch.prefix_segment_ids)
    rows, length = batch.input_ids.shape
    dense_from_flex = create_mask(block_mask.mask_mod, rows, None, length, length, device="cpu")
    assert torch.equal(dense_from_flex, segment_attention_mask(batch.segment_ids, batch.prefix_segment_ids))


def test_prefix_sharing_rejects_a_pair_whose_prompts_differ():
    generator = torch.Generator().manual_seed(3)
    good = make_pair(generator, 4, 3, 3)
    bad = replace(good, rejected=Sequence([7] + good.rejected.tokens[1:], good.rejected.weights))
    with pytest.raises(ValueError, match="pair 7: chosen and rejected differ"):
        collate_prefix_shared([good, bad], [6, 7], pad_token_id=0)
    with pytest.raises(ValueError, match="pair 0: prompt_length=9 exceeds the chosen length 7"):
        collate_prefix_shared([replace(good, prompt_length=9)], [0], pad_token_id=0)
    with pytest.raises(ValueError, match="attention one of sdpa, eager, flex_attention, got 'flash_attention_2'"):
        collate_prefix_shared([good], [0], pad_token_id=0, attention="flash_attention_2")
    with pytest.raises(ValueError, match="layout='ragged' is not one of padded, packed, prefix_shared"):
        collate_pairs([good], [0], pad_token_id=0, layout="ragged")
    with pytest.raises(ValueError, match="empty list of pairs"):
        collate_packed([], [], pad_token_id=0)


def test_pack_rows_fills_rows_within_budget_deterministically():
    sizes = [50, 10, 40, 30, 200, 20, 60]
    rows = pack_rows(sizes, max_row_tokens=100)
    assert sorted(i for row in rows for i in row) == list(range(len(sizes)))
    assert [4] in rows  # larger than the budget: a row of its own
    assert all(sum(sizes[i] for i in row) <= 100 for row in rows if row != [4])
    assert len(rows) == 1 + -(-(sum(sizes) - 200) // 100)  # first-fit-decreasing is tight here
    assert pack_rows(sizes, 100) == rows
    assert pack_rows(sizes, None) == [list(range(len(sizes)))]


def test_length_grouped_order_groups_similar_lengths():
    generator = torch.Generator().manual_seed(4)
    lengths = torch.randint(10, 1000, (103,), generator=generator).tolist()
    order = torch.randperm(103, generator=generator).tolist()
    grouped = length_grouped_order(order, lengths, batch_size=4, seed=5, batches_per_group=8)
    assert sorted(grouped) == list(range(103))
    assert grouped == length_grouped_order(order, lengths, batch_size=4, seed=5, batches_per_group=8)
    assert grouped != length_grouped_order(order, lengths, batch_size=4, seed=6, batches_per_group=8)
    # 103 = 25 * 4 + 3: the partial batch (the 3 shortest of the last window, order[96:]) is last.
    assert set(grouped[-3:]) == set(sorted(order[96:], key=lambda i: -lengths[i])[4:])

    def padding_waste(sequence):
        batches = [sequence[i : i + 4] for i in range(0, 100, 4)]
        return sum(4 * max(lengths[j] for j in b) - sum(lengths[j] for j in b) for b in batches)

    assert padding_waste(grouped) < padding_waste(order) / 3
    with pytest.raises(ValueError, match="batch_size and batches_per_group must be >= 1"):
        length_grouped_order(order, lengths, batch_size=0, seed=0)


def test_pair_token_count_counts_the_prompt_once_when_shared():
    pair = make_pair(torch.Generator().manual_seed(6), prompt=10, chosen=4, rejected=6)
    assert pair_token_count(pair, "packed") == 30
    assert pair_token_count(pair, "prefix_shared") == 20


def test_flex_attention_on_cpu_matches_padded(tiny_model, mixed_pairs):
    """The BlockMask path end to end on the CPU (torch.compile of flex attention: about 20 s)."""
    expected = padded_logps(SequenceLogprobModel(tiny_model), mixed_pairs)
    tiny_model.set_attn_implementation("flex_attention")
    model = SequenceLogprobModel(tiny_model)
    batch = collate_pairs(mixed_pairs, range(5), pad_token_id=0, layout="prefix_shared", attention="flex_attention")
    with torch.no_grad():
        assert_same_logps(pair_logps(model, batch), expected)


def dense_flex_attention(query, key, value, score_mod=None, block_mask=None, enable_gqa=False, scale=None, **_):
    """Flex attention by its definition: softmax over the scores where the BlockMask's mask_mod
    allows, evaluated densely. torch's CPU flex kernel has no backward, so the gradient test below
    runs this in its place; the tiny Llama passes no score terms (score_mod is the identity)."""
    from torch.nn.attention.flex_attention import create_mask

    rows, _, length, _ = query.shape
    allowed = create_mask(block_mask.mask_mod, rows, None, length, key.shape[-2], device=query.device)
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=allowed, scale=scale, enable_gqa=enable_gqa
    )


def test_flex_attention_on_cpu_gradients_match_padded(tokenizer, mixed_pairs, monkeypatch):
    """The GPU default (prefix-shared rows padded to flex blocks, a BlockMask, transformers' flex
    path) with a backward on the CPU: the same SimPO loss and the same gradient for every
    parameter as padded rows under sdpa. Only torch's kernel is swapped for its dense definition
    (the test above checks the real kernel's forward against the padded rows)."""
    from transformers.integrations import flex_attention as hf_flex

    from cookbook.models import make_tiny_model

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", dense_flex_attention)
    settings = LossSettings(loss_type="simpo", beta=2.0)
    results = {}
    for name, attention in (("padded", "sdpa"), ("prefix_shared", "flex_attention")):
        causal_lm = make_tiny_model(tokenizer).train()
        causal_lm.set_attn_implementation(attention)
        policy = SequenceLogprobModel(causal_lm)
        batch = collate_pairs(mixed_pairs, range(5), pad_token_id=0, layout=name, attention=attention)
        if attention == "flex_attention":
            assert type(batch.attention_mask).__name__ == "BlockMask" and batch.input_ids.shape[1] % 128 == 0
        result = preference_forward(policy, batch, settings, None)
        result.loss_sum.backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        results[name] = (result.loss_sum.detach(), grads)
    (padded_loss, padded_grads), (flex_loss, flex_grads) = results["padded"], results["prefix_shared"]
    torch.testing.assert_close(flex_loss, padded_loss, rtol=1e-5, atol=1e-5)
    assert flex_grads.keys() == padded_grads.keys() and padded_grads
    for name, grad in padded_grads.items():
        torch.testing.assert_close(flex_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["packed", "prefix_shared"])
@pytest.mark.parametrize("attention", ["sdpa", "flex_attention"])
def test_gpu_layouts_match_padded_with_gradients(tokenizer, mixed_pairs, layout, attention):
    """On CUDA in float32: forward log-probs and one backward agree with the padded sdpa layout."""
    from cookbook.models import make_tiny_model

    device = torch.device("cuda")
    settings = LossSettings(loss_type="simpo", beta=2.0)
    grads = {}
    for name, attn in (("padded", "sdpa"), (layout, attention)):
        causal_lm = make_tiny_model(tokenizer).to(device).train()
        causal_lm.set_attn_implementation(attn)
        policy = SequenceLogprobModel(causal_lm)
        batch = collate_pairs(mixed_pairs, range(5), pad_token_id=0, layout=name, attention=attn).to(device)
        result = preference_forward(policy, batch, settings, None)
        result.loss_sum.backward()
        grads[name] = (result.loss_sum.detach(), [p.grad.clone() for p in policy.parameters() if p.grad is not None])
    torch.testing.assert_close(grads[layout][0], grads["padded"][0], rtol=1e-4, atol=1e-4)
    for actual, expected in zip(grads[layout][1], grads["padded"][1]):
        torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-5)
