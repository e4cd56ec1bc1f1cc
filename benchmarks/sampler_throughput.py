"""Sampling throughput: `cookbook.sampling.sample` against transformers' `model.generate`, on the same
prompts, model, batch size, token budget, sampling settings and precision.

    .venv/bin/python benchmarks/sampler_throughput.py                     # batch 8 and 32, fp32 and bf16
    .venv/bin/python benchmarks/sampler_throughput.py --batch-sizes 8 --precisions bf16
    .venv/bin/python benchmarks/sampler_throughput.py --quick             # seconds: a smoke run

Prints one markdown table, a row per configuration with both sides: generated tokens per
CPU-second and per wall-clock second, and our ratio to transformers.

Why it is built this way:
- Prompts are the bundled IFEval prompts rendered with the model's default renderer, generation
  stops at the renderer's stop tokens: a real eval's mix of short and long replies. "Generated
  tokens" are each reply up to and including its stop token, on both sides; transformers' padding
  after a finished row does not count, though it is computed.
- transformers runs the way its users call it: `model.generate` (its own `no_grad`) with a fresh
  `GenerationConfig` (no top-k/top-p unless asked), inside `torch.autocast` for bf16. Ours gets the
  same autocast as its `compute_context`. fp32 = fp32 weights and matmuls; bf16 = fp32 weights
  under bf16 autocast (the training precision `bf16-mixed`).
- CPU-seconds (`time.process_time`) at one torch thread (`--threads`) are the robust figure on a
  machine shared with other jobs; wall-clock seconds are shown beside them.
- Each configuration runs both sides one after the other in the same process after a short
  warm-up of each; the greedy fp32 row also reports how many replies are token-identical.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

PROMPTS_FILE = Path(__file__).resolve().parents[1] / "cookbook" / "eval" / "data" / "ifeval_prompts.jsonl"


@dataclass(frozen=True)
class Config:
    batch_size: int
    precision: str  # fp32 | bf16
    temperature: float


@dataclass
class SideResult:
    tokens: int
    cpu_seconds: float
    wall_seconds: float

    @property
    def tokens_per_cpu_second(self) -> float:
        return self.tokens / self.cpu_seconds

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.wall_seconds


@dataclass
class ConfigResult:
    config: Config
    prompts: int
    ours: SideResult
    hf: SideResult
    identical: int | None  # greedy fp32: replies equal token for token (None otherwise)


def load_prompts(tokenizer, count: int) -> list[list[int]]:
    from cookbook.renderers import default_renderer_name, get_renderer

    renderer = get_renderer(default_renderer_name(tokenizer), tokenizer)
    rows = [json.loads(line) for line in PROMPTS_FILE.read_text().splitlines() if line.strip()]
    if count > len(rows):
        raise SystemExit(f"asked for {count} prompts; {PROMPTS_FILE.name} has {len(rows)}")
    return [renderer.build_generation_prompt([{"role": "user", "content": row["prompt"]}]) for row in rows[:count]]


def compute_context(precision: str):
    if precision == "bf16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def cut_at_stop(tokens: list[int], stop_token_ids: set[int]) -> list[int]:
    for index, token in enumerate(tokens):
        if token in stop_token_ids:
            return tokens[: index + 1]
    return tokens


def hf_generate(model, prompts, config: Config, max_new_tokens: int, stop_ids: list[int], pad: int, seed: int):
    from transformers import GenerationConfig

    from cookbook.sampling.decode import left_pad

    sampled = config.temperature > 0
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=sampled, temperature=config.temperature if sampled else None,
        top_k=None, top_p=None, eos_token_id=stop_ids, pad_token_id=pad,
    )
    torch.manual_seed(seed)
    replies = []
    for start in range(0, len(prompts), config.batch_size):
        input_ids, attention_mask = left_pad(prompts[start : start + config.batch_size], pad)
        with compute_context(config.precision)():
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                    generation_config=generation_config)
        replies += [cut_at_stop(row, set(stop_ids)) for row in output[:, input_ids.shape[1] :].tolist()]
    return replies


def our_sample(model, prompts, config: Config, max_new_tokens: int, stop_ids: list[int], pad: int, seed: int):
    from cookbook.sampling import SamplingSettings, sample

    completions = sample(model, prompts, SamplingSettings(max_new_tokens, temperature=config.temperature),
                         stop_ids, pad, batch_size=config.batch_size, generator=torch.Generator().manual_seed(seed),
                         compute_context=compute_context(config.precision))
    return [completion.tokens for completion in completions]


def timed(run, *args) -> tuple[list[list[int]], SideResult]:
    cpu, wall = time.process_time(), time.perf_counter()
    replies = run(*args)
    result = SideResult(sum(len(r) for r in replies), time.process_time() - cpu, time.perf_counter() - wall)
    return replies, result


def run_config(model, prompts, config: Config, args, stop_ids: list[int], pad: int) -> ConfigResult:
    side_args = (model, prompts, config, args.max_new_tokens, stop_ids, pad, args.seed)
    hf_replies, hf = timed(hf_generate, *side_args)
    our_replies, ours = timed(our_sample, *side_args)
    identical = None
    if config.temperature == 0 and config.precision == "fp32":
        identical = sum(a == b for a, b in zip(hf_replies, our_replies))
    return ConfigResult(config, len(prompts), ours, hf, identical)


def format_table(results: list[ConfigResult]) -> str:
    lines = [
        "| batch | precision | sampling | prompts | tokens (HF / ours) | HF tok/CPU-s | ours tok/CPU-s | ratio "
        "| HF tok/s | ours tok/s | ratio | identical greedy replies |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        sampling = "greedy" if r.config.temperature == 0 else f"T={r.config.temperature:g}"
        identical = f"{r.identical}/{r.prompts}" if r.identical is not None else "n/a"
        lines.append(
            f"| {r.config.batch_size} | {r.config.precision} | {sampling} | {r.prompts} "
            f"| {r.hf.tokens} / {r.ours.tokens} | {r.hf.tokens_per_cpu_second:.1f} | {r.ours.tokens_per_cpu_second:.1f} "
            f"| x{r.ours.tokens_per_cpu_second / r.hf.tokens_per_cpu_second:.2f} "
            f"| {r.hf.tokens_per_second:.1f} | {r.ours.tokens_per_second:.1f} "
            f"| x{r.ours.tokens_per_second / r.hf.tokens_per_second:.2f} | {identical} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model_name (bundled, local dir)")
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32, bf16 (bf16 autocast over fp32 weights)")
    parser.add_argument("--temperatures", default="0,0.7", help="0 = greedy")
    parser.add_argument("--batches", type=int, default=1, help="batches per configuration (prompts = batch x this)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="batch 4, 16 new tokens: a smoke run")
    parser.add_argument("--json-out", default=None,
                        help="where the run's record goes (default benchmarks/results/sampler_throughput.json; "
                             "--quick writes none unless given)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.max_new_tokens = "4", 16
    return args


def configs_for(args) -> list[Config]:
    return [Config(int(b), p, float(t)) for b in args.batch_sizes.split(",") for p in args.precisions.split(",")
            for t in args.temperatures.split(",")]


def main(argv=None) -> list[ConfigResult]:
    from run_record import RESULTS_DIR, finish_record, start_record

    args = parse_args(argv)
    record = start_record(__file__, sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    from cookbook.models import load_model_and_tokenizer
    from cookbook.renderers import default_renderer_name, get_renderer

    model, tokenizer = load_model_and_tokenizer(args.model, dtype="float32", device="cpu")
    stop_ids = list(get_renderer(default_renderer_name(tokenizer), tokenizer).get_stop_token_ids())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    configs = configs_for(args)
    prompts = load_prompts(tokenizer, max(c.batch_size for c in configs) * args.batches)
    warmup = Config(2, "fp32", 0.0)
    for run in (hf_generate, our_sample):
        run(model, prompts[:2], warmup, 4, stop_ids, pad, args.seed)
    results = []
    for config in configs:
        results.append(run_config(model, prompts[: config.batch_size * args.batches], config, args, stop_ids, pad))
        r = results[-1]
        print(f"{config}: HF {r.hf.tokens_per_cpu_second:.1f} tok/CPU-s, ours {r.ours.tokens_per_cpu_second:.1f}",
              flush=True)
    print()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.model}, max_new_tokens {args.max_new_tokens}")
    print(format_table(results))
    out = args.json_out or (None if args.quick else RESULTS_DIR / "sampler_throughput.json")
    if out:
        record.update(rows=[asdict(r) for r in results], table=format_table(results))
        print(f"\nrecord: {finish_record(record, out)}")
    return results


if __name__ == "__main__":
    main()
