"""What an fp32 LM head buys under a bf16 decoder: per-token log-prob error against an all-fp32
forward, and what the head alone costs, on the bundled SmolLM2-135M-Instruct.

    python benchmarks/lm_head_precision.py                  # ~1 minute at 1 thread
    python benchmarks/lm_head_precision.py --length 1024 --json-out /tmp/head.json

Writes its record (command, versions, machine, every row) to
benchmarks/results/lm_head_precision.json unless --json-out says otherwise.

Why it is built this way:
- The text is real: the bundled demo conversations (prompt and chosen reply, in the model's chat
  template) concatenated into one sequence of --length tokens, so the log-probs are those of text
  the model can predict, not of random ids.
- Four ways to compute the same log-probs: the decoder in fp32 or under bf16 autocast (what
  `precision=bf16-mixed` runs), times the head's matmul in fp32 (what `SequenceLogprobModel` does)
  or under the same autocast (bf16 logits, log-softmax then in fp32). The error is each one's
  |log p - log p(fp32, fp32)| over every predicted token: mean and max.
- The head's cost is its forward alone over the sequence's positions, fp32 against bf16, the
  median CPU time of --repeats runs at --threads threads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path


def demo_tokens(tokenizer, length: int) -> list[int]:
    import cookbook

    path = Path(cookbook.__file__).parent / "datasets" / "data" / "demo_train.jsonl"
    tokens: list[int] = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        tokens += tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=True, return_dict=False)
        if len(tokens) >= length:
            return tokens[:length]
    raise SystemExit(f"the demo set holds fewer than {length} tokens")


def head_logprobs(hidden, weight, targets, autocast):
    import torch

    with autocast():
        logits = torch.nn.functional.linear(hidden.float(), weight)  # bf16 under autocast, else fp32
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None])[:, 0]


def cpu_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=512, help="tokens in the sequence")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the head alone (the median is kept)")
    parser.add_argument("--json-out", default=None, help="default benchmarks/results/lm_head_precision.json")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)

    import torch
    from run_record import RESULTS_DIR, finish_record, start_record

    from cookbook.models import load_model_and_tokenizer
    from cookbook.training.precision import plan_for

    record = start_record(__file__, argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(dtype="float32", device="cpu", attn_implementation="sdpa")
    model.eval()
    ids = torch.tensor([demo_tokens(tokenizer, args.length)])
    targets = ids[0, 1:]
    weight = model.get_output_embeddings().weight
    precisions = {"fp32": contextlib.nullcontext, "bf16": plan_for("bf16-mixed", torch.device("cpu")).autocast}
    rows = []
    with torch.no_grad():
        hidden = {}
        for name, autocast in precisions.items():
            with autocast():
                hidden[name] = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
        exact = head_logprobs(hidden["fp32"].float(), weight, targets, precisions["fp32"])
        for decoder in precisions:
            for head, autocast in precisions.items():
                error = (head_logprobs(hidden[decoder], weight, targets, autocast) - exact).abs()
                rows.append({"decoder": decoder, "head": head, "tokens": int(targets.numel()),
                             "logprob_error_mean": error.mean().item(), "logprob_error_max": error.max().item()})
        head_cost = {name: cpu_seconds(lambda a=autocast: head_logprobs(hidden["bf16"], weight, targets, a),
                                       args.repeats) for name, autocast in precisions.items()}

    print(f"{targets.numel()} predicted tokens of the demo conversations, {args.threads} thread(s)")
    print("| decoder | head | log-prob error mean | max |")
    print("|---|---|---:|---:|")
    for row in rows:
        print(f"| {row['decoder']} | {row['head']} | {row['logprob_error_mean']:.4f} | {row['logprob_error_max']:.3f} |")
    print(f"head forward alone, {targets.numel()} positions: fp32 {head_cost['fp32']:.3f} CPU-s, "
          f"bf16 {head_cost['bf16']:.3f} CPU-s (x{head_cost['fp32'] / head_cost['bf16']:.2f})")
    record.update(settings=vars(args), rows=rows, head_forward_cpu_seconds=head_cost)
    out = finish_record(record, args.json_out or RESULTS_DIR / "lm_head_precision.json")
    print(f"record: {out}")
    return record


if __name__ == "__main__":
    main()
