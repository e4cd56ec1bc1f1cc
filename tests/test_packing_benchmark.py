"""The throughput benchmark's synthetic pairs: text that tokenizes back to exactly the token ids we
train on (so TRL, which tokenizes text, sees the same tokens), with the lengths asked for."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "dpo_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("dpo_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dpo_throughput"] = module  # dataclasses look their module up there
    sys.path.insert(0, str(BENCHMARK.parent))  # its sibling run_record.py, as when run as a script
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCHMARK.parent))
    sys.modules.pop("dpo_throughput", None)


def test_synthetic_pairs_round_trip_through_the_tokenizer(bench, tokenizer):
    pairs, texts = bench.make_pairs(tokenizer, count=6, max_length=64, min_frac=0.25, prompt_frac=0.3, seed=3)
    again, _ = bench.make_pairs(tokenizer, count=6, max_length=64, min_frac=0.25, prompt_frac=0.3, seed=3)
    assert pairs == again
    for pair, text in zip(pairs, texts):
        p = pair.prompt_length
        assert pair.chosen.tokens[:p] == pair.rejected.tokens[:p]
        for sequence, completion in ((pair.chosen, text.chosen), (pair.rejected, text.rejected)):
            assert 16 <= len(sequence.tokens) <= 64
            assert tokenizer(text.prompt + completion, add_special_tokens=False)["input_ids"] == sequence.tokens
            assert sequence.weights == [0.0] * p + [1.0] * (len(sequence.tokens) - p)
            assert sequence.tokens[-1] == tokenizer.eos_token_id
        assert tokenizer(text.prompt, add_special_tokens=False)["input_ids"] == pair.chosen.tokens[:p]


def test_cli_rejects_an_unknown_layout(bench):
    with pytest.raises(SystemExit, match="--layouts: unknown ragged"):
        bench.main(["--layouts", "padded,ragged", "--device", "cpu"])


def test_matmul_parameters_count_a_tied_table_once(bench, tiny_model):
    embedding = tiny_model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in tiny_model.parameters())
    assert bench.matmul_parameters(tiny_model) == total  # tied: the table is the LM head
    assert embedding < total


def _result(bench, impl, precision, tokens_per_cpu_second, layout="prefix_shared"):
    return bench.RunResult(impl=impl, layout=layout if impl == "ours" else "padded", reference="precomputed",
                           precision=precision, steps=2, step_seconds=1.0, tokens_per_second=tokens_per_cpu_second,
                           pairs_per_second=1.0, mfu=None, reference_seconds=0.0, gpu_peak_bytes=None,
                           host_peak_rss_bytes=1, slot_fill=1.0, real_tokens_per_step=100.0, cpu_seconds_per_step=1.0,
                           tokens_per_cpu_second=tokens_per_cpu_second)


def _spec(impl, precision):
    return {"impl": impl, "layout": "prefix_shared" if impl == "ours" else "padded", "reference": "precomputed",
            "precision": precision}


def test_headline_compares_our_default_with_trls_fastest_precision(bench):
    results = [_result(bench, "ours", "fp32", 90.0), _result(bench, "ours", "bf16-mixed", 120.0),
               _result(bench, "trl", "fp32", 40.0), _result(bench, "trl", "bf16-mixed", 60.0)]
    outcomes = [(_spec(r.impl, r.precision), r) for r in results]
    found, withheld = bench.headlines(outcomes, "prefix_shared", "bf16-mixed", 512)
    assert [h["line"] for h in found] == ["- ours default / TRL best (512 tokens): tokens/CPU-s x2.00 (TRL best: bf16=True)"]
    assert withheld == []
    lines = bench.format_ratios(results).splitlines()
    assert "- ours bf16-mixed / fp32 (prefix_shared, precomputed): tokens/s x1.33, tokens/CPU-s x1.33" in lines
    assert "| trl | padded | bf16=True | precomputed |" in bench.format_table(results)


def test_a_failed_trl_configuration_fails_the_headline(bench):
    """TRL bf16=True killed: the surviving TRL fp32 row must not become "TRL best"."""
    outcomes = [(_spec("ours", "bf16-mixed"), _result(bench, "ours", "bf16-mixed", 120.0)),
                (_spec("trl", "fp32"), _result(bench, "trl", "fp32", 40.0)),
                (_spec("trl", "bf16-mixed"), "killed by signal 9 (SIGKILL: probably out of memory; try --jobs 1)")]
    found, withheld = bench.headlines(outcomes, "prefix_shared", "bf16-mixed", 512)
    assert found == []
    assert len(withheld) == 1 and "trl bf16-mixed: killed by signal 9" in withheld[0]


def test_the_run_exits_non_zero_and_writes_no_headline_when_a_configuration_fails(bench, monkeypatch, tmp_path):
    """The whole driver with fake child processes: the record keeps every row, failed ones
    included, and has no headline."""
    def fake_child(argv, spec, timeout):
        if spec["impl"] == "trl" and spec["precision"] == "bf16-mixed":
            return "failed (exit 1): TRL token mismatch: TRL tokenized 1 of 12 pairs differently from our token ids"
        return _result(bench, spec["impl"], spec["precision"], 100.0 if spec["impl"] == "ours" else 50.0,
                       layout=spec["layout"])

    monkeypatch.setattr(bench, "run_in_subprocess", fake_child)
    monkeypatch.setattr(bench, "require_trl", lambda: None)
    out = tmp_path / "record.json"
    with pytest.raises(SystemExit, match="1 configuration\\(s\\) failed; the run fails and writes no headline"):
        bench.main(["--model", "135m", "--device", "cpu", "--layouts", "prefix_shared", "--precision",
                    "fp32,bf16-mixed", "--reference", "precomputed", "--vs-trl", "--json-out", str(out)])
    record = json.loads(out.read_text())
    assert record["headline"] is None and record["headline_withheld"]
    assert [row["ok"] for row in record["rows"]] == [True, True, True, False]
    assert "TRL token mismatch" in record["failures"][0]["error"]
    assert record["command"].endswith("--json-out " + str(out))
    assert {"load_average_start", "load_average_end", "cpus"} <= set(record["machine"])
    assert "torch" in record["versions"]


def test_a_token_mismatch_with_trl_is_fatal(bench, tokenizer):
    pairs, _ = bench.make_pairs(tokenizer, count=2, max_length=32, min_frac=0.5, prompt_frac=0.3, seed=0)
    rows = [{"prompt_ids": p.chosen.tokens[:p.prompt_length], "chosen_ids": p.chosen.tokens[p.prompt_length:],
             "rejected_ids": p.rejected.tokens[p.prompt_length:]} for p in pairs]
    bench.check_tokens(rows, pairs)  # identical: passes
    rows[1]["chosen_ids"] = rows[1]["chosen_ids"][:-1]  # TRL dropped the end-of-turn token
    with pytest.raises(SystemExit, match="TRL token mismatch: TRL tokenized 1 of 2 pairs differently"):
        bench.check_tokens(rows, pairs)


def test_cli_rejects_an_unknown_precision(bench):
    with pytest.raises(SystemExit, match="--precision: unknown fp8"):
        bench.main(["--precision", "fp32,fp8", "--device", "cpu"])


def test_profile_shares_sort_ops_into_buckets(bench):
    """Each bucket of the step profile catches its own ops: a [*, vocab] matmul is the LM head, sdpa
    is attention, another matmul is the decoder's, fused AdamW the optimizer, and the shares add to 1."""
    import torch

    vocab = 97
    hidden = torch.randn(6, 16, requires_grad=True)
    head, layer = torch.randn(vocab, 16, requires_grad=True), torch.randn(16, 16, requires_grad=True)
    optimizer = torch.optim.AdamW([head, layer], fused=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profiler:
        x = hidden @ layer
        q = x.view(1, 2, 3, 16)
        attended = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).view(6, 16)
        (attended @ head.T).logsumexp(-1).sum().backward()
        optimizer.step()
    batch = SimpleNamespace(num_slots=6, loss_tokens=SimpleNamespace(target_ids=torch.zeros(6)))
    profile = bench.profile_shares(profiler, vocab, batch)
    shares = profile["shares"]
    assert all(shares[bucket] > 0 for bucket in ("attention", "lm_head", "decoder_matmuls", "optimizer", "other"))
    assert sum(shares.values()) == pytest.approx(1.0)
    assert profile["loss_tokens"] == 6 and profile["row_slots"] == 6
