"""The reward model's parts: the Bradley-Terry loss against a hand computation, the scored slot of
every layout, and the scores of `SequenceScoreModel` against transformers' own classifier forward."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from cookbook.datasets.tokenize import TokenizedPair, TokenizedSequence
from cookbook.preference.batching import collate_pairs
from cookbook.reward_model.batching import make_score_collate, score_slots, scored_index
from cookbook.reward_model.losses import bradley_terry_loss
from cookbook.reward_model.model import SequenceScoreModel, is_sequence_classifier, zero_new_head
from cookbook.reward_model.step import score_micro_batch
from cookbook.training.attention import attention_implementation

PAD = 0


def test_bradley_terry_matches_a_hand_computation():
    """loss_i = -log(1 / (1 + exp(-(c_i - r_i - m_i)))) + k * (c_i + r_i)^2, with k = center_coef.

    Pair 0: c=2, r=0.5, m=0:  -log sigma(1.5)  + 0.1 * 2.5^2
    Pair 1: c=-1, r=1, m=0.5: -log sigma(-2.5) + 0.1 * 0^2
    Pair 2: c=0, r=0, m=1:    -log sigma(-1)   + 0
    """
    chosen = torch.tensor([2.0, -1.0, 0.0])
    rejected = torch.tensor([0.5, 1.0, 0.0])
    margins = torch.tensor([0.0, 0.5, 1.0])

    def by_hand(c, r, m, k):
        return math.log(1 + math.exp(-(c - r - m))) + k * (c + r) ** 2

    expected = torch.tensor([by_hand(2, 0.5, 0, 0.1), by_hand(-1, 1, 0.5, 0.1), by_hand(0, 0, 1, 0.1)])
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected, margins, center_coef=0.1), expected)
    # No margin, no centering: -log sigma(c - r); equal scores give ln 2.
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected),
                               torch.tensor([by_hand(2, 0.5, 0, 0), by_hand(-1, 1, 0, 0), math.log(2)]))


def test_the_loss_is_float32_for_half_precision_scores():
    losses = bradley_terry_loss(torch.tensor([3.0], dtype=torch.bfloat16), torch.tensor([1.0], dtype=torch.bfloat16),
                                center_coef=0.01)
    assert losses.dtype == torch.float32
    torch.testing.assert_close(losses, torch.tensor([math.log(1 + math.exp(-2)) + 0.01 * 16]))


def test_gradient_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([0.3], requires_grad=True)
    rejected = torch.tensor([0.1], requires_grad=True)
    bradley_terry_loss(chosen, rejected).sum().backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()
    assert chosen.grad.item() == pytest.approx(-(1 - 1 / (1 + math.exp(-0.2))))


def test_the_scored_token_is_the_last_one_that_is_not_padding():
    assert scored_index([5, 6, 7], PAD) == 2
    assert scored_index([5, 6, PAD], PAD) == 1  # the pad token doubling as end of turn is skipped, as HF does
    assert scored_index([PAD, PAD], PAD) == 1


def _pair(prompt, chosen, rejected):
    def sequence(reply):
        return TokenizedSequence(prompt + reply, [0.0] * len(prompt) + [1.0] * len(reply))

    return TokenizedPair(sequence(chosen), sequence(rejected), len(prompt))


PAIRS = [_pair([11, 12, 13], [21, 22, 23, PAD, 24], [31, 32]),
         _pair([14, 15], [41, 42, PAD], [51, 52, 53, 54]),
         _pair([16], [61, 62], [71, 72, 73])]


@pytest.mark.parametrize("layout", ["padded", "packed", "prefix_shared"])
def test_score_slots_point_at_each_sequences_scored_token(layout):
    batch = collate_pairs(PAIRS, [0, 1, 2], PAD, layout=layout)
    slots = score_slots(PAIRS, batch, layout, PAD)
    flat = batch.input_ids.reshape(-1)
    assert flat[slots].tolist() == [24, 42, 62, 32, 54, 73]


@pytest.fixture(scope="module")
def classifier():
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD, num_labels=1)
    torch.manual_seed(0)
    return LlamaForSequenceClassification(config).eval()


def _hf_scores(classifier, sequences):
    """transformers' own forward, one unpadded sequence at a time."""
    with torch.no_grad():
        return torch.stack([classifier(input_ids=torch.tensor([seq])).logits[0, 0] for seq in sequences])


@pytest.mark.parametrize("layout", ["padded", "packed", "prefix_shared"])
def test_scores_in_every_layout_equal_transformers_forward(classifier, layout):
    plan = make_score_collate(layout, PAD, classifier)
    batch = plan.collate(PAIRS, [0, 1, 2])
    with torch.no_grad():
        scores = SequenceScoreModel(classifier)(batch.pairs.input_ids, batch.score_slots,
                                                attention_mask=batch.pairs.attention_mask,
                                                position_ids=batch.pairs.position_ids)
    sequences = [p.chosen.tokens for p in PAIRS] + [p.rejected.tokens for p in PAIRS]
    torch.testing.assert_close(scores, _hf_scores(classifier, sequences), rtol=1e-5, atol=1e-5)
    assert attention_implementation(classifier) == "sdpa"


def test_micro_batch_sums_and_a_zero_head_start_at_ln2(classifier):
    fresh = LlamaForSequenceClassification(classifier.config)
    fresh.config.architectures = ["LlamaForCausalLM"]  # as loaded from a causal LM's checkpoint
    assert zero_new_head(fresh) and fresh.score.weight.abs().sum() == 0
    batch = make_score_collate("packed", PAD, fresh).collate(PAIRS, [0, 1, 2])
    output = score_micro_batch(SequenceScoreModel(fresh), batch, center_coef=0.01)
    assert output.metric_sums["loss"] == pytest.approx(3 * math.log(2))
    assert output.metric_sums["accuracy"] == pytest.approx(1.5)  # ties count half
    assert output.metric_sums["num_pairs"] == 3
    fresh.config.architectures = ["LlamaForSequenceClassification"]
    assert is_sequence_classifier(fresh.config) and not zero_new_head(fresh)
