"""The SFT throughput benchmark's own side (benchmarks/sft_throughput.py), on a tiny model, so the
script cannot silently rot while the recipe's code changes under it. TRL is not needed here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "sft_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sft_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sft_throughput"] = module  # dataclasses look their module up there
    sys.path.insert(0, str(BENCHMARK.parent))  # its sibling run_record.py, as when run as a script
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCHMARK.parent))
    sys.modules.pop("sft_throughput", None)


@pytest.mark.parametrize("layout", ["packed", "packed_capped", "padded"])
def test_our_step_on_a_tiny_model(bench, tiny_model_dir, layout):
    """One timed step of our SFT step through the shared loop: it counts the scheduled
    conversations' tokens, trains (finite loss), and the figures it reports are consistent."""
    args = bench.parse_args(["--model", tiny_model_dir, "--impls", "ours", "--steps", "1", "--warmup-steps", "0",
                             "--batch-size", "4", "--micro-batch-size", "2", "--synthetic-words", "40",
                             "--synthetic-spread", "10", "--max-length", "100"])
    result = bench.run_ours(args, bench.Spec("ours", "synthetic", layout, "fp32"))

    from cookbook.models import load_tokenizer
    from cookbook.renderers import default_renderer_name, get_renderer

    tokenizer = load_tokenizer(tiny_model_dir)
    renderer = get_renderer(default_renderer_name(tokenizer), tokenizer)
    sequences = bench.tokenize_all(bench.load_conversations(args, "synthetic", tokenizer), renderer, args.max_length)
    step_ids = bench.make_schedule(args, len(sequences)).global_batch(0)
    assert result.steps == 1
    assert result.tokens_per_step == sum(len(sequences[i].tokens) for i in step_ids)
    assert result.trained_tokens_per_step == sum(sequences[i].num_trained_tokens for i in step_ids)
    assert 0 < result.first_loss < 20  # about ln(vocab) ~ 10.8 for a random-init model
    assert result.tokens_per_cpu_second == pytest.approx(result.tokens_per_step / result.cpu_seconds_per_step)
    assert result.host_peak_rss_bytes > 0


def test_synthetic_conversations_are_seeded_and_sized(bench, tokenizer):
    first = bench.synthetic_conversations(tokenizer, count=5, mean_words=60, spread=10, seed=1)
    assert first == bench.synthetic_conversations(tokenizer, count=5, mean_words=60, spread=10, seed=1)
    assert first != bench.synthetic_conversations(tokenizer, count=5, mean_words=60, spread=10, seed=2)
    for conversation in first:
        user, reply = (m["content"] for m in conversation.messages)
        ids = tokenizer(" " + user + " " + reply, add_special_tokens=False)["input_ids"]
        assert 50 <= len(ids) <= 70  # one token per word


def _result(bench, impl, layout, precision, tokens_per_cpu_second):
    return bench.RunResult(impl, "demo", layout, precision, 3, 100.0, 10.0, 1.0, 1.0, 100.0,
                           tokens_per_cpu_second, 2**30, 1.0)


def test_ratio_lines_name_ours_default_against_trls_best(bench):
    results = [_result(bench, "ours", "packed", "bf16-mixed", 300.0), _result(bench, "ours", "packed", "fp32", 200.0),
               _result(bench, "trl", "padding_free", "fp32", 150.0), _result(bench, "trl", "padded", "fp32", 100.0)]
    outcomes = [(bench.Spec(r.impl, r.data, r.layout, r.precision), r) for r in results]
    found, withheld = bench.headlines(outcomes, default_precision="bf16-mixed")
    assert withheld == [] and len(found) == 1
    assert found[0]["line"].startswith("- ours default / TRL best (demo): tokens/CPU-s x2.00")
    lines = bench.format_ratios(results).splitlines()
    assert "- ours packed / TRL padding_free, fp32 (demo): tokens/CPU-s x1.33" in lines[0]
    assert lines[-1] == "- ours bf16-mixed / fp32, packed (demo): tokens/CPU-s x1.50"


def test_a_failed_configuration_fails_the_run_and_its_headline(bench, monkeypatch, tmp_path):
    """Fake child processes: TRL padded bf16 is OOM-killed, so the best surviving TRL row is not
    TRL's best; the run exits non-zero and its record has every row and no headline."""
    def fake_child(argv, spec, args):
        if spec == bench.Spec("trl", "demo", "padded", "bf16-mixed"):
            return "killed by signal 9 (SIGKILL: probably out of memory; try --jobs 1)"
        return _result(bench, spec.impl, spec.layout, spec.precision, 200.0 if spec.impl == "ours" else 100.0)

    monkeypatch.setattr(bench, "run_in_subprocess", fake_child)
    monkeypatch.setattr(bench, "require_trl", lambda: None)
    out = tmp_path / "record.json"
    with pytest.raises(SystemExit, match="1 configuration\\(s\\) failed; the run fails and writes no headline"):
        bench.main(["--sets", "demo", "--precisions", "fp32,bf16-mixed", "--json-out", str(out)])
    record = json.loads(out.read_text())
    assert record["headline"] is None
    assert "trl padded bf16-mixed: killed by signal 9" in record["headline_withheld"][0]
    assert sum(not row["ok"] for row in record["rows"]) == 1 and len(record["rows"]) == 6
    assert {"load_average_start", "load_average_end", "cpus"} <= set(record["machine"])


def test_a_token_mismatch_with_trl_is_fatal(bench, tokenizer):
    ours = [SimpleNamespace(tokens=[1, 2, 3], weights=[0.0, 1.0, 1.0]), SimpleNamespace(tokens=[4, 5], weights=[0.0, 1.0])]
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [-100, 5]}]
    assert bench.compare_tokens(rows, ours, tokenizer).startswith("input ids identical in 2/2 conversations")
    rows[1]["input_ids"] = [4, 6]
    with pytest.raises(SystemExit, match="TRL token mismatch: TRL's input ids differ from ours in 1 of 2"):
        bench.compare_tokens(rows, ours, tokenizer)
    with pytest.raises(SystemExit, match="TRL token mismatch: TRL prepared 1 rows for our 2"):
        bench.compare_tokens(rows[:1], ours, tokenizer)
