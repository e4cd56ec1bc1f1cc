"""The reward-model throughput benchmark's own side (benchmarks/reward_model_throughput.py), on a tiny
model, so the script cannot silently rot while the recipe's code changes under it. TRL is not needed."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "reward_model_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("reward_model_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reward_model_throughput"] = module  # dataclasses look their module up there
    sys.path.insert(0, str(BENCHMARK.parent))  # its sibling run_record.py, as when run as a script
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCHMARK.parent))
    sys.modules.pop("reward_model_throughput", None)


@pytest.mark.parametrize("layout", ["auto", "padded"])
def test_our_step_on_a_tiny_model(bench, tiny_model_dir, layout):
    """One timed step of our reward-model step through the shared loop: it counts the scheduled
    pairs' tokens, starts at ln 2 (zero head), and its figures are consistent."""
    args = bench.parse_args(["--model", tiny_model_dir, "--impls", "ours", "--steps", "1", "--warmup-steps", "0",
                             "--batch-size", "4", "--micro-batch-size", "2"])
    result = bench.run_ours(args, bench.Spec("ours", layout, "fp32"))

    from cookbook.models import load_tokenizer
    from cookbook.renderers import default_renderer_name, get_renderer

    tokenizer = load_tokenizer(tiny_model_dir)
    _, pairs = bench.load_pairs(args, get_renderer(default_renderer_name(tokenizer), tokenizer))
    step_ids = bench.make_schedule(args, len(pairs)).global_batch(0)
    assert result.steps == 1
    assert result.tokens_per_step == sum(len(pairs[i].chosen.tokens) + len(pairs[i].rejected.tokens) for i in step_ids)
    assert result.first_loss == pytest.approx(math.log(2), abs=1e-6)
    assert result.tokens_per_cpu_second == pytest.approx(result.tokens_per_step / result.cpu_seconds_per_step)
    assert ("prefix_shared" if layout == "auto" else "padded") in result.note
