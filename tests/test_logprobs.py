"""The chunked log-prob path equals the textbook full-logits path, values and gradients."""

import torch
from helpers import naive_sequence_logprobs
from torch.testing import assert_close

from cookbook.training.logprobs import (
    chunked_token_logprobs,
    naive_token_logprobs,
    pad_batch,
    sequence_logprobs,
)


def test_chunked_token_logprobs_match_log_softmax_with_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    upstream = torch.randn(37, dtype=torch.float64)

    expected = naive_token_logprobs(hidden @ weight.T, targets)
    (expected.double() * upstream).sum().backward()
    expected_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    got = chunked_token_logprobs(hidden, weight, targets, chunk_size=8)  # several chunks and a ragged one
    (got.double() * upstream).sum().backward()
    # The chunked path computes softmax in float32 whatever the input dtype.
    assert_close(got, expected.float())
    assert_close(hidden.grad, expected_grads[0], rtol=1e-5, atol=1e-6)
    assert_close(weight.grad, expected_grads[1], rtol=1e-5, atol=1e-6)


def test_sequence_logprobs_on_a_padded_batch_match_the_naive_path(tiny_model):
    """logp(seq) = sum_t w_t log p(x_t | x_<t); padding and zero-weight tokens contribute nothing."""

    class Seq:
        def __init__(self, tokens, weights):
            self.tokens, self.weights = tokens, weights

    torch.manual_seed(1)
    seqs = [Seq(torch.randint(0, 5000, (n,)).tolist(), [0.0] * (n // 2) + [1.0] * (n - n // 2)) for n in (5, 11, 8)]
    input_ids, weights, mask = pad_batch(seqs, pad_token_id=2)
    expected = naive_sequence_logprobs(tiny_model, input_ids, weights, mask)
    got = sequence_logprobs(tiny_model, input_ids, weights, mask)
    assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # Row by row without padding gives the same numbers: padding is inert.
    for row, seq in enumerate(seqs):
        alone = naive_sequence_logprobs(tiny_model, torch.tensor([seq.tokens]), torch.tensor([seq.weights]))
        assert_close(got[row : row + 1], alone, rtol=1e-5, atol=1e-5)


def test_sequence_logprob_gradients_match_naive(tiny_model):
    torch.manual_seed(2)
    input_ids = torch.randint(0, 5000, (2, 9))
    weights = (torch.rand(2, 9) > 0.3).float()
    naive_sequence_logprobs(tiny_model, input_ids, weights).sum().backward()
    expected = {n: p.grad.clone() for n, p in tiny_model.named_parameters()}
    tiny_model.zero_grad()
    sequence_logprobs(tiny_model, input_ids, weights).sum().backward()
    for name, param in tiny_model.named_parameters():
        # float32 sums in a different order: compare relative to the gradient's scale.
        scale = expected[name].abs().max().item()
        assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
