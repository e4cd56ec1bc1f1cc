"""DPO training-step throughput: padded vs packed vs prefix-shared rows, fp32 vs mixed precision,
reference in the step vs precomputed, and (with --vs-trl) TRL's DPOTrainer on the same pairs, model
and settings.

    python benchmarks/dpo_throughput.py                                   # the trainer's defaults (layout, precision)
    python benchmarks/dpo_throughput.py --layouts padded,packed,prefix_shared --precision fp32,bf16-mixed
    python benchmarks/dpo_throughput.py --model 1b --pairs-per-step 8     # on a GPU (bf16-mixed, flex attention)
    benchmarks/.venv-bench/bin/python benchmarks/dpo_throughput.py --vs-trl   # after setup_bench_env.sh

    python benchmarks/dpo_throughput.py --precision bf16-mixed --steps 1 --profile   # where a step's time goes

Prints one table (markdown) of real tokens/s, pairs/s, MFU, peak memory and reference-pass time per
configuration, then the speed-up of each technique over padded rows and, with --vs-trl, ours / TRL
and the headline: ours default / TRL best. Writes the run's record (command, versions, machine, load
average at start and end, every row, failed ones included) to
benchmarks/results/dpo_throughput_<max-length>.json (`--json-out` elsewhere). If any configuration
fails (killed, crashed, timed out, or TRL's tokens differ from ours), the run exits non-zero, and a
headline that compares a failed configuration is not written: the best *surviving* TRL row is not
TRL's best.

Why it is built this way:
- Pairs are synthetic but made of real text: each token is a whole word of the SmolLM2 vocabulary
  (" word"), so the text TRL tokenizes gives back exactly our token ids (checked in every TRL run;
  a difference stops the run).
  Lengths are uniform in [min_frac, 1] x max_length, so ~2/3 of padded slots hold real tokens.
- "Real tokens" are prompt+chosen plus prompt+rejected, the tokens a padded layout holds: the same
  count for every layout and for TRL, so tokens/s ratios are ratios of step time.
- Each configuration runs in its own subprocess, so peak host RSS and GPU memory belong to that
  configuration alone, and one run's allocator cache or compiled kernels do not help the next.
- Our step mirrors the trainer: SequenceLogprobModel (the decoder under the precision's autocast, an
  fp32 LM head) + preference_forward + backward + grad clipping + the trainer's optimizer
  (`make_optimizer`: fused AdamW on fp32 masters). `--layouts auto --precision auto` (the defaults)
  are what the trainer's `layout=auto precision=auto` resolve to on this machine. TRL gets the same
  precision the way its users ask for it: fp32, or `bf16=True` over fp32 weights (autocast). "precomputed" scores the reference with the initial policy before the
  timed steps (as the trainer's cache and TRL's precompute_ref_log_probs do); "in-step" runs a frozen
  copy inside every step.
- MFU counts 6*N FLOPs per real token for the policy, plus 2*N when the reference runs in the step;
  N is the matmul parameters (embeddings count only as the LM head). Attention FLOPs are left out.
- `--profile` runs one more step after the timed ones under torch.profiler (so the timed figures
  carry no profiler overhead) and records the shares of its CPU time: attention, LM head, the
  decoder's other matmuls, AdamW and the rest.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import random
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from types import SimpleNamespace

from cookbook.datasets.tokenize import TokenizedPair as Pair
from cookbook.datasets.tokenize import TokenizedSequence as Sequence

LAYOUTS = ("padded", "packed", "prefix_shared")
# fp16-mixed is left out: on CPU it has no fast kernels, and on GPU bf16 is the one to compare.
PRECISIONS = ("auto", "fp32", "bf16-mixed", "bf16-true")
REFERENCE_MODES = ("precomputed", "in-step")
MODEL_SHAPES = {
    # SmolLM2-135M's shape, random init
    "135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True),
    # Llama-3.2-1B-like
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True),
    # Llama-3.2-3B-like
    "3b": dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True),
}
# Dense bf16 tensor-core peaks (no sparsity), for MFU.
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


@dataclass(frozen=True)
class TextPair:
    prompt: str
    chosen: str
    rejected: str


# ----------------------------------------------------------------------------------------------
# Synthetic pairs


def word_vocabulary(tokenizer) -> list[tuple[int, str]]:
    """(token id, " word") for vocabulary entries that are one lowercase word with a leading space
    and that the tokenizer gives back as that single token."""
    candidates = []
    for token, token_id in tokenizer.get_vocab().items():
        word = token[1:]
        if token.startswith("\u0120") and 2 <= len(word) <= 8 and word.isascii() and word.isalpha() and word.islower():
            candidates.append((token_id, " " + word))
    encoded = tokenizer([text for _, text in candidates], add_special_tokens=False)["input_ids"]
    return sorted((token_id, text) for (token_id, text), ids in zip(candidates, encoded) if ids == [token_id])


def make_pairs(tokenizer, count: int, max_length: int, min_frac: float, prompt_frac: float, seed: int):
    """`count` pairs of (token Pair, TextPair). Each sequence is prompt + completion + end-of-turn, of
    total length uniform in [min_frac * max_length, max_length]; the prompt is about prompt_frac of
    the shorter sequence."""
    words = word_vocabulary(tokenizer)
    eos_id, eos_text = tokenizer.eos_token_id, tokenizer.eos_token
    rng = random.Random(seed)
    low = max(4, int(min_frac * max_length))
    pairs, texts = [], []
    for _ in range(count):
        chosen_length, rejected_length = rng.randint(low, max_length), rng.randint(low, max_length)
        shorter = min(chosen_length, rejected_length)
        prompt_length = min(max(1, round(prompt_frac * shorter * rng.uniform(0.5, 1.5))), shorter - 2)
        prompt = [rng.choice(words) for _ in range(prompt_length)]
        completions = [[rng.choice(words) for _ in range(n - prompt_length - 1)] for n in (chosen_length, rejected_length)]

        chosen, rejected = (_word_sequence(prompt, completion, eos_id) for completion in completions)
        pairs.append(Pair(chosen, rejected, prompt_length))
        texts.append(TextPair(
            prompt="".join(t for _, t in prompt),
            chosen="".join(t for _, t in completions[0]) + eos_text,
            rejected="".join(t for _, t in completions[1]) + eos_text,
        ))
    return pairs, texts


def _word_sequence(prompt, completion, eos_id: int) -> Sequence:
    tokens = [i for i, _ in prompt] + [i for i, _ in completion] + [eos_id]
    return Sequence(tokens, [0.0] * len(prompt) + [1.0] * (len(tokens) - len(prompt)))


# ----------------------------------------------------------------------------------------------
# Models and measurements


def build_model(name: str, dtype, device, attn: str, seed: int):
    import torch

    if name == "smollm2":
        from cookbook.models import DEFAULT_MODEL, load_model_and_tokenizer

        model, _ = load_model_and_tokenizer(DEFAULT_MODEL, dtype=str(dtype).removeprefix("torch."),
                                            device=device.type, attn_implementation=attn)
        return model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(max_position_embeddings=8192, attn_implementation=attn, **MODEL_SHAPES[name])
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model


def matmul_parameters(model) -> int:
    """Parameters that take part in a matmul per token: everything but the input embedding table,
    which is a lookup (a tied table still counts once, as the LM head)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    tied = embedding is model.get_output_embeddings().weight
    return total if tied else total - embedding.numel()


def peak_flops(device, override_tflops: float | None) -> float | None:
    import torch

    if override_tflops:
        return override_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None


def host_peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class RunResult:
    impl: str
    layout: str
    reference: str
    precision: str
    steps: int
    step_seconds: float
    tokens_per_second: float
    pairs_per_second: float
    mfu: float | None
    reference_seconds: float
    gpu_peak_bytes: int | None
    host_peak_rss_bytes: int
    slot_fill: float
    real_tokens_per_step: float
    cpu_seconds_per_step: float
    tokens_per_cpu_second: float
    note: str = ""
    profile: dict | None = None  # with --profile: where one extra, untimed step's CPU time went


def resolve_device(args):
    import torch

    return torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_layout(layout: str, args, device) -> str:
    """`auto` becomes what the trainer's layout=auto picks for the attention it loads the model with."""
    from cookbook.preference.batching import choose_layout

    if layout != "auto":
        return layout
    # The trainer loads flex attention for padding-free rows on a GPU, sdpa elsewhere (Run.load_model).
    attention = args.attn if args.attn != "auto" else ("flex_attention" if device.type == "cuda" else "sdpa")
    return choose_layout("auto", attention)


def attention_for(layout: str, args, device) -> str:
    if args.attn != "auto":
        return args.attn
    # On a GPU, packed rows want block-sparse attention: sdpa would compute the whole row x row square.
    return "flex_attention" if device.type == "cuda" and layout != "padded" else "sdpa"


def trl_precision_name(precision: str) -> str:
    """How a TRL user asks for this precision."""
    return {"fp32": "fp32", "bf16-mixed": "bf16=True", "bf16-true": "bf16 weights, bf16=True"}[precision]


def step_batches(pairs, pairs_per_step: int, total_steps: int):
    return [list(range(i * pairs_per_step, (i + 1) * pairs_per_step)) for i in range(total_steps)]


# ----------------------------------------------------------------------------------------------
# Our step


def run_ours(args, layout: str, reference_mode: str, precision: str) -> RunResult:
    import torch

    from cookbook.models import load_tokenizer
    from cookbook.preference.batching import collate_pairs
    from cookbook.preference.step import LossSettings, preference_forward, reference_pair_logps
    from cookbook.training.distributed import DistInfo
    from cookbook.training.logprobs import SequenceLogprobModel
    from cookbook.training.precision import plan_for
    from cookbook.training.step_runner import make_optimizer

    device = resolve_device(args)
    plan = plan_for(precision, device)
    tokenizer = load_tokenizer()
    timed_stop = args.warmup_steps + args.steps
    total_steps = timed_stop + (1 if args.profile else 0)  # the profiled step comes after the timed ones
    pairs, _ = make_pairs(tokenizer, total_steps * args.pairs_per_step, args.max_length, args.min_frac,
                          args.prompt_frac, args.seed)
    attention = attention_for(layout, args, device)
    causal_lm = build_model(args.model, plan.param_dtype, device, attention, args.seed)
    policy = SequenceLogprobModel(causal_lm, compute_context=plan.autocast).train()
    settings = LossSettings(loss_type="dpo", beta=0.1)
    batch_indices = step_batches(pairs, args.pairs_per_step, total_steps)

    def collate(indices):
        return collate_pairs([pairs[i] for i in indices], indices, tokenizer.pad_token_id, layout=layout,
                             attention=attention, max_row_tokens=args.max_row_tokens).to(device)

    reference_seconds = 0.0
    cached = {}
    reference = None
    if reference_mode == "precomputed":
        # The initial policy is the reference: score every batch once, before training.
        # The first batch doubles as warm-up; the figure reported is seconds per batch after it.
        policy.eval()
        cached[0] = reference_pair_logps(policy, collate(batch_indices[0]))
        synchronize(device)
        start = time.perf_counter()
        for step, indices in enumerate(batch_indices[1:], start=1):
            cached[step] = reference_pair_logps(policy, collate(indices))
        synchronize(device)
        reference_seconds = (time.perf_counter() - start) / max(1, len(batch_indices) - 1)
        policy.train()
    else:
        reference = SequenceLogprobModel(copy.deepcopy(causal_lm).requires_grad_(False),
                                         compute_context=plan.autocast).eval()

    # The trainer's own optimizer choice, for one process (strategy "none").
    optimizer = make_optimizer(policy, SimpleNamespace(learning_rate=args.lr, weight_decay=0.0), plan,
                               DistInfo(rank=0, world_size=1, local_rank=0, device=device), "none")
    step_times, cpu_times, in_step_reference, real_tokens, slots = [], [], 0.0, 0, 0
    synchronize(device)
    previous, previous_cpu = time.perf_counter(), time.process_time()
    profile = None
    for step, indices in enumerate(batch_indices):
        if step == args.warmup_steps and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        profiler = None
        if step == timed_stop:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
            profiler.__enter__()
        batch = collate(indices)
        if reference is not None:
            ref_start = time.perf_counter()
            reference_logps = reference_pair_logps(reference, batch)
            synchronize(device)
            ref_elapsed = time.perf_counter() - ref_start
        else:
            reference_logps, ref_elapsed = cached[step], 0.0
        result = preference_forward(policy, batch, settings, reference_logps)
        (result.loss_sum / result.num_pairs).backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if profiler is not None:
            profiler.__exit__(None, None, None)
            profile = profile_shares(profiler, causal_lm.config.vocab_size, batch)
        now, now_cpu = time.perf_counter(), time.process_time()
        if args.warmup_steps <= step < timed_stop:
            step_times.append(now - previous)
            cpu_times.append(now_cpu - previous_cpu)
            in_step_reference += ref_elapsed
            real_tokens += batch.num_real_tokens
            slots += batch.num_slots
        previous, previous_cpu = now, now_cpu
    return summarize(args, "ours", layout, reference_mode, plan.name, causal_lm, device, step_times, cpu_times, real_tokens,
                     reference_seconds if reference is None else in_step_reference / len(step_times),
                     slots, note=f"attn={attention}; load {os.getloadavg()[0]:.1f}", profile=profile)


def profile_shares(profiler, vocab_size: int, batch) -> dict:
    """Where one step's CPU time went, by the profiler's self time per op: attention (sdpa forward
    and backward), the LM head (every op on a [*, vocab] tensor but the embedding lookup), the
    decoder's other matmuls, fused AdamW, and the rest (element-wise kernels, casts, norms, RoPE)."""
    buckets = dict.fromkeys(("attention", "lm_head", "decoder_matmuls", "optimizer", "other"), 0.0)
    other_ops: dict[str, float] = {}
    for event in profiler.key_averages(group_by_input_shape=True):
        name, shapes = event.key, [s for s in event.input_shapes if isinstance(s, list)]
        if "scaled_dot_product" in name or "flash_attention" in name:
            bucket = "attention"
        elif "embedding" not in name and any(vocab_size in shape for shape in shapes):
            bucket = "lm_head"
        elif name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"):
            bucket = "decoder_matmuls"
        elif "adam" in name.lower():
            bucket = "optimizer"
        else:
            bucket = "other"
        buckets[bucket] += event.self_cpu_time_total
        if bucket == "other":
            other_ops[name] = other_ops.get(name, 0.0) + event.self_cpu_time_total
    total = sum(buckets.values())
    largest_other = sorted(other_ops.items(), key=lambda item: -item[1])[:10]
    return {"self_cpu_seconds": total / 1e6, "shares": {k: v / total for k, v in buckets.items()},
            "largest_other_ops": {k: v / total for k, v in largest_other},
            "row_slots": batch.num_slots, "loss_tokens": int(batch.loss_tokens.target_ids.numel())}


def summarize(args, impl, layout, reference_mode, precision, model, device, step_times, cpu_times, real_tokens,
              reference_seconds, slots, note="", profile=None) -> RunResult:
    import torch

    seconds = sum(step_times)
    tokens_per_second = real_tokens / seconds
    flops_per_token = (6 + (2 if reference_mode == "in-step" else 0)) * matmul_parameters(model)
    peak = peak_flops(device, args.peak_tflops)
    return RunResult(
        impl=impl,
        layout=layout,
        reference=reference_mode,
        precision=precision,
        steps=len(step_times),
        step_seconds=seconds / len(step_times),
        tokens_per_second=tokens_per_second,
        pairs_per_second=args.pairs_per_step * len(step_times) / seconds,
        mfu=tokens_per_second * flops_per_token / peak if peak else None,
        reference_seconds=reference_seconds,
        gpu_peak_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        host_peak_rss_bytes=host_peak_rss_bytes(),
        slot_fill=real_tokens / slots if slots else float("nan"),
        real_tokens_per_step=real_tokens / len(step_times),
        cpu_seconds_per_step=sum(cpu_times) / len(cpu_times),
        tokens_per_cpu_second=real_tokens / sum(cpu_times),
        note=note,
        profile=profile,
    )


# ----------------------------------------------------------------------------------------------
# TRL's DPOTrainer on the same pairs


def run_trl(args, reference_mode: str, precision: str) -> RunResult:
    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from cookbook.models import load_tokenizer
    from cookbook.preference.batching import collate_padded
    from cookbook.training.precision import plan_for

    device = resolve_device(args)
    plan = plan_for(precision, device)
    tokenizer = load_tokenizer()
    total_steps = args.warmup_steps + args.steps
    pairs, texts = make_pairs(tokenizer, total_steps * args.pairs_per_step, args.max_length, args.min_frac,
                              args.prompt_frac, args.seed)
    dataset = datasets.Dataset.from_list([asdict(t) for t in texts])
    model = build_model(args.model, plan.param_dtype, device, "sdpa", args.seed)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends, self.cpu_ends = [], []

        def on_train_begin(self, *_, **__):
            synchronize(device)
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())

        def on_step_end(self, *_, **__):
            synchronize(device)
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())
            if len(self.ends) == args.warmup_steps + 1 and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as output_dir:
        config = DPOConfig(
            output_dir=output_dir,
            per_device_train_batch_size=args.pairs_per_step,
            gradient_accumulation_steps=1,
            max_steps=total_steps,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch_fused",  # TRL's default with torch >= 2.8, and the kernel ours uses
            beta=0.1,
            loss_type=["sigmoid"],
            max_length=None,  # our pairs are already within max_length; no truncation on either side
            precompute_ref_log_probs=reference_mode == "precomputed",
            gradient_checkpointing=False,  # ours does not checkpoint either
            bf16=plan.compute_dtype == torch.bfloat16,  # over fp32 weights: autocast, as ours
            use_cpu=device.type == "cpu",
            train_sampling_strategy="sequential",  # the same pairs in the same steps as ours
            dataloader_num_workers=0,
            logging_steps=10_000,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=args.seed,
        )
        reference = None if reference_mode == "precomputed" else copy.deepcopy(model).requires_grad_(False)
        setup_start = time.perf_counter()
        trainer = DPOTrainer(model=model, ref_model=reference, args=config, train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[timer])
        synchronize(device)
        setup_seconds = time.perf_counter() - setup_start
        check_tokens(trainer.train_dataset, pairs)
        trainer.train()
    step_times = [b - a for a, b in zip(timer.ends[:-1], timer.ends[1:])][args.warmup_steps:]
    cpu_times = [b - a for a, b in zip(timer.cpu_ends[:-1], timer.cpu_ends[1:])][args.warmup_steps:]
    timed = step_batches(pairs, args.pairs_per_step, total_steps)[args.warmup_steps:]
    real_tokens = sum(len(pairs[i].chosen.tokens) + len(pairs[i].rejected.tokens) for b in timed for i in b)
    slots = sum(collate_padded([pairs[i] for i in b], b, 0).num_slots for b in timed)
    note = f"tokens identical to ours; load {os.getloadavg()[0]:.1f}"
    if reference_mode == "precomputed":
        note += f"; trainer setup incl. reference precompute of all batches {setup_seconds:.1f} s"
    return summarize(args, "trl", "padded", reference_mode, plan.name, model, device, step_times, cpu_times, real_tokens,
                     float("nan"), slots, note=note)


def check_tokens(tokenized, pairs) -> None:
    """Stop the run unless TRL's tokenization of every pair's text gives exactly our token ids: on
    other tokens the two sides would not train on the same sequences, and no ratio would mean anything."""
    if len(tokenized) != len(pairs):
        raise SystemExit(f"TRL token mismatch: TRL prepared {len(tokenized)} rows for our {len(pairs)} pairs")
    different = [i for i, (row, pair) in enumerate(zip(tokenized, pairs))
                 if row["prompt_ids"] + row["chosen_ids"] != pair.chosen.tokens
                 or row["prompt_ids"] + row["rejected_ids"] != pair.rejected.tokens]
    if different:
        raise SystemExit(f"TRL token mismatch: TRL tokenized {len(different)} of {len(pairs)} pairs differently "
                         f"from our token ids (first: pair {different[0]}); the comparison is not like for like")


# ----------------------------------------------------------------------------------------------
# Driver


def run_one(args, spec: dict) -> RunResult:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if spec["impl"] == "trl":
        return run_trl(args, spec["reference"], spec["precision"])
    return run_ours(args, spec["layout"], spec["reference"], spec["precision"])


def run_in_subprocess(argv: list[str], spec: dict, timeout: float) -> RunResult | str:
    """The configuration's result, or why it has none (a string)."""
    from run_record import run_child

    command = [sys.executable, os.path.abspath(__file__), *argv, "--run-one", json.dumps(spec)]
    result = run_child(command, timeout, tail_lines=5)
    return RunResult(**result) if isinstance(result, dict) else result


def precision_label(result: RunResult) -> str:
    return trl_precision_name(result.precision) if result.impl == "trl" else result.precision


def format_table(results: list[RunResult]) -> str:
    def gib(n):
        return "n/a" if n is None else f"{n / 2**30:.2f}"

    lines = [
        "| impl | layout | precision | reference | real tok/s | tok/CPU-s | pairs/s | step s | CPU s/step | ref s/batch "
        "| MFU | GPU peak GiB | host peak RSS GiB | slot fill |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        mfu = "n/a" if r.mfu is None else f"{100 * r.mfu:.1f}%"
        ref = "n/a" if r.reference_seconds != r.reference_seconds else f"{r.reference_seconds:.2f}"
        lines.append(
            f"| {r.impl} | {r.layout} | {precision_label(r)} | {r.reference} | {r.tokens_per_second:,.0f} | "
            f"{r.tokens_per_cpu_second:,.0f} | {r.pairs_per_second:.2f} | {r.step_seconds:.2f} | {r.cpu_seconds_per_step:.2f} | "
            f"{ref} | {mfu} | {gib(r.gpu_peak_bytes)} | {gib(r.host_peak_rss_bytes)} | {100 * r.slot_fill:.0f}% |"
        )
    return "\n".join(lines)


def _speed(numerator: RunResult, denominator: RunResult) -> str:
    return (f"tokens/s x{numerator.tokens_per_second / denominator.tokens_per_second:.2f}, "
            f"tokens/CPU-s x{numerator.tokens_per_cpu_second / denominator.tokens_per_cpu_second:.2f}")


def format_ratios(results: list[RunResult]) -> str:
    """Each technique against its baseline with everything else equal, then ours against TRL (the
    headline, ours default / TRL best, is `headlines`)."""
    lines = []
    ours = {(r.layout, r.reference, r.precision): r for r in results if r.impl == "ours"}
    trl = {(r.reference, r.precision): r for r in results if r.impl == "trl"}
    precisions = sorted({r.precision for r in results})
    for (layout, reference_mode, precision), other in ours.items():
        base = ours.get(("padded", reference_mode, precision))
        if layout != "padded" and base:
            lines.append(f"- {layout} / padded ({reference_mode}, {precision}): {_speed(other, base)}")
    for (layout, reference_mode, precision), pre in ours.items():
        inside = ours.get((layout, "in-step", precision))
        if reference_mode == "precomputed" and inside:
            lines.append(f"- precomputed / in-step reference ({layout}, {precision}): {_speed(pre, inside)}")
    for precision in precisions:
        if precision == "fp32":
            continue
        for (layout, reference_mode, p), mixed in ours.items():
            fp32 = ours.get((layout, reference_mode, "fp32"))
            if p == precision and fp32:
                lines.append(f"- ours {precision} / fp32 ({layout}, {reference_mode}): {_speed(mixed, fp32)}")
        for (reference_mode, p), mixed in trl.items():
            fp32 = trl.get((reference_mode, "fp32"))
            if p == precision and fp32:
                lines.append(f"- TRL {trl_precision_name(precision)} / fp32 ({reference_mode}): {_speed(mixed, fp32)}")
    for (reference_mode, precision), t in trl.items():
        for (layout, o_reference, o_precision), o in ours.items():
            if (o_reference, o_precision) != (reference_mode, precision):
                continue
            memory = f"GPU x{o.gpu_peak_bytes / t.gpu_peak_bytes:.2f}" if o.gpu_peak_bytes and t.gpu_peak_bytes else "n/a"
            lines.append(f"- ours {layout} / TRL ({reference_mode}, {precision}): {_speed(o, t)}, peak memory {memory}, "
                         f"host RSS x{o.host_peak_rss_bytes / t.host_peak_rss_bytes:.2f}")
    return "\n".join(lines)


def headlines(outcomes: list[tuple[dict, RunResult | str]], default_layout: str, default_precision: str,
              max_length: int) -> tuple[list[dict], list[str]]:
    """Ours default (the trainer's layout and precision) against TRL's fastest precision, per
    CPU-second, for each reference mode that ran both sides. A headline is computed only if every
    configuration it compares finished: the best of the *surviving* TRL rows is not TRL's best.
    Returns (headlines, reasons a headline was withheld)."""
    found, withheld = [], []
    for reference_mode in REFERENCE_MODES:
        ours = [(s, o) for s, o in outcomes if s["impl"] == "ours" and s["reference"] == reference_mode
                and s["layout"] == default_layout and s["precision"] == default_precision]
        trl = [(s, o) for s, o in outcomes if s["impl"] == "trl" and s["reference"] == reference_mode]
        if not ours or not trl:
            continue
        where = "" if reference_mode == "precomputed" else ", in-step reference"
        name = f"ours default / TRL best ({max_length} tokens{where})"
        failed = [f"{s['impl']} {s['precision']}: {o}" for s, o in ours + trl if isinstance(o, str)]
        if failed:
            withheld.append(f"{name}: not computed, a configuration it compares failed ({'; '.join(failed)})")
            continue
        mine = ours[0][1]
        best = max((o for _, o in trl), key=lambda t: t.tokens_per_cpu_second)
        ratio = mine.tokens_per_cpu_second / best.tokens_per_cpu_second
        found.append({
            "name": name, "tokens_per_cpu_second_ratio": ratio,
            "line": f"- {name}: tokens/CPU-s x{ratio:.2f} (TRL best: {trl_precision_name(best.precision)})",
            "ours": {"layout": mine.layout, "precision": mine.precision,
                     "tokens_per_cpu_second": mine.tokens_per_cpu_second},
            "trl_best": {"precision": trl_precision_name(best.precision),
                         "tokens_per_cpu_second": best.tokens_per_cpu_second},
            "trl_compared": [trl_precision_name(o.precision) for _, o in trl],
        })
    return found, withheld


def _choices(value: str, allowed: tuple[str, ...], option: str) -> list[str]:
    chosen = [item.strip() for item in value.split(",") if item.strip()]
    unknown = sorted(set(chosen) - set(allowed))
    if unknown or not chosen:
        raise SystemExit(f"{option}: unknown {', '.join(unknown) or '(empty)'} (choose from {', '.join(allowed)})")
    return chosen


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", *MODEL_SHAPES], default="smollm2",
                        help="smollm2: the bundled real SmolLM2-135M-Instruct; others: random init of that shape")
    parser.add_argument("--pairs-per-step", type=int, default=None, help="default 4 on CPU, 8 on GPU")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512, help="longest prompt+completion sequence")
    parser.add_argument("--min-frac", type=float, default=0.2, help="shortest sequence, as a fraction of max-length")
    parser.add_argument("--prompt-frac", type=float, default=0.3, help="mean prompt share of the shorter sequence")
    parser.add_argument("--layouts", default="auto",
                        help=f"comma list of auto, {', '.join(LAYOUTS)}; auto: what the trainer's layout=auto picks here")
    parser.add_argument("--precision", default="auto",
                        help=f"comma list of {', '.join(PRECISIONS)} for ours and TRL; auto: what the trainer's "
                             "precision=auto picks here (bf16-mixed on a bf16 GPU or a CPU with native bf16, else fp32)")
    parser.add_argument("--reference", choices=[*REFERENCE_MODES, "both"], default="both")
    parser.add_argument("--vs-trl", action="store_true", help="also run TRL's DPOTrainer (needs trl installed)")
    parser.add_argument("--trl-only", action="store_true", help="with --vs-trl: skip our layouts")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--attn", default="auto", choices=["auto", "sdpa", "flex_attention", "eager"],
                        help="auto: sdpa on CPU and for padded rows; flex_attention for packed rows on a GPU")
    parser.add_argument("--max-row-tokens", type=int, default=None, help="token budget of a packed row (default: one row)")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (CPU: n/a unless given)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per configuration (0: torch's default); 1 makes CPU time robust to other load")
    parser.add_argument("--jobs", type=int, default=1,
                        help="configurations run at once (CPU: use with --threads 1 and compare tok/CPU-s)")
    parser.add_argument("--json-out", default=None,
                        help="where the run's record goes (default benchmarks/results/dpo_throughput_<max-length>.json)")
    parser.add_argument("--profile", action="store_true",
                        help="ours only: after the timed steps, profile one more step and record where its CPU "
                             "time went (default record: benchmarks/results/dpo_step_profile_<max-length>.json)")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile and (args.vs_trl or args.trl_only):
        parser.error("--profile profiles our step only: leave out --vs-trl")
    if args.pairs_per_step is None:
        import torch

        on_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        args.pairs_per_step = 8 if on_gpu else 4
    return args


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.run_one:
        result = run_one(args, json.loads(args.run_one))
        print("RESULT " + json.dumps(asdict(result)), flush=True)
        return
    from cookbook.training.precision import resolve_precision

    device = resolve_device(args)
    default_layout = resolve_layout("auto", args, device)
    default_precision = resolve_precision("auto", device)
    layouts = list(dict.fromkeys(resolve_layout(lo, args, device)
                                 for lo in _choices(args.layouts, ("auto", *LAYOUTS), "--layouts")))
    precisions = list(dict.fromkeys(resolve_precision(p, device)
                                    for p in _choices(args.precision, PRECISIONS, "--precision")))
    modes = REFERENCE_MODES if args.reference == "both" else (args.reference,)
    specs = [] if args.trl_only else [{"impl": "ours", "layout": lo, "reference": m, "precision": p}
                                      for m in modes for p in precisions for lo in layouts]
    if args.vs_trl:
        require_trl()
        specs += [{"impl": "trl", "layout": "padded", "reference": m, "precision": p} for m in modes for p in precisions]
    if args.model == "smollm2":
        from cookbook.models import bundled_model_dir

        # Convert the bundled model once, here: subprocesses that convert it at the same time
        # replace each other's cache directory while the other is reading it.
        bundled_model_dir()
    from run_record import RESULTS_DIR, finish_record, start_record

    record = start_record(__file__, argv)
    child_argv = [a for a in argv if a not in ("--vs-trl", "--trl-only")]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        outcomes = list(zip(specs, pool.map(lambda spec: run_in_subprocess(child_argv, spec, args.timeout), specs)))
    results = []
    for spec, outcome in outcomes:
        if isinstance(outcome, str):
            print(f"{spec}: {outcome}", file=sys.stderr, flush=True)
            continue
        print(f"{spec['impl']:4} {spec['layout']:13} {precision_label(outcome):10} {spec['reference']:11} "
              f"{outcome.tokens_per_second:10,.0f} tok/s  {outcome.tokens_per_cpu_second:8,.0f} tok/CPU-s  "
              f"{outcome.step_seconds:7.2f} s/step  {outcome.note}", flush=True)
        if outcome.profile:
            shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in outcome.profile["shares"].items())
            print(f"     profiled step: {outcome.profile['self_cpu_seconds']:.1f} CPU-s; {shares}", flush=True)
        results.append(outcome)
    found, withheld = headlines(outcomes, default_layout, default_precision, args.max_length)
    failures = [{"spec": spec, "error": outcome} for spec, outcome in outcomes if isinstance(outcome, str)]
    print()
    print(f"model={args.model} pairs/step={args.pairs_per_step} max_length={args.max_length} "
          f"steps={args.steps} (+{args.warmup_steps} warmup) threads={args.threads or 'default'} jobs={args.jobs}; "
          f"default: layout={default_layout} precision={default_precision}")
    print(format_table(results))
    print()
    print("\n".join(filter(None, [format_ratios(results), *(h["line"] for h in found)])))
    record.update(
        settings=vars(args), default={"layout": default_layout, "precision": default_precision},
        rows=[{"spec": spec, "ok": not isinstance(outcome, str),
               "error": outcome if isinstance(outcome, str) else None,
               "result": None if isinstance(outcome, str) else asdict(outcome)} for spec, outcome in outcomes],
        table=format_table(results),
        ratios=format_ratios(results).splitlines(),
        headline=found or None, headline_withheld=withheld, failures=failures,
    )
    name = "dpo_step_profile" if args.profile else "dpo_throughput"
    out = finish_record(record, args.json_out or RESULTS_DIR / f"{name}_{args.max_length}.json")
    print(f"\nrecord: {out}")
    for reason in withheld:
        print(f"headline withheld: {reason}", file=sys.stderr)
    if failures:
        raise SystemExit(f"{len(failures)} configuration(s) failed; the run fails"
                         + (" and writes no headline for what they compare" if withheld else ""))


def require_trl() -> None:
    if importlib.util.find_spec("trl") is None:
        raise SystemExit("--vs-trl needs TRL: run bash benchmarks/setup_bench_env.sh and use benchmarks/.venv-bench/bin/python")


if __name__ == "__main__":
    main()
