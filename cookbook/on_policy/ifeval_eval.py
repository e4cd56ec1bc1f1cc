"""IFEval accuracy of the policy during training, on the bundled evaluation set (or the hub's).

The same prompts, rendering, greedy decoding, reply budget and checkers as the `cookbook/ifeval`
inspect task with its defaults (`run_inspect_evals tasks=cookbook/ifeval`), run in-process on the
model being trained, so the per-round curve and the eval command afterwards measure one thing.
Each rank scores its share of the prompts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from cookbook.eval.ifeval import load_ifeval_rows, pooled_accuracy, score_response
from cookbook.on_policy.collect import lockstep_filler
from cookbook.sampling import SamplingSettings, padding_token_id, sample
from cookbook.training import distributed as dist_utils

EVAL_MAX_NEW_TOKENS = 512  # run_inspect_evals' default max_tokens


def ifeval_metrics(causal_lm, renderer, rows: list[dict], info: dist_utils.DistInfo, batch_size: int,
                   max_new_tokens: int = EVAL_MAX_NEW_TOKENS, compute_context: Callable = contextlib.nullcontext,
                   lockstep: Callable[[bool], bool] | None = None, prefix: str = "test/ifeval_") -> dict[str, float]:
    """prompt_strict, prompt_loose, instruction_strict, instruction_loose over all `rows`."""
    mine = rows[info.rank :: info.world_size]
    filler = lockstep_filler(len(rows), len(mine), info, lockstep)
    prompts = [renderer.build_generation_prompt([{"role": "user", "content": row["prompt"]}])
               for row in mine + rows[:filler]]
    stop_token_ids = list(renderer.get_stop_token_ids())
    completions = sample(causal_lm, prompts, SamplingSettings(max_new_tokens=max_new_tokens),
                         stop_token_ids=stop_token_ids, pad_token_id=padding_token_id(renderer.tokenizer, stop_token_ids),
                         batch_size=batch_size, compute_context=compute_context, lockstep=lockstep)
    verdicts = [score_response(str(renderer.parse_response(c.tokens).message["content"]), row)
                for c, row in zip(completions, mine)]
    counts = []
    for mode in ("strict", "loose"):
        lists = [v[mode] for v in verdicts]
        counts += [pooled_accuracy(lists, "prompt") * len(lists), pooled_accuracy(lists, "instruction") *
                   sum(len(v) for v in lists)]
    totals = dist_utils.all_reduce_sum([*counts, float(len(mine)), float(sum(len(r["instruction_id_list"])
                                                                             for r in mine))], info)
    num_prompts, num_instructions = max(totals[4], 1.0), max(totals[5], 1.0)
    return {f"{prefix}prompt_strict": totals[0] / num_prompts, f"{prefix}instruction_strict": totals[1] / num_instructions,
            f"{prefix}prompt_loose": totals[2] / num_prompts, f"{prefix}instruction_loose": totals[3] / num_instructions}


def bundled_ifeval_rows(source: str = "bundled") -> list[dict]:
    rows, _ = load_ifeval_rows(source)  # type: ignore[arg-type]
    return rows
