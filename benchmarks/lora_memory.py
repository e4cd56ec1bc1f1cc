"""LoRA against full fine-tuning: peak memory and DPO training throughput, one configuration per process.

    python benchmarks/lora_memory.py                                   # bundled SmolLM2-135M: full vs LoRA r16
    python benchmarks/lora_memory.py --model 1b --modes lora --precision bf16-true --pairs-per-step 2
    python benchmarks/lora_memory.py --ranks 8,64 --threads 1 --json-out lora.json

Prints a markdown table, a row per configuration: trainable parameters, the model state the run
holds (weights, gradients, optimizer states, measured from the tensors after a step), the resident
memory once the model is loaded and the reference scored (before the first step), the peak over
the training steps, and tokens per CPU-second (and per wall-clock second).

Why it is built this way:
- The step is the trainer's: the causal LM in the precision's dtype, LoRA added by the trainer's own
  `lora.add_adapters`, `SequenceLogprobModel` under the precision's autocast, `preference_forward`
  with a precomputed reference (scored by the policy with its adapters off, untimed), backward,
  clipping and the trainer's `make_optimizer` (fused AdamW; CompensatedAdamW for full bf16-true).
- Pairs are the bundled demo set through the model's renderer: the quickstart's data.
- Each configuration runs in its own subprocess, so its memory is its own. "RSS before steps" is the
  resident memory once the model is loaded and the reference scored; "peak RSS in steps" is the
  peak over the training steps alone (Linux's VmHWM, reset before the first step), so loading does
  not set it. Full fine-tuning adds gradients and AdamW's two moments, 3x the weights; LoRA adds
  activations and the adapters' small state.
- Speed is tokens (prompt+chosen plus prompt+rejected) per CPU-second of the process at `--threads`
  (default 1): on a machine shared with other jobs it does not count time spent waiting for a core.
- `--model 1b` is a random-init Llama-3.2-1B-like shape (the tokenizer's ids are all below its vocab).
  Its full fine-tuning needs 16 bytes per parameter of state (about 20 GB) in fp32; the script
  estimates it and skips a configuration whose estimate exceeds `--max-state-gb`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time

MODEL_SHAPES = {
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True),
}
# Bytes of weights + gradients + optimizer states per parameter in full fine-tuning.
FULL_STATE_BYTES = {"fp32": 16, "bf16-mixed": 16, "bf16-true": 10}


def build_model(model: str, dtype):
    """The bundled model, or a random-init model of a named shape, and the bundled tokenizer."""
    import torch

    from cookbook.models import DEFAULT_MODEL, load_model_and_tokenizer, load_tokenizer

    if model == "smollm2":
        causal_lm, tokenizer = load_model_and_tokenizer(DEFAULT_MODEL, dtype=str(dtype).removeprefix("torch."),
                                                        device="cpu")
        return causal_lm, tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer()
    config = LlamaConfig(**MODEL_SHAPES[model], max_position_embeddings=4096, attn_implementation="sdpa",
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: a float32 copy first would set the peak
    try:
        causal_lm = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    return causal_lm.eval(), tokenizer


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The process's peak resident memory since start, or since `reset_peak_rss` (Linux: VmHWM)."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


def reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0), so the steps' own peak
    # is measured without the loading's.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def run_one(args) -> dict:
    """One configuration, in this process: returns its measurements."""
    import torch

    from cookbook.datasets.load import load_preference_data
    from cookbook.datasets.preference import DemoBuilder
    from cookbook.preference.batching import make_collate
    from cookbook.preference.reference import TableReference, fill_reference_logps
    from cookbook.preference.step import LossSettings, preference_forward
    from cookbook.renderers import default_renderer_name, get_renderer
    from cookbook.training import lora
    from cookbook.training.distributed import DistInfo
    from cookbook.training.logprobs import SequenceLogprobModel
    from cookbook.training.precision import plan_for
    from cookbook.training.step_runner import make_optimizer

    torch.set_num_threads(args.threads)
    plan = plan_for(args.precision, torch.device("cpu"))
    causal_lm, tokenizer = build_model(args.model, plan.param_dtype)
    adapters = None
    if args.rank:
        adapters = lora.add_adapters(causal_lm, lora.LoraSettings(args.rank, lora.DEFAULT_ALPHA, 0.0, lora.ALL_LINEAR))
    trainable, total = lora.count_parameters(causal_lm)
    policy = SequenceLogprobModel(causal_lm, compute_context=plan.autocast)
    renderer = get_renderer(default_renderer_name(tokenizer), tokenizer)
    num_steps = args.warmup + args.steps
    data = load_preference_data(DemoBuilder(max_pairs=num_steps * args.pairs_per_step, test_size=0), renderer,
                                args.max_length, verbose=False)
    collate = make_collate("auto", tokenizer.pad_token_id, causal_lm).collate
    micro = [list(range(start, min(start + args.micro_batch_size, len(data.train))))
             for start in range(0, len(data.train), args.micro_batch_size)]
    with adapters.adapters_off() if adapters else contextlib.nullcontext():
        reference = TableReference(fill_reference_logps(policy.eval(), data.train, micro, len(micro), len(data.train),
                                                        collate, torch.device("cpu"), show_progress=False))
    policy.train()
    config = argparse.Namespace(learning_rate=1e-5, weight_decay=0.0)
    optimizer = make_optimizer(policy, config, plan, DistInfo(0, 1, 0, torch.device("cpu")), "none")
    settings = LossSettings("dpo", 0.1)
    per_step = args.pairs_per_step // args.micro_batch_size
    rss_before_steps, load_peak = current_rss_bytes(), peak_rss_bytes()
    reset_peak_rss()
    tokens = cpu_seconds = wall_seconds = 0.0
    grad_bytes = 0
    for step in range(num_steps):
        cpu_start, wall_start, step_tokens = time.process_time(), time.perf_counter(), 0
        for ids in micro[step * per_step:(step + 1) * per_step]:
            batch = collate([data.train[i] for i in ids], ids)
            result = preference_forward(policy, batch, settings, reference(batch))
            (result.loss_sum / args.pairs_per_step).backward()
            step_tokens += result.num_real_tokens
        torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.grad is not None], 1.0)
        grad_bytes = tensor_bytes(p.grad for p in policy.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            tokens += step_tokens
            cpu_seconds += time.process_time() - cpu_start
            wall_seconds += time.perf_counter() - wall_start
    optimizer_bytes = tensor_bytes(v for state in optimizer.state.values() for v in state.values()
                                   if torch.is_tensor(v) and v.dim() > 0)
    return {
        "model": args.model, "mode": f"LoRA r{args.rank}" if args.rank else "full", "precision": plan.name,
        "threads": args.threads, "trainable": trainable, "total": total,
        "weights_gb": tensor_bytes(causal_lm.parameters()) / 1e9, "grads_gb": grad_bytes / 1e9,
        "optimizer_gb": optimizer_bytes / 1e9,
        "rss_before_steps_gb": rss_before_steps / 1e9,
        "load_peak_rss_gb": load_peak / 1e9, "steps_peak_rss_gb": peak_rss_bytes() / 1e9,
        "tokens_per_cpu_s": tokens / cpu_seconds, "tokens_per_s": tokens / wall_seconds,
        "tokens_per_step": tokens / args.steps, "steps": args.steps,
    }


def estimated_state_gb(model: str, precision: str) -> float:
    """Weights, gradients and optimizer states of full fine-tuning, before running it."""
    shape = MODEL_SHAPES.get(model)
    if shape is None:  # the bundled SmolLM2-135M
        return 135e6 * FULL_STATE_BYTES.get(precision, 16) / 1e9
    h, layers, inter, vocab = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"], shape["vocab_size"]
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    params = vocab * h + layers * (2 * h * h + 2 * h * kv + 3 * h * inter)
    return params * FULL_STATE_BYTES.get(precision, 16) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", choices=["smollm2", *MODEL_SHAPES])
    parser.add_argument("--modes", default="full,lora", help="full, lora or both")
    parser.add_argument("--ranks", default="16", help="LoRA ranks, comma-separated")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16-mixed or bf16-true, comma-separated")
    parser.add_argument("--pairs-per-step", type=int, default=16)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-state-gb", type=float, default=12.0,
                        help="skip full fine-tuning whose estimated weights+grads+AdamW exceed this")
    parser.add_argument("--json-out", help="where the run's record goes (default benchmarks/results/lora_memory_<model>.json)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration (JSON) here
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(argparse.Namespace(**json.loads(args.one)))))
        return

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from run_record import RESULTS_DIR, finish_record, run_child, start_record

    record = {**start_record(__file__, sys.argv[1:]), "rows": [], "skipped": []}
    for precision in args.precision.split(","):
        for mode in args.modes.split(","):
            for rank in ([0] if mode == "full" else [int(r) for r in args.ranks.split(",")]):
                if mode == "full" and estimated_state_gb(args.model, precision) > args.max_state_gb:
                    record["skipped"].append(
                        f"full fine-tuning of {args.model} in {precision}: about "
                        f"{estimated_state_gb(args.model, precision):.1f} GB of weights, gradients and AdamW "
                        f"states (> --max-state-gb {args.max_state_gb})")
                    print("skipped " + record["skipped"][-1], file=sys.stderr)
                    continue
                one = {k: v for k, v in vars(args).items() if k not in ("modes", "ranks", "json_out", "one")}
                one.update(precision=precision, rank=rank)
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
                outcome = run_child([sys.executable, __file__, "--one", json.dumps(one)], timeout=7200, env=env)
                row = outcome if isinstance(outcome, dict) else {"mode": mode, "rank": rank, "precision": precision,
                                                                 "failed": outcome}
                record["rows"].append(row)
                print(f"{mode} r{rank} {precision}: {outcome if isinstance(outcome, str) else 'done'}", file=sys.stderr)
    record["table"] = format_table([r for r in record["rows"] if "failed" not in r])
    record["ratios"] = lora_ratios(record["rows"])
    out = finish_record(record, args.json_out or RESULTS_DIR / f"lora_memory_{args.model}.json")
    print(record["table"])
    print("\n".join(record["ratios"]))
    print(f"\nrecord: {out}")
    failed = [r for r in record["rows"] if "failed" in r]
    if failed:
        raise SystemExit(f"{len(failed)} configuration(s) failed: " + "; ".join(r["failed"] for r in failed))


def format_table(rows: list[dict]) -> str:
    lines = ["| model | mode | precision | trainable / total | weights | grads | AdamW | RSS before steps "
             "| peak RSS in steps | tok/CPU-s | tok/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['precision']} | {r['trainable'] / 1e6:,.2f}M / {r['total'] / 1e6:,.1f}M "
            f"({100 * r['trainable'] / r['total']:.2f}%) | {r['weights_gb']:.2f} GB | {r['grads_gb']:.3f} GB | "
            f"{r['optimizer_gb']:.3f} GB | {r['rss_before_steps_gb']:.2f} GB | {r['steps_peak_rss_gb']:.2f} GB | "
            f"{r['tokens_per_cpu_s']:.0f} | {r['tokens_per_s']:.0f} |")
    return "\n".join(lines)


def lora_ratios(rows: list[dict]) -> list[str]:
    """LoRA against full fine-tuning in the same precision, from this run's rows."""
    lines = []
    ok = [r for r in rows if "failed" not in r]
    for full in (r for r in ok if r["mode"] == "full"):
        for lora in (r for r in ok if r["mode"] != "full" and r["precision"] == full["precision"]):
            lines.append(f"- {lora['mode']} / full, {full['precision']}: tokens/CPU-s "
                         f"x{lora['tokens_per_cpu_s'] / full['tokens_per_cpu_s']:.2f}, peak RSS in steps "
                         f"x{lora['steps_peak_rss_gb'] / full['steps_peak_rss_gb']:.2f}")
    return lines


if __name__ == "__main__":
    main()
