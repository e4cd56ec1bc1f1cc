"""Supervised batches, the NLL step and held-out eval, against hand computations on a tiny model.

The invariants: a sequence's NLL, sum_t w_t * -log p(y_t | y_<t), is the same whether it sits in its
own padded row or packed beside others (each token sees only its own sequence, at the same
positions), and the step loss is the mean over the trained tokens of the whole global batch, so
it does not depend on how the batch is cut into micro-batches.
"""

from __future__ import annotations

import math

import pytest
import torch

from cookbook.datasets.tokenize import SupervisedSequence
from cookbook.supervised.batching import (
    collate_packed,
    collate_padded,
    collate_sequences,
    make_supervised_collate,
)
from cookbook.supervised.step import evaluate_supervised, sft_forward, step_metrics, trained_token_count
from cookbook.training.distributed import DistInfo
from cookbook.training.logprobs import SequenceLogprobModel

SINGLE_PROCESS = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def make_sequence(generator, length: int, trained_from: int, vocab: int = 2000) -> SupervisedSequence:
    tokens = torch.randint(0, vocab, (length,), generator=generator).tolist()
    return SupervisedSequence(tokens, [0.0] * trained_from + [1.0] * (length - trained_from))


@pytest.fixture
def sequences():
    """Mixed lengths; one with two trained replies and a half-weighted token; one a single trained token."""
    generator = torch.Generator().manual_seed(0)
    gapped = make_sequence(generator, 30, 0)
    gapped = SupervisedSequence(gapped.tokens, [0.0] * 5 + [1.0] * 6 + [0.0] * 9 + [0.5] + [1.0] * 9)
    return [
        make_sequence(generator, 12, 8),
        make_sequence(generator, 90, 40),
        gapped,
        make_sequence(generator, 7, 6),
        make_sequence(generator, 25, 10),
    ]


def hand_nll(causal_lm, sequence: SupervisedSequence) -> torch.Tensor:
    """sum_t w_t * -log softmax(logits[t-1])[y_t], from full logits of the sequence alone."""
    tokens = torch.tensor([sequence.tokens])
    logits = causal_lm(input_ids=tokens).logits[0, :-1].float()
    token_logps = torch.log_softmax(logits, dim=-1).gather(1, tokens[0, 1:, None]).squeeze(1)
    return -(token_logps * torch.tensor(sequence.weights[1:])).sum()


def test_packed_layout_by_hand():
    first = SupervisedSequence([10, 11, 12], [0.0, 1.0, 1.0])
    second = SupervisedSequence([20, 21], [0.0, 1.0])
    batch = collate_packed([first, second], [7, 9], pad_token_id=0)
    assert batch.input_ids.tolist() == [[10, 11, 12, 20, 21]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert batch.attention_mask is None
    # The state at slot t-1 predicts token t; token 0 of each sequence is never a target.
    assert batch.loss_tokens.hidden_index.tolist() == [0, 1, 3]
    assert batch.loss_tokens.target_ids.tolist() == [11, 12, 21]
    assert batch.loss_tokens.sequence_index.tolist() == [0, 0, 1]
    assert batch.example_ids.tolist() == [7, 9] and batch.num_sequences == 2
    assert (batch.num_real_tokens, batch.num_slots) == (5, 5)

    rows = collate_packed([first, second], [7, 9], pad_token_id=0, max_row_tokens=3)
    assert rows.input_ids.tolist() == [[10, 11, 12], [20, 21, 0]]
    assert rows.loss_tokens.hidden_index.tolist() == [0, 1, 3]
    assert (rows.num_real_tokens, rows.num_slots) == (5, 6)

    padded = collate_padded([first, second], [7, 9], pad_token_id=0)
    assert padded.input_ids.tolist() == [[10, 11, 12], [20, 21, 0]]
    assert padded.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert padded.loss_tokens.hidden_index.tolist() == [0, 1, 3]


@pytest.mark.parametrize("max_row_tokens", [None, 100])
def test_packed_matches_padded_nll_and_gradients(tokenizer, sequences, max_row_tokens):
    from cookbook.models import make_tiny_model

    ids = list(range(len(sequences)))
    denominator = trained_token_count(sequences, ids)
    results = {}
    for layout in ("padded", "packed"):
        model = SequenceLogprobModel(make_tiny_model(tokenizer)).train()
        batch = collate_sequences(sequences, ids, pad_token_id=0, layout=layout, max_row_tokens=max_row_tokens)
        out = model(batch.input_ids, batch.loss_tokens, attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids)
        result = sft_forward(model, batch)
        (result.nll_sum / denominator).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[layout] = (out.logps.detach(), result, grads)
    (padded_logps, padded, padded_grads), (packed_logps, packed, packed_grads) = results["padded"], results["packed"]
    torch.testing.assert_close(packed_logps, padded_logps, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(packed.nll_sum, padded.nll_sum, rtol=1e-5, atol=1e-4)
    assert packed.num_trained_tokens == padded.num_trained_tokens == denominator
    assert packed.metric_sums["num_slots"] < padded.metric_sums["num_slots"]
    assert padded_grads.keys() == packed_grads.keys() and padded_grads
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@torch.no_grad()
def test_packed_sequences_do_not_see_each_other(tiny_model, sequences):
    model = SequenceLogprobModel(tiny_model)
    first, second = sequences[0], sequences[4]
    changed = SupervisedSequence([(t + 1) % 2000 for t in second.tokens], second.weights)

    def logps(batch_sequences):
        batch = collate_packed(batch_sequences, range(len(batch_sequences)), pad_token_id=0)
        return model(batch.input_ids, batch.loss_tokens, position_ids=batch.position_ids).logps

    alone = logps([first])
    for neighbour in (second, changed):
        torch.testing.assert_close(logps([neighbour, first])[1], alone[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logps([second])[0], logps([changed])[0])


def test_sft_forward_by_hand(tiny_model, sequences):
    model = SequenceLogprobModel(tiny_model)
    batch = collate_packed(sequences, range(len(sequences)), pad_token_id=0)
    result = sft_forward(model, batch)
    with torch.no_grad():
        per_sequence = torch.stack([hand_nll(tiny_model, s) for s in sequences])
    trained = [sum(s.weights[1:]) for s in sequences]
    torch.testing.assert_close(result.nll_sum.detach(), per_sequence.sum(), rtol=1e-5, atol=1e-4)
    assert result.nll_sum.requires_grad
    assert result.num_trained_tokens == sum(trained) and result.num_sequences == len(sequences)
    sums = result.metric_sums
    assert sums["loss"] == pytest.approx(per_sequence.sum().item(), rel=1e-5)
    assert sums["sequence_nll"] == pytest.approx(sum(n / t for n, t in zip(per_sequence.tolist(), trained)), rel=1e-5)
    assert sums["num_tokens"] == sum(len(s) for s in sequences) == sums["num_slots"]
    assert sums["num_trained_tokens"] == sum(trained)


def test_step_loss_is_the_token_mean_at_any_micro_batch_size(tokenizer, sequences):
    """loss = sum_t w_t nll_t / sum_t w_t over the global batch, not the mean of per-sequence means;
    accumulating micro-batches each scaled by the global denominator gives the same gradient."""
    from cookbook.models import make_tiny_model

    ids = list(range(len(sequences)))
    denominator = trained_token_count(sequences, ids)
    grads, totals = [], []
    for micro_batches in ([ids], [ids[:2], ids[2:]], [[i] for i in ids]):
        model = SequenceLogprobModel(make_tiny_model(tokenizer)).train()
        sums: dict[str, float] = {}
        for micro in micro_batches:
            result = sft_forward(model, collate_packed([sequences[i] for i in micro], micro, pad_token_id=0))
            (result.nll_sum / denominator).backward()
            for key, value in result.metric_sums.items():
                sums[key] = sums.get(key, 0.0) + value
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        totals.append(sums)
    for other in grads[1:]:
        for name, grad in grads[0].items():
            torch.testing.assert_close(other[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():
        per_sequence = [hand_nll(make_tiny_model(tokenizer), s).item() for s in sequences]
    token_mean = sum(per_sequence) / denominator
    metrics = step_metrics(totals[0], denominator)
    assert metrics["loss"] == metrics["nll"] == pytest.approx(token_mean, rel=1e-5)
    sequence_mean = sum(n / sum(s.weights[1:]) for n, s in zip(per_sequence, sequences)) / len(sequences)
    assert metrics["sequence_nll"] == pytest.approx(sequence_mean, rel=1e-5)
    assert abs(token_mean - sequence_mean) > 1e-3  # the two reductions differ on these sequences
    for other in totals[1:]:
        assert step_metrics(other, denominator)["loss"] == pytest.approx(metrics["loss"], rel=1e-5)


def test_step_metrics_by_hand():
    sums = {"loss": 30.0, "sequence_nll": 5.0, "num_trained_tokens": 12.0, "num_sequences": 4.0,
            "num_tokens": 90.0, "num_slots": 120.0}
    assert step_metrics(sums, 12.0) == {
        "loss": 2.5, "nll": 2.5, "sequence_nll": 1.25, "num_sequences": 4, "num_trained_tokens": 12,
    }


def test_task_for_the_shared_loop(tiny_model, sequences):
    from cookbook.datasets.load import SupervisedData
    from cookbook.datasets.summary import SupervisedDataSummary
    from cookbook.supervised.train_sft import SupervisedTask

    model = SequenceLogprobModel(tiny_model)
    collate = make_supervised_collate("packed", 0, model).collate
    summary = SupervisedDataSummary("hand", {"train": 5}, 4, 1, {})
    task = SupervisedTask(SupervisedData(sequences[:4], sequences[4:], summary), collate, 2, SINGLE_PROCESS)
    assert task.loss_denominator([1, 3]) == sum(sequences[1].weights[1:]) + sum(sequences[3].weights[1:])
    output = task.forward(model, [1, 3])
    with torch.no_grad():
        hand = hand_nll(tiny_model, sequences[1]) + hand_nll(tiny_model, sequences[3])
    torch.testing.assert_close(output.loss_sum.detach(), hand, rtol=1e-5, atol=1e-4)
    assert output.metric_sums["loss"] == pytest.approx(hand.item(), rel=1e-5)
    assert output.metric_sums["num_tokens"] == len(sequences[1]) + len(sequences[3])
    assert task.step_metrics(output.metric_sums, task.loss_denominator([1, 3]))["loss"] == pytest.approx(
        hand.item() / task.loss_denominator([1, 3]), rel=1e-5)
    assert task.evaluate(model).keys() == {"test/nll", "test/ppl", "test/num_trained_tokens"}
    no_test = SupervisedTask(SupervisedData(sequences, [], summary), collate, 2, SINGLE_PROCESS)
    assert no_test.evaluate(model) == {}


def test_evaluate_is_the_token_mean_at_any_micro_batch_size(tiny_model, sequences):
    model = SequenceLogprobModel(tiny_model).train()
    collate = make_supervised_collate("packed", 0, model).collate
    with torch.no_grad():
        hand = sum(hand_nll(tiny_model, s).item() for s in sequences) / trained_token_count(sequences, range(5))
    for micro_batch_size in (1, 2, 8):
        metrics = evaluate_supervised(model, sequences, collate, micro_batch_size, SINGLE_PROCESS)
        assert metrics["test/nll"] == pytest.approx(hand, rel=1e-5)
        assert metrics["test/ppl"] == pytest.approx(math.exp(hand), rel=1e-5)
        assert metrics["test/num_trained_tokens"] == trained_token_count(sequences, range(5))
    assert model.training  # restored after eval


def test_collate_plan_checks_layout_and_attention(tiny_model):
    model = SequenceLogprobModel(tiny_model)
    assert make_supervised_collate("packed", 0, model).name == "packed"
    assert make_supervised_collate("padded", 0, model).name == "padded"
    capped = make_supervised_collate("packed", 0, model, max_row_tokens=3).collate
    rows = capped([SupervisedSequence([1, 2, 3], [0, 1, 1]), SupervisedSequence([4, 5], [0, 1])], [0, 1])
    assert rows.input_ids.tolist() == [[1, 2, 3], [4, 5, 0]]
    with pytest.raises(ValueError, match="layout='auto' is not one of packed, padded"):
        make_supervised_collate("auto", 0, model)
    tiny_model.config._attn_implementation = "my_kernel"
    with pytest.raises(ValueError, match="the model uses 'my_kernel': use layout=padded"):
        make_supervised_collate("packed", 0, model)
    assert make_supervised_collate("padded", 0, model).name == "padded"
