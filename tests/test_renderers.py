"""Renderers against the real SmolLM2 tokenizer and its own chat template.

The properties, checked over seeded random conversations (multi-turn, with and without a system
message, unicode, leading/trailing whitespace, empty and long messages):
- `chatml` and `hf` give token for token what `tokenizer.apply_chat_template` gives;
- the generation prompt is an exact token prefix of prompt + completion;
- weight 1 sits on exactly the trained replies' content + <|im_end|>, weight 0 everywhere else;
- parsing a rendered reply gives back the assistant text.
The one documented exception to token-exactness (a trained reply starting with 2+ whitespace
characters) is tested on its own.
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
import random
import warnings

import pytest

import cookbook.renderers
from cookbook.renderers import (
    ChatMLRenderer,
    check_renderer_matches_template,
    default_renderer_name,
    get_renderer,
    register_renderer,
    renderer_names,
)
from cookbook.renderers.registry import renderer_name_for_template

IM_END = "<|im_end|>"
WORDS = [
    "hello", "world", "the", "model", "answer:", "42", "Привет", "мир", "日本語", "テキスト", "émigré",
    "naïve", "🎉", "🚀", "x=1;", "print('hi')", "```py", "```", "-", "*", "é", "ß", "a.b", "(ok)", "?",
]  # fmt: skip
SEPARATORS = [" ", " ", " ", "\n", "\n\n", "  ", "\t", ", "]
LEADING_WHITESPACE = ["", "", "", "", "", "", " ", "\n", "\t", "  ", "\n\n"]
TRAILING_WHITESPACE = ["", "", "", " ", "\n", "  ", "\n\n", " \n"]


def random_content(rng: random.Random) -> str:
    if rng.random() < 0.08:
        return ""
    n_words = rng.randint(150, 400) if rng.random() < 0.1 else rng.randint(1, 15)
    text = rng.choice(WORDS)
    for _ in range(n_words - 1):
        text += rng.choice(SEPARATORS) + rng.choice(WORDS)
    return rng.choice(LEADING_WHITESPACE) + text + rng.choice(TRAILING_WHITESPACE)


def random_conversation(rng: random.Random) -> list[dict]:
    """Optional system message, then 1-4 user/assistant exchanges; always ends with an assistant."""
    messages = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": random_content(rng)})
    for _ in range(rng.randint(1, 4)):
        messages.append({"role": "user", "content": random_content(rng)})
        messages.append({"role": "assistant", "content": random_content(rng)})
    return messages


CONVERSATIONS = [random_conversation(random.Random(seed)) for seed in range(60)]


def template_ids(tokenizer, messages, add_generation_prompt=False) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(out, "keys"):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    return list(out)


def splits_from_header(content: str) -> bool:
    """The documented exception: a reply opening with 2+ whitespace characters (or whitespace only)
    would share a pre-token with the header's "\\n" in a whole-string tokenization."""
    return content[:2].isspace()


def weighted_runs(tokens, weights) -> list[list[int]]:
    runs, current = [], []
    for token, weight in zip(tokens, weights):
        assert weight in (0.0, 1.0)
        if weight:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.fixture(scope="module", params=["chatml", "hf"])
def template_renderer(request, tokenizer):
    return get_renderer(request.param, tokenizer)


def test_every_renderer_module_imports():
    for module in pkgutil.iter_modules(cookbook.renderers.__path__):
        importlib.import_module(f"cookbook.renderers.{module.name}")


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_text_and_generation_prompt_match_template(template_renderer, tokenizer, index):
    conversation = CONVERSATIONS[index]
    prompt = conversation[:-1]
    assert template_renderer.render_text(conversation) == tokenizer.apply_chat_template(
        conversation, tokenize=False
    )
    assert template_renderer.build_generation_prompt(prompt) == template_ids(tokenizer, prompt, True)


@pytest.mark.parametrize("train_on", ["last_assistant", "all_assistant"])
@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_supervised_example_matches_template_and_weights_replies(
    template_renderer, tokenizer, index, train_on
):
    conversation = CONVERSATIONS[index]
    example = template_renderer.build_supervised_example(conversation, train_on=train_on)
    assert len(example.tokens) == len(example.weights)
    replies = [m["content"] for m in conversation if m["role"] == "assistant"]
    trained = replies if train_on == "all_assistant" else replies[-1:]
    expected_tokens = template_ids(tokenizer, conversation)
    if not any(splits_from_header(content) for content in trained):
        assert example.tokens == expected_tokens
    assert tokenizer.decode(example.tokens) == tokenizer.decode(expected_tokens)
    expected_runs = [tokenizer.encode(content + IM_END, add_special_tokens=False) for content in trained]
    assert weighted_runs(example.tokens, example.weights) == expected_runs


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_prompt_is_prefix_and_reply_round_trips(template_renderer, tokenizer, index):
    conversation = CONVERSATIONS[index]
    for k, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        prompt_tokens = template_renderer.build_generation_prompt(conversation[:k])
        example = template_renderer.build_completion_example(conversation[:k], [message])
        n = len(prompt_tokens)
        assert example.tokens[:n] == prompt_tokens
        assert example.weights[:n] == [0.0] * n
        reply = tokenizer.encode(message["content"] + IM_END, add_special_tokens=False)
        assert example.tokens[n : n + len(reply)] == reply
        assert example.weights[n:] == [1.0] * len(reply) + [0.0] * (len(example.tokens) - n - len(reply))
        parsed = template_renderer.parse_response(example.tokens[n:])
        assert parsed.message == {"role": "assistant", "content": message["content"]}
        assert parsed.stop_reason == "stop_sequence"


def test_multi_message_completion_weights_each_assistant_reply(template_renderer, tokenizer):
    prompt = [{"role": "user", "content": "Pick a number."}]
    completion = [
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Three."},
    ]
    example = template_renderer.build_completion_example(prompt, completion)
    assert example.tokens == template_ids(tokenizer, prompt + completion)
    runs = weighted_runs(example.tokens, example.weights)
    assert [tokenizer.decode(run) for run in runs] == ["Seven." + IM_END, "Three." + IM_END]


@pytest.mark.parametrize("reply", ["\n\nHello", "  indented", " \nx", "\n", "   "])
def test_reply_opening_with_whitespace_run_is_tokenized_apart_from_header(
    template_renderer, tokenizer, reply
):
    """The documented exception: same text as the template, different token split at the header,
    because the header is tokenized alone to keep the generation prompt a prefix."""
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": reply}]
    example = template_renderer.build_supervised_example(conversation)
    whole = template_ids(tokenizer, conversation)
    assert example.tokens != whole
    assert tokenizer.decode(example.tokens) == tokenizer.decode(whole)
    prompt_tokens = template_renderer.build_generation_prompt(conversation[:1])
    assert example.tokens[: len(prompt_tokens)] == prompt_tokens
    # An untrained reply is ordinary context and matches the template exactly.
    longer = [*conversation, {"role": "user", "content": "ok"}, {"role": "assistant", "content": "bye"}]
    assert template_renderer.build_supervised_example(longer).tokens == template_ids(tokenizer, longer)


def test_parse_response_stop_reasons(tokenizer):
    renderer = get_renderer("chatml", tokenizer)
    hello = tokenizer.encode("Hello there", add_special_tokens=False)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    assert renderer.get_stop_token_ids() == [im_end]
    assert renderer.get_stop_sequences() == [IM_END]
    stopped = renderer.parse_response(
        hello + [im_end] + tokenizer.encode("\nextra", add_special_tokens=False)
    )
    assert stopped.message["content"] == "Hello there" and stopped.stop_reason == "stop_sequence"
    cut = renderer.parse_response(hello)
    assert cut.message["content"] == "Hello there" and cut.stop_reason == "length"
    assert renderer.parse_response([]).stop_reason == "length"


def test_default_system_prompt_is_configurable(tokenizer):
    user = [{"role": "user", "content": "Hi"}]
    assert get_renderer("qwen2_5", tokenizer).render_text(user) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
    )
    assert ChatMLRenderer(tokenizer, default_system_prompt=None).render_text(user) == (
        "<|im_start|>user\nHi<|im_end|>\n"
    )
    assert ChatMLRenderer(tokenizer, default_system_prompt="Be nice.").render_text(user, True) == (
        "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


# ---- the hf renderer on other templates ---------------------------------------------------------

INST_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
    "{% else %}<<SYS>>{{ m['content'] }}<</SYS>>{% endif %}{% endfor %}"
)


def tokenizer_with_template(tokenizer, template):
    other = copy.deepcopy(tokenizer)
    other.chat_template = template
    return other


def test_hf_renderer_follows_another_template_and_ends_replies_at_eos(tokenizer):
    """A template that ends replies with the `eos_token` variable (no literal marker in it)."""
    other = tokenizer_with_template(tokenizer, INST_TEMPLATE)
    renderer = get_renderer("hf", other)
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "See you."},
    ]
    example = renderer.build_supervised_example(conversation, train_on="all_assistant")
    assert example.tokens == template_ids(other, conversation)
    runs = weighted_runs(example.tokens, example.weights)
    assert [other.decode(run) for run in runs] == ["Hello!" + other.eos_token, "See you." + other.eos_token]
    assert renderer.get_stop_token_ids() == [other.eos_token_id]


def test_hf_renderer_rejects_template_that_rewrites_history(tokenizer):
    rewriting = "{% for m in messages %}{% if loop.last %}*{% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    renderer = get_renderer("hf", tokenizer_with_template(tokenizer, rewriting))
    conversation = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(ValueError, match="message 1: .*changes the text of earlier messages"):
        renderer.build_supervised_example(conversation)


def test_hf_renderer_needs_a_template(tokenizer):
    with pytest.raises(ValueError, match="needs a tokenizer with a chat_template.*role_colon"):
        get_renderer("hf", tokenizer_with_template(tokenizer, None))


# ---- registry ------------------------------------------------------------------------------------


def test_unknown_renderer_lists_known_names(tokenizer):
    with pytest.raises(
        ValueError, match=r"unknown renderer 'chatmll'; known renderers: .*chatml.*llama3.*qwen3"
    ):
        get_renderer("chatmll", tokenizer)


def test_register_custom_renderer(tokenizer):
    class TerseChatML(ChatMLRenderer):
        name = "terse_chatml_test"
        default_system_prompt = "Be terse."

    register_renderer(TerseChatML.name, TerseChatML)
    assert "terse_chatml_test" in renderer_names()
    renderer = get_renderer("terse_chatml_test", tokenizer)
    assert isinstance(renderer, TerseChatML)
    assert renderer.render_text([{"role": "user", "content": "x"}]).startswith(
        "<|im_start|>system\nBe terse."
    )
    with pytest.raises(TypeError, match="expected a Renderer class"):
        register_renderer("broken", "not callable")


def test_default_renderer_name(tokenizer, tmp_path):
    assert default_renderer_name(tokenizer) == "chatml"
    assert default_renderer_name("smollm2-135m-instruct") == "chatml"
    assert default_renderer_name("Qwen/Qwen3-0.6B") == "qwen3"
    assert default_renderer_name("Qwen/Qwen2.5-0.5B-Instruct") == "qwen2_5"
    assert default_renderer_name("meta-llama/Llama-3.2-1B-Instruct") == "llama3"
    assert default_renderer_name("someone/unknown-model") == "hf"
    assert default_renderer_name(tokenizer_with_template(tokenizer, None)) == "role_colon"
    tokenizer.save_pretrained(tmp_path)  # a local checkpoint is judged by the template saved in it
    assert default_renderer_name(str(tmp_path)) == "chatml"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("<|im_start|>...{% if enable_thinking %}<think>\n\n</think>{% endif %}", "qwen3"),
        (
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
            "qwen2_5",
        ),
        ("<|im_start|>{{ message['role'] }}", "hf"),
        ("<|start_header_id|>{{ role }}<|end_header_id|>", "llama3"),
        ("[INST] {{ content }} [/INST]", "hf"),
        (None, "role_colon"),
    ],
)
def test_renderer_name_for_template(template, expected):
    assert renderer_name_for_template(template) == expected


def test_template_check_passes_for_matching_renderers(tokenizer):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_renderer_matches_template(get_renderer("chatml", tokenizer), tokenizer)
        assert check_renderer_matches_template(get_renderer("hf", tokenizer), tokenizer)


@pytest.mark.parametrize("name", ["qwen2_5", "llama3", "role_colon", "qwen3"])
def test_template_check_warns_on_mismatch(tokenizer, name):
    with pytest.warns(UserWarning, match=f"renderer '{name}' disagrees with the chat template"):
        assert not check_renderer_matches_template(get_renderer(name, tokenizer), tokenizer)


# ---- bad input -----------------------------------------------------------------------------------

GOOD = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        (
            [*GOOD, {"role": "bot", "content": "c"}],
            "message 2: role 'bot' is not one of system, user, assistant",
        ),
        ([GOOD[0], {"content": "b"}], "message 1: missing 'role'"),
        ([{"role": "user", "content": ["a"]}, GOOD[1]], "message 0: content must be a string, got list"),
        ([GOOD[0], {"role": "assistant"}], "message 1: missing 'content'"),
        (["hello", GOOD[1]], "message 0: expected a dict with 'role' and 'content', got str"),
        ("hello", "expected a list of messages, got str"),
    ],
)
@pytest.mark.parametrize("name", ["chatml", "hf", "llama3", "qwen3", "role_colon"])
def test_bad_messages_name_the_index(tokenizer, name, messages, error):
    renderer = get_renderer(name, tokenizer)
    with pytest.raises(ValueError, match=error):
        renderer.build_supervised_example(messages)
    with pytest.raises(ValueError, match=error):
        renderer.render_text(messages)


def test_bad_completions_and_options(tokenizer):
    renderer = get_renderer("chatml", tokenizer)
    with pytest.raises(ValueError, match="completion message 0: role 'bot'"):
        renderer.build_completion_example(GOOD[:1], [{"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match="prompt message 0: content must be a string"):
        renderer.build_completion_example([{"role": "user", "content": None}], GOOD[1:])
    with pytest.raises(
        ValueError, match="completion message 0: role 'user'; a completion must start with an assistant"
    ):
        renderer.build_completion_example(GOOD[:1], [{"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="the completion has no messages"):
        renderer.build_completion_example(GOOD[:1], [])
    with pytest.raises(ValueError, match="no assistant message to train on"):
        renderer.build_supervised_example(GOOD[:1])
    with pytest.raises(ValueError, match="train_on='everything' is not one of last_assistant, all_assistant"):
        renderer.build_supervised_example(GOOD, train_on="everything")
