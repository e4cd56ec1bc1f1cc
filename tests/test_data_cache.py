"""Real-size data: batched tokenization gives the one-text-at-a-time tokens on every renderer, the
tokenized set is cached under a key of everything that decides it, a torn cache is never used, and
a resumed run reads the cache instead of tokenizing again."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
from pathlib import Path

import pytest
from test_renderers import random_content

from cookbook.datasets import cache
from cookbook.datasets import load as load_module
from cookbook.datasets.builder import assistant, user
from cookbook.datasets.load import load_preference_data, load_supervised_data
from cookbook.datasets.preference import Comparison, FileBuilder
from cookbook.datasets.supervised import Conversation, SupervisedFileBuilder
from cookbook.datasets.tokenize import (
    tokenize_comparison,
    tokenize_comparisons,
    tokenize_conversation,
    tokenize_conversations,
)
from cookbook.errors import RunStopped
from cookbook.recipes.preference.train import cli
from cookbook.renderers import get_renderer, renderer_names
from cookbook.renderers.base import Segment
from cookbook.training import metrics as metrics_module

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<think>", "</think>"]


@pytest.fixture(scope="module")
def extended_tokenizer(tokenizer):
    extended = copy.deepcopy(tokenizer)
    extended.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    return extended


def comparisons(seed: int, count: int) -> list[Comparison]:
    rng = random.Random(seed)
    items = []
    for _ in range(count):
        prompt = [user(random_content(rng) or "hi")]
        if rng.random() < 0.3:  # a multi-turn prompt, sometimes with a system turn
            prompt = [{"role": "system", "content": "Be brief."}, user("a"), assistant(random_content(rng)), *prompt]
        items.append(Comparison(prompt, [assistant(random_content(rng))], [assistant(random_content(rng))]))
    return items


def one_text_at_a_time(renderer, runs) -> tuple[list[int], list[float]]:
    """The reference: each run encoded on its own with `tokenizer.encode`, as the renderer always did."""
    tokens, weights = [], []
    for text, weight in runs:
        ids = renderer.tokenizer.encode(text, add_special_tokens=False)
        tokens += ids
        weights += [weight] * len(ids)
    return tokens, weights


@pytest.mark.parametrize("name", renderer_names())
def test_batched_tokenization_equals_one_text_at_a_time(extended_tokenizer, name):
    renderer = get_renderer(name, extended_tokenizer)
    items = comparisons(seed=len(name), count=40)
    batched = tokenize_comparisons(items, renderer, max_length=160)
    assert batched == [tokenize_comparison(item, renderer, max_length=160) for item in items]
    for item, result in zip(items, batched):
        if not hasattr(result, "chosen"):
            continue
        reference, _ = one_text_at_a_time(renderer, renderer.completion_runs(item.prompt, item.chosen))
        assert result.chosen.tokens == reference[:160]
        assert result.chosen.tokens[: result.prompt_length] == one_text_at_a_time(
            renderer, renderer.generation_prompt_runs(item.prompt))[0]
    conversations = [Conversation([*item.prompt, *item.chosen]) for item in items]
    sequences = tokenize_conversations(conversations, renderer, max_length=200, train_on="all_assistant")
    assert sequences == [tokenize_conversation(c, renderer, 200, "all_assistant") for c in conversations]
    for conversation, sequence in zip(conversations, sequences):
        if hasattr(sequence, "tokens"):
            tokens, weights = one_text_at_a_time(renderer, renderer.supervised_runs(conversation.messages, "all_assistant"))
            assert (sequence.tokens, sequence.weights) == (tokens[:200], weights[:200])


def test_a_reply_starting_with_whitespace_keeps_its_own_tokens(tokenizer):
    """The batch encodes each distinct run once; a run is still tokenized apart from its neighbours."""
    renderer = get_renderer("chatml", tokenizer)
    runs = [[("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", 0.0), ("\n\n\nHi", 1.0)]]
    assert renderer.encode_runs(runs)[0].tokens == one_text_at_a_time(renderer, runs[0])[0]
    assert Segment  # the renderer's unit, for readers of this test


def write_pairs(path: Path, count: int, seed: int = 0) -> str:
    rows = [{"prompt": item.prompt[-1]["content"] or "q", "chosen": item.chosen[0]["content"] + " yes",
             "rejected": item.rejected[0]["content"] + " no"} for item in comparisons(seed, count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_the_key_changes_with_everything_that_decides_the_tokens(tmp_path, tokenizer, extended_tokenizer):
    data = write_pairs(tmp_path / "a.jsonl", 12)
    chatml = get_renderer("chatml", tokenizer)
    base = cache.data_key("pairs", FileBuilder(path=data, test_size=2), chatml, 128)
    assert base == cache.data_key("pairs", FileBuilder(path=data, test_size=2), chatml, 128)
    other_data = write_pairs(tmp_path / "b.jsonl", 12, seed=1)
    same_bytes = tmp_path / "copy.jsonl"
    same_bytes.write_bytes(Path(data).read_bytes())
    changed = {
        "data": cache.data_key("pairs", FileBuilder(path=other_data, test_size=2), chatml, 128),
        "tokenizer": cache.data_key("pairs", FileBuilder(path=data, test_size=2),
                                    get_renderer("chatml", extended_tokenizer), 128),
        "renderer": cache.data_key("pairs", FileBuilder(path=data, test_size=2), get_renderer("role_colon", tokenizer), 128),
        "max_length": cache.data_key("pairs", FileBuilder(path=data, test_size=2), chatml, 256),
        "options": cache.data_key("pairs", FileBuilder(path=data, test_size=3), chatml, 128),
        "seed": cache.data_key("pairs", FileBuilder(path=data, test_size=2, seed=1), chatml, 128),
    }
    assert len(set(changed.values()) | {base}) == len(changed) + 1, changed
    # The path is one of the builder's options: a copy under another name is another key.
    assert cache.data_key("pairs", FileBuilder(path=str(same_bytes), test_size=2), chatml, 128) != base
    sft = SupervisedFileBuilder(path=data)
    assert (cache.data_key("sequences", sft, chatml, 128, train_on="last_assistant")
            != cache.data_key("sequences", sft, chatml, 128, train_on="all_assistant"))


def test_a_second_load_reads_the_cache_and_gives_the_same_data(tmp_path, tokenizer, monkeypatch):
    data = write_pairs(tmp_path / "prefs.jsonl", 30)
    renderer = get_renderer("chatml", tokenizer)
    builder = FileBuilder(path=data, test_size=5)
    first = load_preference_data(builder, renderer, 96, verbose=False)
    assert first.cache_note.startswith("tokenized now, cached")
    monkeypatch.setattr(load_module, "tokenize_comparisons", lambda *a: pytest.fail("tokenized again"))
    second = load_preference_data(builder, renderer, 96, verbose=False)
    assert second.cache_note.startswith("cached tokens")
    assert list(second.train) == list(first.train) and list(second.test) == list(first.test)
    assert second.summary == first.summary and second.fingerprint == first.fingerprint


def test_a_torn_cache_is_never_used(tmp_path, tokenizer):
    data = write_pairs(tmp_path / "prefs.jsonl", 30)
    renderer = get_renderer("chatml", tokenizer)
    builder = FileBuilder(path=data, test_size=5)
    expected = list(load_preference_data(builder, renderer, 96, verbose=False).train)
    directory = cache.cache_root() / f"pairs-{cache.data_key('pairs', builder, renderer, 96)[:40]}"
    with open(directory / "chosen.bin", "r+b") as handle:  # a write cut short
        handle.truncate(8)
    again = load_preference_data(builder, renderer, 96, verbose=False)
    assert again.cache_note.startswith("tokenized now") and list(again.train) == expected
    meta = json.loads((directory / "meta.json").read_text())
    (directory / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    assert load_preference_data(builder, renderer, 96, verbose=False).cache_note.startswith("tokenized now")
    # A writer killed before publishing leaves only a hidden staging directory, which no load reads.
    writer = cache.StoreWriter("pairs", cache.PAIR_ARRAYS, "f" * 64)
    writer.write("prompt", [1, 2, 3])
    assert cache.open_store("pairs", "f" * 64) is None and writer.directory.name.startswith(".")
    writer.abandon()


def test_supervised_data_is_cached_too(tmp_path, tokenizer, monkeypatch):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"answer {i}"}) + "\n" for i in range(20)))
    renderer = get_renderer("chatml", tokenizer)
    first = load_supervised_data(SupervisedFileBuilder(path=str(path), test_size=4), renderer, 64, verbose=False)
    monkeypatch.setattr(load_module, "tokenize_conversations", lambda *a: pytest.fail("tokenized again"))
    second = load_supervised_data(SupervisedFileBuilder(path=str(path), test_size=4), renderer, 64, verbose=False)
    assert second.cache_note.startswith("cached tokens") and list(second.train) == list(first.train)
    assert second.summary == first.summary


def test_on_policy_prompts_are_tokenized_in_batches_and_cached(tokenizer, extended_tokenizer, monkeypatch):
    rng = random.Random(7)
    conversations = [comparison.prompt for comparison in comparisons(11, 40)] + [[user(f"prompt {rng.random()}")]]
    renderer = get_renderer("chatml", tokenizer)
    first, note = load_module.load_prompt_tokens(conversations, renderer)
    assert note.startswith("tokenized now")
    assert list(first) == [renderer.build_generation_prompt(list(c)) for c in conversations]
    assert first.lengths().tolist() == [len(tokens) for tokens in first]
    assert first.subset([3, 0])[0] == first[3] and len(first.subset([3, 0])) == 2
    monkeypatch.setattr(type(renderer), "encode_runs", lambda *a: pytest.fail("tokenized again"))
    second, note = load_module.load_prompt_tokens(conversations, renderer)
    assert note.startswith("cached tokens") and list(second) == list(first)
    monkeypatch.undo()
    # Other prompts, another tokenizer or another renderer: another key.
    key = cache.prompts_key("digest", renderer)
    assert key != cache.prompts_key("other digest", renderer)
    assert key != cache.prompts_key("digest", get_renderer("chatml", extended_tokenizer))
    assert key != cache.prompts_key("digest", get_renderer("llama3", tokenizer))


def test_a_resumed_run_reads_the_cached_tokens(tmp_path, tiny_model_dir, monkeypatch):
    data = write_pairs(tmp_path / "prefs.jsonl", 40)
    args = [f"log_path={tmp_path / 'run'}", f"model_name={tiny_model_dir}", f"dataset={data}", "dataset.test_size=4",
            "max_length=96", "show_example=false", "max_steps=4", "batch_size=4", "micro_batch_size=4",
            "eval_every=0", "save_every=1"]
    original = metrics_module.MetricLogger.log_metrics

    def log_and_interrupt(self, metrics, step):
        original(self, metrics, step)
        if step == 2 and "dpo_loss" in metrics:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(metrics_module.MetricLogger, "log_metrics", log_and_interrupt)
    with pytest.raises(RunStopped):
        cli(args)
    monkeypatch.setattr(metrics_module.MetricLogger, "log_metrics", original)
    monkeypatch.setattr(load_module, "tokenize_comparisons", lambda *a: pytest.fail("the resume tokenized again"))
    cli([*args, "behavior_if_log_dir_exists=resume"])
    assert (tmp_path / "run" / "final").exists()


def test_loss_weights_other_than_0_and_1_are_refused_not_rounded(tmp_path):
    writer = cache.StoreWriter("sequences", cache.SEQUENCE_ARRAYS, None)
    writer.write("weights", [0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="weights"):
        writer.write("weights", [1.0, 0.5])
    writer.abandon()
