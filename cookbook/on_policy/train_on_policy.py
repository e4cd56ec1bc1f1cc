"""On-policy preference training on the shared loop: the policy writes its own pairs.

    for each round: the round's prompts -> samples_per_prompt replies each from the policy as it is
    now -> the reward scores every reply -> best versus worst per prompt -> steps_per_round
    preference steps on those pairs -> (IFEval on the bundled set) -> checkpoint

`main(config)` runs it. Everything that is not on-policy's own — the optimizer, precision, LoRA,
accumulation, checkpoints, resume, DDP/FSDP2, metrics — is the shared loop's (`training/loop.py`):
the recipe hands it a `RoundSchedule`, whose first batch of each round has the `RoundStore` sample
the round, and an `OnPolicyTask`. The model being trained is the one that samples (no second copy);
with LoRA it samples through its adapters.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from cookbook.datasets.tokenize import MIN_COMPLETION_TOKENS
from cookbook.errors import UserError
from cookbook.on_policy.collect import RoundSampling
from cookbook.on_policy.config import Config
from cookbook.on_policy.ifeval_eval import bundled_ifeval_rows, ifeval_metrics
from cookbook.on_policy.prompt import PromptItem
from cookbook.on_policy.rounds import RoundStore
from cookbook.on_policy.schedule import RoundSchedule
from cookbook.on_policy.task import OnPolicyTask
from cookbook.preference.collate import make_collate
from cookbook.preference.logprobs import SequenceLogprobModel
from cookbook.sampling import SamplingSettings
from cookbook.training import distributed as dist_utils
from cookbook.training.loop import Run, run_recipe

__all__ = ["Config", "main"]


def main(config: Config) -> Path | None:
    """Train; returns the final checkpoint directory (None on ranks other than 0)."""
    return run_recipe(config, lambda run: _train(config, run))


def _train(config: Config, run: Run) -> Path | None:
    info, console = run.info, run.console
    start_name = config.load_checkpoint_path or config.model_name
    tokenizer, renderer = run.tokenizer_and_renderer(start_name)
    prompts, prompt_tokens, too_long = _render_prompts(config, renderer, console)
    scorer = config.reward.build(info.device)

    causal_lm = run.load_model(run.model_source(start_name), packed_rows=config.layout != "padded")
    layout = make_collate(config.layout, tokenizer.pad_token_id, causal_lm)
    console.print(f"Batch layout: {layout.name}")
    policy = run.wrap(SequenceLogprobModel(causal_lm, compute_context=run.plan.autocast), causal_lm)
    # Under FSDP every rank runs each decode step, until the last rank's last sequence has stopped.
    lockstep = ((lambda busy: dist_utils.all_reduce_max(float(busy), info) > 0)
                if run.strategy == "fsdp" else None)
    sampling_scope = lambda: dist_utils.direct_forwards(policy, run.strategy)  # noqa: E731
    # Autocast caches its bf16 copy only of weights that take gradients: with LoRA, whose base is
    # frozen, it would re-cast every weight at every decode step, slower than fp32.
    sampling_context = (run.plan.autocast if config.sample_in_compute_precision and run.lora is None
                        else contextlib.nullcontext)
    how = RoundSampling(SamplingSettings(config.max_new_tokens, config.temperature, config.top_p),
                        config.samples_per_prompt, config.sampling_batch_size, config.min_reward_gap, config.seed)
    store = RoundStore(run, causal_lm, prompts, prompt_tokens, renderer, scorer, how, config.prompts_per_round,
                       layout.collate, _reference_for_round(config, run, policy, start_name)
                       if config.loss_settings.needs_reference else None, sampling_scope, sampling_context, lockstep)
    try:
        schedule = RoundSchedule(store, config.rounds, config.steps_per_round, config.batch_size,
                                 config.micro_batch_size, config.max_steps, config.seed, info.rank, info.world_size)
    except ValueError as error:
        raise UserError(str(error)) from None
    store.schedule = schedule
    rows = bundled_ifeval_rows() if config.eval_ifeval else []

    def evaluate() -> dict[str, float]:
        with sampling_scope():
            return ifeval_metrics(causal_lm, renderer, rows, info, config.sampling_batch_size,
                                  max_new_tokens=config.eval_max_new_tokens, lockstep=lockstep)

    task = OnPolicyTask(store, config.loss_settings, info.device, evaluate if rows else None)
    metadata = {"renderer_name": run.renderer_name, "base_model_name": start_name,
                "reference": config.reference}
    return run.train(policy, causal_lm, task, schedule, tokenizer, metadata,
                     start_metrics={"prompts": len(prompts), "prompts_too_long": too_long},
                     eval_tasks="cookbook/ifeval")


def _render_prompts(config: Config, renderer, console) -> tuple[list[PromptItem], list[list[int]], int]:
    """The usable prompts, their generation-prompt tokens, and how many did not fit max_length."""
    source = config.prompts()
    config.reward.check_prompts(source)  # e.g. reward=ifeval on prompts without instructions: fail now
    items, tokens, too_long = [], [], 0
    for item in source:
        rendered = renderer.build_generation_prompt(list(item.messages))
        if len(rendered) + max(config.max_new_tokens, MIN_COMPLETION_TOKENS) > config.max_length:
            too_long += 1
            continue
        items.append(item)
        tokens.append(rendered)
    console.print(f"Prompts: {source.describe()}" + (f"; {too_long:,} left out, longer than max_length="
                  f"{config.max_length} - max_new_tokens={config.max_new_tokens}" if too_long else ""))
    if not items:
        raise UserError(f"none of the prompts fits max_length={config.max_length} with max_new_tokens="
                        f"{config.max_new_tokens} ({too_long} prompts too long)")
    return items, tokens, too_long


def _reference_for_round(config: Config, run: Run, policy, start_name: str):
    """Round index -> (model, context) computing that round's reference log-probs: the policy as the
    round starts, or (reference=initial) the starting model: the first round's start, the policy
    with its LoRA adapters off, or a frozen copy loaded once."""
    frozen = {}

    def reference_for_round(round_index: int):
        if config.reference == "round_start" or round_index == 0:
            return policy, contextlib.nullcontext
        if run.lora is not None:
            return dist_utils.unwrap(policy), run.lora.adapters_off
        if "model" not in frozen:
            causal_lm = run.load_model(start_name, trainable=False)
            causal_lm.requires_grad_(False)
            model = SequenceLogprobModel(causal_lm, compute_context=run.plan.autocast)
            frozen["model"] = run.wrap(model, causal_lm, trainable=False).eval()
        return frozen["model"], contextlib.nullcontext

    return reference_for_round
