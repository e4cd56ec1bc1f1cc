"""`llama3`, `qwen3` and `role_colon`: exact strings from the published formats (their tokenizers
cannot be downloaded here, so the expected text is written out by hand), then the token-level
invariants (prompt is a prefix, weights on exactly the reply, parse round-trip) on a copy of the
SmolLM2 tokenizer with the formats' special tokens registered.
"""

from __future__ import annotations

import copy
import random

import pytest
from test_renderers import CONVERSATIONS, random_content, weighted_runs

from cookbook.renderers import Qwen3Renderer, get_renderer, split_thinking

LLAMA3_SPECIAL_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
QWEN3_ADDED_TOKENS = ["<think>", "</think>"]


@pytest.fixture(scope="module")
def extended_tokenizer(tokenizer):
    """SmolLM2's tokenizer plus the Llama 3 and Qwen3 special tokens (eos stays <|im_end|>)."""
    extended = copy.deepcopy(tokenizer)
    extended.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIAL_TOKENS + QWEN3_ADDED_TOKENS})
    return extended


# ---- llama3 --------------------------------------------------------------------------------------


def test_llama3_text_matches_published_format(tokenizer):
    renderer = get_renderer("llama3", tokenizer)
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "  Hi!\n"},
        {"role": "assistant", "content": "\nHello. "},
        {"role": "user", "content": "Bye"},
    ]
    assert renderer.render_text(conversation, add_generation_prompt=True) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert renderer.render_text([], add_generation_prompt=True) == (
        "<|begin_of_text|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama3_needs_its_special_tokens(tokenizer):
    with pytest.raises(ValueError, match="needs '<\\|eot_id\\|>' to be a single token"):
        get_renderer("llama3", tokenizer).get_stop_token_ids()


def test_llama3_weights_and_stop_reasons(extended_tokenizer):
    renderer = get_renderer("llama3", extended_tokenizer)
    eot = extended_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    eos = extended_tokenizer.eos_token_id
    assert renderer.get_stop_token_ids() == [eot, eos]
    conversation = [
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": " 1 "},
        {"role": "user", "content": "Two?"},
        {"role": "assistant", "content": "2"},
    ]
    example = renderer.build_supervised_example(conversation, train_on="all_assistant")
    assert extended_tokenizer.decode(example.tokens) == renderer.render_text(conversation)
    runs = weighted_runs(example.tokens, example.weights)
    assert [extended_tokenizer.decode(run) for run in runs] == ["1<|eot_id|>", "2<|eot_id|>"]
    hi = extended_tokenizer.encode("Hi", add_special_tokens=False)
    assert renderer.parse_response(hi + [eot]).stop_reason == "stop_sequence"
    ended = renderer.parse_response(hi + [eos])
    assert ended.stop_reason == "eos" and ended.message["content"] == "Hi"
    assert renderer.parse_response(hi).stop_reason == "length"


# ---- qwen3 ---------------------------------------------------------------------------------------

SYSTEM_AND_USER = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "2+2?"}]


def test_qwen3_generation_prompts_with_and_without_thinking(tokenizer):
    start = (
        "<|im_start|>system\nBe exact.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert get_renderer("qwen3", tokenizer).render_text(SYSTEM_AND_USER, True) == start
    expected_off = start + "<think>\n\n</think>\n\n"
    assert (
        get_renderer("qwen3_disable_thinking", tokenizer).render_text(SYSTEM_AND_USER, True) == expected_off
    )
    assert Qwen3Renderer(tokenizer, enable_thinking=False).render_text(SYSTEM_AND_USER, True) == expected_off
    assert get_renderer("qwen3_disable_thinking", tokenizer).template_kwargs == {"enable_thinking": False}


@pytest.mark.parametrize("name", ["qwen3", "qwen3_disable_thinking"])
@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        pytest.param(
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n",
            id="last-reply-gets-empty-think-block",
        ),
        pytest.param(
            [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
                {"role": "user", "content": "times 3?"},
                {"role": "assistant", "content": "<think>multiply</think>12"},
            ],
            "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
            "<|im_start|>user\ntimes 3?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nmultiply\n</think>\n\n12<|im_end|>\n",
            id="history-drops-reasoning",
        ),
        pytest.param(
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "<think>r1</think>\n\na1"},
                {"role": "assistant", "content": "a2"},
            ],
            "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\nr1\n</think>\n\na1<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\na2<|im_end|>\n",
            id="replies-after-last-query-keep-reasoning",
        ),
        pytest.param(
            [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
            "<|im_start|>system\ns<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n",
            id="no-user-query-no-think-block",
        ),
        pytest.param(
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "<think>t</think>call"},
                {"role": "user", "content": "<tool_response>42</tool_response>"},
                {"role": "assistant", "content": "done"},
            ],
            "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\nt\n</think>\n\ncall<|im_end|>\n"
            "<|im_start|>user\n<tool_response>42</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\ndone<|im_end|>\n",
            id="tool-response-is-not-a-query",
        ),
    ],
)
def test_qwen3_conversation_text_matches_published_template(tokenizer, name, messages, expected):
    assert get_renderer(name, tokenizer).render_text(messages) == expected


def test_split_thinking():
    assert split_thinking("<think>\n\nplan\n</think>\n\nanswer") == ("plan", "answer")
    assert split_thinking("no tags") == ("", "no tags")
    assert split_thinking("pre<think>a</think>b</think>c") == ("a", "c")


def test_qwen3_thinking_on_trains_the_think_block(extended_tokenizer):
    renderer = get_renderer("qwen3", extended_tokenizer)
    prompt = [{"role": "user", "content": "2+2?"}]
    completion = [{"role": "assistant", "content": "<think>add</think>4"}]
    example = renderer.build_completion_example(prompt, completion)
    n = len(renderer.build_generation_prompt(prompt))
    assert sum(example.weights[:n]) == 0
    runs = weighted_runs(example.tokens, example.weights)
    assert [extended_tokenizer.decode(run) for run in runs] == ["<think>\nadd\n</think>\n\n4<|im_end|>"]
    parsed = renderer.parse_response(example.tokens[n:])
    assert (
        parsed.message["content"] == "<think>\nadd\n</think>\n\n4" and parsed.stop_reason == "stop_sequence"
    )
    assert split_thinking(parsed.message["content"]) == ("add", "4")


def test_qwen3_thinking_off_keeps_empty_block_in_prompt(extended_tokenizer):
    renderer = get_renderer("qwen3_disable_thinking", extended_tokenizer)
    prompt = [{"role": "user", "content": "Pick."}]
    completion = [
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "Again?"},
        {"role": "assistant", "content": "Three."},
    ]
    example = renderer.build_completion_example(prompt, completion)
    prompt_tokens = renderer.build_generation_prompt(prompt)
    assert extended_tokenizer.decode(prompt_tokens).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert example.tokens[: len(prompt_tokens)] == prompt_tokens
    runs = weighted_runs(example.tokens, example.weights)
    assert [extended_tokenizer.decode(run) for run in runs] == ["Seven.<|im_end|>", "Three.<|im_end|>"]
    with pytest.raises(ValueError, match="completion message 0 has a think block"):
        renderer.build_completion_example(prompt, [{"role": "assistant", "content": "<think>hm</think>7"}])


# ---- role_colon ----------------------------------------------------------------------------------


def test_role_colon_text_and_stop(tokenizer):
    renderer = get_renderer("role_colon", tokenizer)
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert renderer.render_text(conversation, add_generation_prompt=True) == (
        "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Bye\n\nAssistant:"
    )
    assert renderer.get_stop_sequences() == ["\n\nUser:"]
    assert renderer.get_stop_token_ids() == [tokenizer.eos_token_id]
    sampled = tokenizer.encode(" Sure thing.\n\nUser: more", add_special_tokens=False)
    parsed = renderer.parse_response(sampled)
    assert parsed.message["content"] == "Sure thing." and parsed.stop_reason == "stop_sequence"
    ended = renderer.parse_response(
        tokenizer.encode(" Done", add_special_tokens=False) + [tokenizer.eos_token_id]
    )
    assert ended.message["content"] == "Done" and ended.stop_reason == "eos"
    assert renderer.parse_response(tokenizer.encode(" Cut", add_special_tokens=False)).stop_reason == "length"


# ---- invariants shared by every format -----------------------------------------------------------


def expected_reply(name: str, content: str) -> tuple[str, str]:
    """(text carrying weight 1, content parse_response gives back) for a fresh reply `content`."""
    if name == "llama3":
        return content.strip() + "<|eot_id|>", content.strip()
    if name == "qwen3":
        text = "<think>\n\n</think>\n\n" + content.lstrip("\n")
        return text + "<|im_end|>", text
    if name == "qwen3_disable_thinking":
        return content.lstrip("\n") + "<|im_end|>", content.lstrip("\n")
    if name == "role_colon":
        return f" {content}\n\n", content
    return content + "<|im_end|>", content


@pytest.mark.parametrize(
    "name", ["chatml", "qwen2_5", "hf", "llama3", "qwen3", "qwen3_disable_thinking", "role_colon"]
)
def test_prefix_weights_and_round_trip(extended_tokenizer, name):
    renderer = get_renderer(name, extended_tokenizer)
    rng = random.Random(name)
    for conversation in CONVERSATIONS[:25]:
        for k, message in enumerate(conversation):
            if message["role"] != "assistant":
                continue
            message = {
                "role": "assistant",
                "content": random_content(rng) if rng.random() < 0.3 else message["content"],
            }
            prompt_tokens = renderer.build_generation_prompt(conversation[:k])
            example = renderer.build_completion_example(conversation[:k], [message])
            n = len(prompt_tokens)
            assert example.tokens[:n] == prompt_tokens
            runs = weighted_runs(example.tokens, example.weights)
            weighted_text, content = expected_reply(name, message["content"])
            assert len(runs) == 1 and example.weights[n] == 1.0
            assert extended_tokenizer.decode(runs[0]) == weighted_text
            assert extended_tokenizer.decode(example.tokens) == renderer.render_text(
                [*conversation[:k], message]
            )
            sampled = example.tokens[n:]
            if name == "role_colon":  # the model goes on with the next turn's label; the stop catches it
                sampled = sampled + extended_tokenizer.encode("User:", add_special_tokens=False)
            parsed = renderer.parse_response(sampled)
            assert parsed.message == {"role": "assistant", "content": content}
            assert parsed.stop_reason == "stop_sequence"
