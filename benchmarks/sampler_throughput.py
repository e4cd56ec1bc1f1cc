"""Sampling throughput: `cookbook.sampling.sample` (native) against transformers' `model.generate` and,
when it is installed, a vLLM engine (`cookbook.sampling.vllm_engine`), on the same prompts, model,
token budget, sampling settings and precision.

    .venv/bin/python benchmarks/sampler_throughput.py --round             # the on-policy round's workload
    .venv/bin/python benchmarks/sampler_throughput.py                     # batch 8 and 32, fp32 and bf16
    .venv/bin/python benchmarks/sampler_throughput.py --batch-sizes 8 --precisions bf16 --no-vllm
    .venv/bin/python benchmarks/sampler_throughput.py --quick             # seconds: a smoke run
    .venv/bin/python benchmarks/sampler_throughput.py --round --profile   # where the native sampler's time goes

`--round` is what an on-policy round samples: 64 bundled IFEval prompts x 4 replies each,
temperature 0.7, 256 new tokens, bf16, the native sampler at the recipe's batch of 32.

Prints one markdown table, a row per configuration with every side: generated tokens per
CPU-second and per wall-clock second, and the native sampler's and vLLM's ratios to transformers
and vLLM's to native; the vLLM engine's start-up (wall and CPU seconds) is printed beside it.

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
- Each configuration runs the native and transformers sides one after the other in the same process
  after a short warm-up of each; the greedy fp32 row also reports how many replies are
  token-identical. vLLM runs in a child process per precision (one engine per process, its dtype
  fixed at start; in-process, as the recipes run it, so it decodes on `--threads` torch threads),
  which times its engine start separately from sampling; vLLM schedules its own batches, so the
  batch size does not apply to it, and it gets the same per-reply seeds the recipes give it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_record, when imported by a test
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
    prompts: int  # sequences sampled: distinct prompts x samples per prompt
    ours: SideResult
    hf: SideResult
    identical: int | None  # greedy fp32: replies equal token for token (None otherwise)
    vllm: SideResult | None = None
    vllm_identical: int | None = None  # greedy fp32: vLLM's replies equal to the native sampler's


def load_prompts(tokenizer, count: int, samples_per_prompt: int = 1) -> list[list[int]]:
    """The first `count` bundled IFEval prompts, each repeated `samples_per_prompt` times in a row
    (as a round samples them)."""
    from cookbook.renderers import default_renderer_name, get_renderer

    renderer = get_renderer(default_renderer_name(tokenizer), tokenizer)
    rows = [json.loads(line) for line in PROMPTS_FILE.read_text().splitlines() if line.strip()]
    if count > len(rows):
        raise SystemExit(f"asked for {count} prompts; {PROMPTS_FILE.name} has {len(rows)}")
    return [renderer.build_generation_prompt([{"role": "user", "content": row["prompt"]}])
            for row in rows[:count] for _ in range(samples_per_prompt)]


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


VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def vllm_child(spec: dict) -> dict:
    """In a child process: build one engine for `spec`'s precision, then sample each temperature's
    prompts with it; returns the engine start-up and each temperature's side and replies."""
    from cookbook.sampling import SamplingSettings, prompt_seeds
    from cookbook.sampling.vllm_engine import EngineOptions, get_engine

    prompts = spec["prompts"]
    started, cpu_started = time.perf_counter(), time.process_time()
    engine = get_engine(EngineOptions(spec["model_dir"], dtype=VLLM_DTYPES[spec["precision"]],
                                      max_model_len=max(map(len, prompts)) + spec["max_new_tokens"],
                                      compile=spec["compile"], kv_cache_bytes=spec["kv_cache_bytes"]))
    start = {"wall_seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started}
    warmup = SamplingSettings(4)
    engine.sample(prompts[:2], warmup, spec["stop_ids"])
    rows = []
    for temperature in spec["temperatures"]:
        settings = SamplingSettings(spec["max_new_tokens"], temperature=temperature)
        seeds = prompt_seeds(len(prompts), torch.Generator().manual_seed(spec["seed"]))
        cpu, wall = time.process_time(), time.perf_counter()
        completions = engine.sample(prompts, settings, spec["stop_ids"], seeds=seeds)
        side = SideResult(sum(len(c.tokens) for c in completions), time.process_time() - cpu,
                          time.perf_counter() - wall)
        rows.append({"temperature": temperature, "side": asdict(side), "replies": [c.tokens for c in completions]})
    return {"start": start, "rows": rows, "per_request_seeds": engine.per_request_seeds}


def run_vllm(model_dir: str, prompts, precision: str, temperatures: list[float], args, stop_ids: list[int]) -> dict:
    """`vllm_child` in its own process, at `--threads` torch threads."""
    spec = {"model_dir": model_dir, "prompts": prompts, "precision": precision, "temperatures": temperatures,
            "max_new_tokens": args.max_new_tokens, "stop_ids": stop_ids, "seed": args.seed,
            "compile": not args.vllm_eager, "kv_cache_bytes": int(args.vllm_kv_cache_gib * 2**30)}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    child = subprocess.run([sys.executable, __file__, "--vllm-child"], input=json.dumps(spec), env=env,
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise SystemExit(f"the vLLM child failed (exit {child.returncode}):\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def timed(run, *args) -> tuple[list[list[int]], SideResult]:
    cpu, wall = time.process_time(), time.perf_counter()
    replies = run(*args)
    result = SideResult(sum(len(r) for r in replies), time.process_time() - cpu, time.perf_counter() - wall)
    return replies, result


def run_config(model, prompts, config: Config, args, stop_ids: list[int], pad: int,
               vllm_row: dict | None = None) -> ConfigResult:
    side_args = (model, prompts, config, args.max_new_tokens, stop_ids, pad, args.seed)
    hf_replies, hf = timed(hf_generate, *side_args)
    our_replies, ours = timed(our_sample, *side_args)
    greedy_fp32 = config.temperature == 0 and config.precision == "fp32"
    identical = sum(a == b for a, b in zip(hf_replies, our_replies)) if greedy_fp32 else None
    vllm = SideResult(**vllm_row["side"]) if vllm_row else None
    vllm_identical = (sum(a == b for a, b in zip(vllm_row["replies"], our_replies))
                      if vllm_row and greedy_fp32 else None)
    return ConfigResult(config, len(prompts), ours, hf, identical, vllm, vllm_identical)


def profile_native(model, prompts, config: Config, args, stop_ids: list[int], pad: int, top: int = 15) -> dict:
    """The native sampler on `config` under torch.profiler: its top operators by self CPU time, and
    how the total splits between matmuls, attention and everything else."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        replies = our_sample(model, prompts, config, args.max_new_tokens, stop_ids, pad, args.seed)
    events = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    groups = {"matmul (aten::mm/addmm/bmm/linear)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul",
                                                     "aten::linear"),
              "attention (aten::scaled_dot_product_attention and its kernels)": ("attention", "sdpa", "_flash"),
              "copies and casts (aten::copy_/to/_to_copy: cache writes, bf16 casts)": ("aten::copy_", "aten::to", "aten::_to_copy")}
    shares = {name: sum(e.self_cpu_time_total for e in events if any(k in e.key for k in keys)) / total
              for name, keys in groups.items()}
    shares["everything else"] = 1 - sum(shares.values())
    rows = [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls": e.count}
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]]
    return {"config": asdict(config), "tokens": sum(len(r) for r in replies), "self_cpu_seconds": total / 1e6,
            "shares": shares, "top_ops": rows}


def format_profile(profile: dict) -> str:
    lines = ["| operator | self CPU share | calls |", "|---|---:|---:|"]
    lines += [f"| {row['op']} | {row['self_cpu_share']:.1%} | {row['calls']:,} |" for row in profile["top_ops"]]
    lines += ["", "| group | self CPU share |", "|---|---:|"]
    lines += [f"| {name} | {share:.1%} |" for name, share in profile["shares"].items()]
    return "\n".join(lines)


def format_table(results: list[ConfigResult]) -> str:
    lines = [
        "| batch | precision | sampling | prompts | tokens (HF / ours) | HF tok/CPU-s | ours tok/CPU-s | ratio "
        "| HF tok/s | ours tok/s | ratio | identical greedy replies |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        identical = f"{r.identical}/{r.prompts}" if r.identical is not None else "n/a"
        lines.append(
            f"| {r.config.batch_size} | {r.config.precision} | {sampling_name(r.config)} | {r.prompts} "
            f"| {r.hf.tokens} / {r.ours.tokens} | {r.hf.tokens_per_cpu_second:.1f} | {r.ours.tokens_per_cpu_second:.1f} "
            f"| x{r.ours.tokens_per_cpu_second / r.hf.tokens_per_cpu_second:.2f} "
            f"| {r.hf.tokens_per_second:.1f} | {r.ours.tokens_per_second:.1f} "
            f"| x{r.ours.tokens_per_second / r.hf.tokens_per_second:.2f} | {identical} |"
        )
    return "\n".join(lines)


def sampling_name(config: Config) -> str:
    return "greedy" if config.temperature == 0 else f"T={config.temperature:g}"


def format_vllm_table(results: list[ConfigResult]) -> str:
    """vLLM beside the native sampler (ours) and transformers, the rows that have it."""
    lines = [
        "| precision | sampling | prompts | tokens (vLLM / ours) | vLLM tok/CPU-s | ours tok/CPU-s | HF tok/CPU-s "
        "| vLLM / ours | vLLM / HF | vLLM tok/s | ours tok/s | vLLM / ours (wall) | greedy replies = ours |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in results if r.vllm is not None):
        identical = f"{r.vllm_identical}/{r.prompts}" if r.vllm_identical is not None else "n/a"
        lines.append(
            f"| {r.config.precision} | {sampling_name(r.config)} | {r.prompts} | {r.vllm.tokens} / {r.ours.tokens} "
            f"| {r.vllm.tokens_per_cpu_second:.1f} | {r.ours.tokens_per_cpu_second:.1f} | {r.hf.tokens_per_cpu_second:.1f} "
            f"| x{r.vllm.tokens_per_cpu_second / r.ours.tokens_per_cpu_second:.2f} "
            f"| x{r.vllm.tokens_per_cpu_second / r.hf.tokens_per_cpu_second:.2f} "
            f"| {r.vllm.tokens_per_second:.1f} | {r.ours.tokens_per_second:.1f} "
            f"| x{r.vllm.tokens_per_second / r.ours.tokens_per_second:.2f} | {identical} |"
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
    parser.add_argument("--prompts", type=int, default=None,
                        help="distinct prompts (default: the largest batch x --batches, over --samples-per-prompt)")
    parser.add_argument("--samples-per-prompt", type=int, default=1, help="replies sampled from each prompt")
    parser.add_argument("--round", action="store_true",
                        help="the on-policy round: 64 prompts x 4 replies, T=0.7, 256 new tokens, bf16, batch 32")
    parser.add_argument("--no-vllm", dest="vllm", action="store_false", help="leave vLLM out even if installed")
    parser.add_argument("--vllm-eager", action="store_true",
                        help="start the vLLM engine without torch.compile (seconds, not a minute; slower decoding)")
    parser.add_argument("--vllm-kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--profile", action="store_true",
                        help="instead of the throughput table: the native sampler on the first configuration under "
                             "torch.profiler (record: benchmarks/results/sampler_profile.json)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="batch 4, 16 new tokens: a smoke run")
    parser.add_argument("--json-out", default=None,
                        help="where the run's record goes (default benchmarks/results/sampler_throughput.json, "
                             "with --round sampler_throughput_round.json; --quick writes none unless given)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.max_new_tokens = "4", 16
    if args.round:
        args.batch_sizes, args.precisions, args.temperatures = "32", "bf16", "0.7"
        args.prompts, args.samples_per_prompt, args.max_new_tokens = 64, 4, 256
    return args


def configs_for(args) -> list[Config]:
    return [Config(int(b), p, float(t)) for b in args.batch_sizes.split(",") for p in args.precisions.split(",")
            for t in args.temperatures.split(",")]


def main(argv=None) -> list[ConfigResult]:
    from run_record import RESULTS_DIR, finish_record, start_record

    args = parse_args(argv)
    record = start_record(__file__, sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    from cookbook.models import load_model_and_tokenizer, resolve_model_path
    from cookbook.renderers import default_renderer_name, get_renderer
    from cookbook.sampling.vllm_engine import vllm_version

    model, tokenizer = load_model_and_tokenizer(args.model, dtype="float32", device="cpu")
    stop_ids = list(get_renderer(default_renderer_name(tokenizer), tokenizer).get_stop_token_ids())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    configs = configs_for(args)
    sequences = max(c.batch_size for c in configs) * args.batches
    prompts = load_prompts(tokenizer, args.prompts or -(-sequences // args.samples_per_prompt), args.samples_per_prompt)
    sequences = len(prompts) if args.prompts else sequences
    if args.profile:
        config = configs[0]
        count = sequences if args.prompts else config.batch_size * args.batches
        our_sample(model, prompts[:2], Config(2, config.precision, 0.0), 4, stop_ids, pad, args.seed)  # warm-up
        native_profile = profile_native(model, prompts[:count], config, args, stop_ids, pad)
        print(f"the native sampler under torch.profiler, {config}, {native_profile['tokens']} tokens:")
        print(format_profile(native_profile))
        out = args.json_out or (None if args.quick else RESULTS_DIR / "sampler_profile.json")
        if out:
            record.update(profile=native_profile, table=format_profile(native_profile))
            print(f"\nrecord: {finish_record(record, out)}")
        return []
    with_vllm = args.vllm and vllm_version() is not None
    vllm_runs = {}
    if with_vllm:
        for precision in dict.fromkeys(c.precision for c in configs):
            temperatures = list(dict.fromkeys(c.temperature for c in configs if c.precision == precision))
            vllm_runs[precision] = run_vllm(resolve_model_path(args.model), prompts[:sequences], precision,
                                            temperatures, args, stop_ids)
            start = vllm_runs[precision]["start"]
            print(f"vLLM {vllm_version()} engine ({precision}) started in {start['wall_seconds']:.1f} s, "
                  f"{start['cpu_seconds']:.1f} CPU-s", flush=True)
    warmup = Config(2, "fp32", 0.0)
    for run in (hf_generate, our_sample):
        run(model, prompts[:2], warmup, 4, stop_ids, pad, args.seed)
    results = []
    for config in configs:
        count = sequences if args.prompts else config.batch_size * args.batches
        vllm_row = next((row for row in vllm_runs[config.precision]["rows"] if row["temperature"] == config.temperature
                         ), None) if with_vllm and count == sequences else None
        results.append(run_config(model, prompts[:count], config, args, stop_ids, pad, vllm_row))
        r = results[-1]
        vllm_part = f", vLLM {r.vllm.tokens_per_cpu_second:.1f}" if r.vllm else ""
        print(f"{config}: HF {r.hf.tokens_per_cpu_second:.1f} tok/CPU-s, ours {r.ours.tokens_per_cpu_second:.1f}"
              f"{vllm_part}", flush=True)
    print()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.model}, max_new_tokens {args.max_new_tokens}")
    print(format_table(results))
    tables = {"table": format_table(results)}
    if vllm_runs:
        tables["vllm_table"] = format_vllm_table(results)
        print(f"\nvLLM {vllm_version()} (batches of its own choosing):")
        print(tables["vllm_table"])
    out = args.json_out or (None if args.quick else RESULTS_DIR / ("sampler_throughput_round.json" if args.round
                                                                 else "sampler_throughput.json"))
    if out:
        record.update(rows=[asdict(r) for r in results], **tables, vllm_version=vllm_version() if with_vllm else None,
                      vllm_engines={p: {"start": run["start"], "per_request_seeds": run["per_request_seeds"]}
                                    for p, run in vllm_runs.items()})
        print(f"\nrecord: {finish_record(record, out)}")
    return results


if __name__ == "__main__":
    if sys.argv[1:] == ["--vllm-child"]:
        print(json.dumps(vllm_child(json.loads(sys.stdin.read()))))
    else:
        main()
