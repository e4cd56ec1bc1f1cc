"""Supervised tokenization through the renderer: which tokens are trained, cuts, and the summary."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from cookbook.datasets.builder import SKIP_REASONS, Skip
from cookbook.datasets.load import load_supervised_data
from cookbook.datasets.supervised import Conversation, NoUsableExamplesError, SupervisedFileBuilder
from cookbook.datasets.tokenize import SupervisedSequence, tokenize_conversation
from cookbook.renderers import get_renderer

MESSAGES = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye"},
]


@pytest.fixture
def renderer(tokenizer):
    return get_renderer("chatml", tokenizer)


def trained_runs(tokenizer, sequence: SupervisedSequence) -> list[str]:
    """The decoded text of each run of consecutive trained tokens."""
    runs, current = [], []
    for token, weight in zip(sequence.tokens, sequence.weights):
        if weight:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_last_and_all_assistant(tokenizer, renderer):
    last = tokenize_conversation(Conversation(MESSAGES), renderer, None, "last_assistant")
    every = tokenize_conversation(Conversation(MESSAGES), renderer, None, "all_assistant")
    assert trained_runs(tokenizer, last) == ["Goodbye<|im_end|>"]
    assert trained_runs(tokenizer, every) == ["Hello there<|im_end|>", "Goodbye<|im_end|>"]
    assert last.tokens == every.tokens and not last.truncated
    # Everything before the last reply is the generation prompt for it, untrained.
    prompt = renderer.build_generation_prompt(MESSAGES[:-1])
    assert last.tokens[: len(prompt)] == prompt and not any(last.weights[: len(prompt)])
    assert last.num_trained_tokens == len(tokenizer.encode("Goodbye<|im_end|>", add_special_tokens=False))


def test_num_trained_tokens_ignores_the_first_token():
    # Nothing predicts token 0, so its weight can never become a loss term.
    assert SupervisedSequence([5, 6, 7], [1.0, 1.0, 0.0]).num_trained_tokens == 1.0
    with pytest.raises(ValueError, match="3 tokens but 2 weights"):
        SupervisedSequence([5, 6, 7], [1.0, 1.0])


def test_max_length_cuts_from_the_end(tokenizer, renderer):
    full = tokenize_conversation(Conversation(MESSAGES), renderer, None, "all_assistant")
    last_reply_start = len(renderer.build_generation_prompt(MESSAGES[:-1]))
    cut = tokenize_conversation(Conversation(MESSAGES), renderer, last_reply_start + 2, "all_assistant")
    assert cut.truncated and len(cut) == last_reply_start + 2
    assert cut.tokens == full.tokens[: last_reply_start + 2] and cut.weights == full.weights[: last_reply_start + 2]
    assert trained_runs(tokenizer, cut) == ["Hello there<|im_end|>", tokenizer.decode(full.tokens[last_reply_start:][:2])]
    # Under last_assistant the same cut before the last reply leaves nothing to train on.
    skip = tokenize_conversation(Conversation(MESSAGES), renderer, last_reply_start, "last_assistant")
    assert isinstance(skip, Skip) and skip.reason == "too_long"
    assert f"token {last_reply_start}" in skip.detail


def test_renderer_rejection_is_a_malformed_skip(renderer):
    skip = tokenize_conversation(Conversation([{"role": "user", "content": "q"}]), renderer, None)
    assert isinstance(skip, Skip) and skip.reason == "malformed" and skip.detail.startswith("renderer:")
    with pytest.raises(ValueError, match="train_on='everything'"):
        tokenize_conversation(Conversation(MESSAGES), renderer, None, "everything")


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_load_counts_cuts_and_skips(tmp_path, tokenizer, renderer):
    short = [{"prompt": f"q{i}", "completion": "ok"} for i in range(4)]
    long_answer = {"prompt": "long", "completion": "word " * 40}
    long_question = {"prompt": "why " * 60, "completion": "because"}
    path = write_rows(tmp_path / "sft.jsonl", [*short, long_answer, long_question, short[0]])
    console = Console(record=True, width=200)
    data = load_supervised_data(SupervisedFileBuilder(path=path, test_size=1), renderer, 40, console=console)

    sequences = data.train + data.test
    assert len(sequences) == 5 and all(len(s) <= 40 for s in sequences)
    summary = data.summary
    assert (summary.train_examples, summary.test_examples, summary.truncated_examples) == (4, 1, 1)
    assert summary.skipped == {"duplicate": 1, "too_long": 1}
    metrics = summary.as_metrics()
    assert {f"data/skipped/{reason}" for reason in SKIP_REASONS} <= metrics.keys()
    assert metrics["data/rows_read"] == 7 and metrics["data/skipped/too_long"] == 1
    assert metrics["data/train/trained_tokens"] == sum(s.num_trained_tokens for s in data.train)
    assert metrics["data/train/tokens_max"] == max(len(s) for s in data.train)
    assert metrics["data/test/trained_tokens_mean"] == data.test[0].num_trained_tokens
    printed = console.export_text()
    assert "Supervised data:" in printed and "skipped: too_long" in printed and "truncated" in printed


def test_load_fails_when_nothing_fits(tmp_path, renderer):
    path = write_rows(tmp_path / "sft.jsonl", [{"prompt": "why " * 60, "completion": "because"}] * 1)
    with pytest.raises(NoUsableExamplesError, match="no training conversation fits max_length=20"):
        load_supervised_data(SupervisedFileBuilder(path=path, test_size=0), renderer, 20, verbose=False)
