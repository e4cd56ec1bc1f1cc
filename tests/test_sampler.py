"""cookbook.sampling on tiny random-init models: greedy decoding matches transformers' `generate`
token for token, stops end a row where they should, sampling is seeded, the filters keep what they
promise, and the model comes back in the mode it was handed over."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from cookbook.models import make_tiny_model
from cookbook.sampling import SamplingSettings, padding_token_id, sample
from cookbook.sampling.decode import left_pad
from cookbook.sampling.token_choice import draw, filter_top_k, filter_top_p, sampling_probs

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [10, 11, 12], [40, 41, 42, 43, 44], [7, 7, 8]]


@pytest.fixture
def model(tokenizer):
    """A tiny model with weights large enough that greedy replies vary from token to token (the
    default init gives near-uniform logits and a reply of one repeated token)."""
    model = make_tiny_model(tokenizer)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.5, generator=generator)
    return model


def hf_greedy(model, prompts, max_new_tokens, pad_token_id):
    from transformers import GenerationConfig

    input_ids, attention_mask = left_pad(prompts, pad_token_id)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id,
                              eos_token_id=None)
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    return output[:, input_ids.shape[1] :].tolist()


def tokens_of(completions):
    return [completion.tokens for completion in completions]


def greedy(model, prompts, pad, max_new_tokens=12, **kwargs):
    return sample(model, prompts, SamplingSettings(max_new_tokens), [], pad, **kwargs)


def test_greedy_matches_transformers_generate_and_each_prompt_alone(model, tokenizer):
    pad = tokenizer.pad_token_id
    expected = hf_greedy(model, PROMPTS, 12, pad)
    assert len({tuple(tokens) for tokens in expected}) == len(PROMPTS)  # the rows really differ
    completions = greedy(model, PROMPTS, pad)
    assert tokens_of(completions) == expected
    assert not any(completion.stopped for completion in completions)
    assert [greedy(model, [prompt], pad)[0].tokens for prompt in PROMPTS] == expected
    # Batches of 2 of the length-sorted prompts, results back in input order.
    assert tokens_of(greedy(model, PROMPTS, pad, batch_size=2)) == expected


def test_a_stop_token_ends_its_row_and_is_kept_while_the_others_go_on(model, tokenizer):
    pad = tokenizer.pad_token_id
    free = hf_greedy(model, PROMPTS, 12, pad)
    stop = free[1][3]
    assert stop not in free[1][:3]
    completions = sample(model, PROMPTS, SamplingSettings(12), [stop], pad)
    assert completions[1].tokens == free[1][:4] and completions[1].stopped
    for row in (0, 2, 3):  # the rows after the first one left the batch (the cache was compacted)
        cut = free[row].index(stop) + 1 if stop in free[row] else 12
        assert completions[row].tokens == free[row][:cut]
        assert completions[row].stopped == (stop in free[row])


def test_max_new_tokens_ends_a_row_without_stopping_it(model, tokenizer):
    completions = sample(model, PROMPTS, SamplingSettings(max_new_tokens=1), [], tokenizer.pad_token_id)
    assert [len(completion.tokens) for completion in completions] == [1] * len(PROMPTS)
    assert not any(completion.stopped for completion in completions)


def test_a_stop_string_ends_the_row_at_the_token_that_completes_it(model, tokenizer):
    pad = tokenizer.pad_token_id
    free = hf_greedy(model, PROMPTS, 12, pad)[0]
    stop_string = tokenizer.decode(free[4:5])
    assert stop_string.strip() and stop_string not in tokenizer.decode(free[:4])
    completion = sample(model, PROMPTS[:1], SamplingSettings(12), [], pad, stop_strings=[stop_string],
                        tokenizer=tokenizer)[0]
    assert completion.tokens == free[:5] and completion.stopped
    with pytest.raises(ValueError, match="need the tokenizer"):
        sample(model, PROMPTS[:1], SamplingSettings(12), [], pad, stop_strings=[stop_string])


def test_sampling_is_reproducible_with_a_seed_and_differs_with_another(model, tokenizer):
    settings = SamplingSettings(12, temperature=1.5)
    pad = tokenizer.pad_token_id
    # float64: a batch of one and a batch of four round their matmuls differently, and in float32
    # that can flip a draw that falls next to a boundary between two tokens' probabilities.
    model = model.double()

    def run(seed, prompts=PROMPTS, **kwargs):
        return tokens_of(sample(model, prompts, settings, [], pad, generator=torch.Generator().manual_seed(seed),
                                **kwargs))

    first = run(0)
    assert first == run(0)
    assert first != run(1)
    assert first != hf_greedy(model, PROMPTS, 12, pad)
    # A row's draws are its own: the same prompt at the same index samples the same tokens in a
    # batch of one or beside other prompts.
    assert run(0, batch_size=1) == first
    assert run(0, prompts=PROMPTS[:1] + [[99, 98]])[0] == first[0]


def test_top_k_1_is_greedy(model, tokenizer):
    pad = tokenizer.pad_token_id
    completions = sample(model, PROMPTS, SamplingSettings(12, temperature=2.0, top_k=1), [], pad,
                         generator=torch.Generator().manual_seed(0))
    assert tokens_of(completions) == hf_greedy(model, PROMPTS, 12, pad)


def test_top_p_keeps_the_smallest_set_reaching_p():
    """Probabilities 0.5, 0.3, 0.15, 0.05 (scattered over the vocabulary): the nucleus of p is the
    fewest most likely tokens whose mass is >= p; the most likely token is always kept."""
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()

    def kept(top_p):
        return torch.isfinite(filter_top_p(logits, top_p))[0].tolist()

    assert kept(0.0) == [False, True, False, False]
    assert kept(0.4) == [False, True, False, False]
    assert kept(0.7) == [False, True, False, True]
    assert kept(0.9) == [False, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    expected = torch.tensor([[0.0, 0.5, 0.0, 0.3]]) / 0.8
    torch.testing.assert_close(sampling_probs(logits, 1.0, top_p=0.7), expected)


def test_top_k_and_temperature():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isfinite(filter_top_k(logits, 2))[0].tolist() == [False, True, True, False]
    torch.testing.assert_close(sampling_probs(logits, 0.5), torch.softmax(logits / 0.5, -1))


def test_draw_follows_the_probabilities_and_never_picks_a_zero():
    """With evenly spaced uniforms, inverse-CDF draws hit each token in proportion to its probability."""
    probs = torch.tensor([0.0, 0.25, 0.0, 0.75]).repeat(1000, 1)
    uniforms = (torch.arange(1000) + 0.5) / 1000
    counts = torch.bincount(draw(probs, uniforms), minlength=4).tolist()
    assert counts == [0, 250, 0, 750]


def test_the_model_comes_back_in_its_mode_with_its_use_cache(model, tokenizer):
    model.train()
    model.config.use_cache = False
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append((module.training, module.config.use_cache)))
    greedy(model, PROMPTS, tokenizer.pad_token_id, max_new_tokens=3)
    assert seen and all(state == (False, True) for state in seen)  # eval mode, cache on while sampling
    assert model.training and model.config.use_cache is False
    model.eval()
    model.config.use_cache = True
    greedy(model, PROMPTS, tokenizer.pad_token_id, max_new_tokens=3)
    assert not model.training and model.config.use_cache is True


def test_compute_context_wraps_each_batch(model, tokenizer):
    entered = []

    @contextlib.contextmanager
    def context():
        entered.append(torch.is_autocast_enabled("cpu"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield

    completions = greedy(model, PROMPTS, tokenizer.pad_token_id, batch_size=3, compute_context=context)
    assert len(entered) == 2
    assert all(len(completion.tokens) == 12 for completion in completions)


def test_lockstep_keeps_stepping_until_every_rank_is_done(model, tokenizer):
    """A rank that is done runs idle forwards for as long as another rank still decodes."""
    pad = tokenizer.pad_token_id
    forwards = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    alone = tokens_of(greedy(model, PROMPTS, pad, max_new_tokens=3))
    assert len(forwards) == 3  # prefill + 2 decode steps
    calls = []

    def lockstep(busy):
        calls.append(busy)
        return len(calls) < 6  # another rank needs 6 steps in all

    forwards.clear()
    assert tokens_of(greedy(model, PROMPTS, pad, max_new_tokens=3, lockstep=lockstep)) == alone
    assert calls == [True, True, False, False, False, False]
    assert len(forwards) == 6  # prefill, 2 decode steps, 3 idle forwards


def test_lora_adapters_are_used(model, tokenizer):
    from cookbook.training import lora

    pad = tokenizer.pad_token_id
    base = greedy(model, PROMPTS, pad)
    adapters = lora.add_adapters(model, lora.LoraSettings(4, 16.0, 0.0, "all-linear"))
    assert tokens_of(greedy(adapters.causal_lm, PROMPTS, pad)) == tokens_of(base)  # B = 0: no change yet
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in adapters.causal_lm.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=generator)
    with_adapters = tokens_of(greedy(adapters.causal_lm, PROMPTS, pad))
    assert with_adapters != tokens_of(base)
    assert tokens_of(greedy(adapters.peft_model, PROMPTS, pad)) == with_adapters  # the peft wrapper too
    assert with_adapters == hf_greedy(adapters.causal_lm, PROMPTS, 12, pad)
    with adapters.adapters_off():
        assert tokens_of(greedy(adapters.causal_lm, PROMPTS, pad)) == tokens_of(base)


def test_bad_arguments_are_named(model, tokenizer):
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        SamplingSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingSettings(4, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="at least one token"):
        sample(model, [[1], []], SamplingSettings(4), [], tokenizer.pad_token_id)
    assert sample(model, [], SamplingSettings(4), [], tokenizer.pad_token_id) == []


def test_padding_token_is_the_tokenizers_even_when_it_is_0_else_the_first_stop_token():
    assert padding_token_id(SimpleNamespace(pad_token_id=0), [2, 5]) == 0
    assert padding_token_id(SimpleNamespace(pad_token_id=None), [2, 5]) == 2
    assert padding_token_id(SimpleNamespace(pad_token_id=None), []) == 0
