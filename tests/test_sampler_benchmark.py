"""The sampler benchmark's `--quick` path (benchmarks/sampler_throughput.py) on a tiny model, so the
script cannot silently rot while the sampler changes under it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from helpers import save_tiny_model

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "sampler_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sampler_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sampler_throughput"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("sampler_throughput", None)


def test_quick_run_on_a_tiny_model(bench, tiny_model_dir, capsys):
    """Both sides generate the same greedy replies and count the same tokens; the table shows them."""
    results = bench.main(["--quick", "--model", tiny_model_dir, "--temperatures", "0,0.7"])
    assert [(r.config.precision, r.config.temperature) for r in results] == [
        ("fp32", 0.0), ("fp32", 0.7), ("bf16", 0.0), ("bf16", 0.7)]
    greedy_fp32 = results[0]
    assert greedy_fp32.prompts == 4 and greedy_fp32.identical == 4
    assert greedy_fp32.hf.tokens == greedy_fp32.ours.tokens == 4 * 16  # no stop token from a random model
    for r in results:
        assert 0 < r.ours.tokens <= 4 * 16 and r.ours.cpu_seconds > 0 and r.hf.cpu_seconds > 0
    table = capsys.readouterr().out
    assert "| 4 | fp32 | greedy | 4 | 64 / 64 |" in table
    assert "| 4/4 |" in table


@pytest.mark.vllm
def test_quick_run_with_vllm_on_a_tiny_model(bench, tokenizer, tmp_path, capsys):
    """vLLM's side runs in its own process on the same prompts: its greedy fp32 replies equal the
    native sampler's, it counts the same tokens, and its table and engine start-up are printed."""
    # vLLM's CPU attention kernels take head sizes of 32 and up.
    model_dir = save_tiny_model(tmp_path / "tiny", tokenizer, hidden_size=64, num_heads=2, num_kv_heads=1)
    results = bench.main(["--quick", "--model", str(model_dir), "--precisions", "fp32", "--temperatures", "0",
                          "--vllm-eager", "--vllm-kv-cache-gib", "0.25"])
    (greedy,) = results
    assert greedy.vllm is not None and greedy.vllm.tokens == greedy.ours.tokens == 4 * 16
    assert greedy.vllm_identical == 4 and greedy.vllm.cpu_seconds > 0
    out = capsys.readouterr().out
    assert "engine (fp32) started in" in out
    assert "| fp32 | greedy | 4 | 64 / 64 |" in out and "| 4/4 |" in out
