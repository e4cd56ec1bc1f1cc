"""Tokenizing comparisons through the real chatml renderer, max_length handling, and the loader's summary."""

import importlib.util
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from cookbook.datasets.builder import SKIP_REASONS, Skip
from cookbook.datasets.load import load_preference_data
from cookbook.datasets.preference import DEMO_FILES, Comparison, DemoBuilder, FileBuilder
from cookbook.datasets.tokenize import MIN_COMPLETION_TOKENS, TokenizedPair, tokenize_comparison
from cookbook.renderers import get_renderer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def renderer(tokenizer):
    return get_renderer("chatml", tokenizer)


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def test_prompt_is_a_shared_prefix_and_only_completions_carry_weight(renderer):
    comparison = Comparison([u("Hi"), a("Hello."), u("Name a color.")], [a("Blue.")], [a("I'm not sure.")])
    pair = tokenize_comparison(comparison, renderer, max_length=None)
    assert isinstance(pair, TokenizedPair) and not pair.truncated
    prompt_tokens = renderer.build_generation_prompt(comparison.prompt)
    assert pair.prompt_length == len(prompt_tokens)
    for sequence, completion in ((pair.chosen, comparison.chosen), (pair.rejected, comparison.rejected)):
        expected = renderer.build_completion_example(comparison.prompt, completion)
        assert sequence.tokens == expected.tokens and sequence.weights == expected.weights
        assert sequence.tokens[: pair.prompt_length] == prompt_tokens
        assert not any(sequence.weights[: pair.prompt_length]) and any(sequence.weights[pair.prompt_length :])
    assert pair.chosen_completion_length == len(pair.chosen) - pair.prompt_length


def test_long_completions_are_cut_from_the_end(renderer):
    comparison = Comparison([u("Count.")], [a("one two three " * 60)], [a("No.")])
    prompt_length = len(renderer.build_generation_prompt(comparison.prompt))
    full = tokenize_comparison(comparison, renderer, max_length=None)
    max_length = prompt_length + 20
    pair = tokenize_comparison(comparison, renderer, max_length=max_length)
    assert pair.truncated
    assert pair.chosen.tokens == full.chosen.tokens[:max_length] and len(pair.chosen) == max_length
    assert pair.chosen.weights == full.chosen.weights[:max_length]
    assert pair.rejected == full.rejected  # the short side is untouched


def test_prompt_without_room_is_too_long_and_the_boundary_is_exact(renderer):
    comparison = Comparison(
        [u("A question that takes some tokens to ask.")], [a("Yes, certainly.")], [a("No.")]
    )
    prompt_length = len(renderer.build_generation_prompt(comparison.prompt))
    skip = tokenize_comparison(comparison, renderer, max_length=prompt_length + MIN_COMPLETION_TOKENS - 1)
    assert isinstance(skip, Skip) and skip.reason == "too_long"
    kept = tokenize_comparison(comparison, renderer, max_length=prompt_length + MIN_COMPLETION_TOKENS)
    assert isinstance(kept, TokenizedPair) and len(kept.chosen) <= prompt_length + MIN_COMPLETION_TOKENS


def test_completions_identical_within_max_length_are_skipped(renderer):
    shared = "The same long opening sentence, repeated so that it fills the window. " * 3
    comparison = Comparison([u("Go.")], [a(shared + "Then yes.")], [a(shared + "Then no.")])
    prompt_length = len(renderer.build_generation_prompt(comparison.prompt))
    assert isinstance(tokenize_comparison(comparison, renderer, max_length=None), TokenizedPair)
    skip = tokenize_comparison(comparison, renderer, max_length=prompt_length + 12)
    assert isinstance(skip, Skip) and skip.reason == "identical" and "max_length" in skip.detail


def test_load_preference_data_counts_everything_and_prints_on_request(tmp_path, renderer, capsys):
    rows = [{"prompt": f"Short question {i}?", "chosen": "Yes.", "rejected": "No."} for i in range(6)]
    rows += [
        {"prompt": "Long question " + "and more words " * 40, "chosen": "Yes.", "rejected": "No."},
        {"prompt": "Tie?", "chosen": "Same.", "rejected": "Same."},
        {"prompt": "Essay?", "chosen": "Long answer " * 30, "rejected": "Short."},
        {"prompt": "Short question 0?", "chosen": "Yes.", "rejected": "No."},
    ]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    builder = FileBuilder(path=str(path), test_size=2)

    buffer = io.StringIO()
    data = load_preference_data(builder, renderer, max_length=64, console=Console(file=buffer, width=120))
    summary = data.summary
    assert summary.rows_read == {"train": 10}
    assert summary.skipped == {"identical": 1, "duplicate": 1, "too_long": 1}
    assert summary.train_pairs + summary.test_pairs == 7 == len(data.train) + len(data.test)
    assert summary.truncated_pairs == 1
    all_pairs = data.train + data.test
    assert summary.train_lengths.chosen_max == max(p.chosen_completion_length for p in data.train)
    assert max(len(p.chosen) for p in all_pairs) <= 64

    metrics = summary.as_metrics()
    assert metrics["data/train_pairs"] == len(data.train) and metrics["data/test_pairs"] == len(data.test)
    assert metrics["data/skipped/too_long"] == 1 and metrics["data/skipped/tie"] == 0
    assert {f"data/skipped/{reason}" for reason in SKIP_REASONS} <= set(metrics)
    assert metrics["data/train/prompt_tokens_mean"] == pytest.approx(
        sum(p.prompt_length for p in data.train) / len(data.train)
    )
    printed = buffer.getvalue()
    assert "rows read" in printed and "skipped: too_long" in printed and "prefs.jsonl" in printed

    quiet = load_preference_data(builder, renderer, max_length=64, verbose=False)
    assert quiet.summary == summary
    assert capsys.readouterr().out == ""


def test_demo_pairs_are_short_and_all_kept(renderer):
    data = load_preference_data(DemoBuilder(max_pairs=None, test_size=200), renderer, max_length=128, verbose=False)
    assert len(data.train) == 1200 and len(data.test) == 200
    assert sum(data.summary.skipped.values()) == 0 and data.summary.truncated_pairs == 0
    longest = max(max(len(p.chosen), len(p.rejected)) for p in data.train + data.test)
    assert longest <= 96, "demo pairs must stay short so CPU training is fast"
    completions = [p.chosen_completion_length for p in data.train] + [
        p.rejected_completion_length for p in data.train
    ]
    assert max(completions) <= 30


def test_demo_files_match_the_generator():
    spec = importlib.util.spec_from_file_location("make_demo_data", REPO / "scripts" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = module.render_files(seed=0)
    for split, path in DEMO_FILES.items():
        assert files[path.name] == path.read_text(encoding="utf-8"), (
            f"rerun scripts/make_demo_data.py ({split})"
        )
    assert module.render_files(seed=1) != files
