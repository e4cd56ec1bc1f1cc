"""RL with verifiable rewards from the command line (the GRPO family): the policy samples a group
of replies to each prompt, a reward scores them, and a clipped policy gradient on each reply's
advantage over its group trains it, batch after batch.

    python -m cookbook.recipes.rl.train log_path=/tmp/rl
    python -m cookbook.recipes.rl.train log_path=/tmp/rl prompts=my_prompts.jsonl reward=my.module:my_fn \
        group_size=8 advantage=dr_grpo loss_aggregation=token kl_coef=0.01
    torchrun --nproc_per_node 2 -m cookbook.recipes.rl.train log_path=/tmp/rl distributed=ddp   # or fsdp
    python -m cookbook.recipes.rl.train --help     # every field with its doc

With only log_path it trains the bundled SmolLM2-135M-Instruct on instruction-following prompts
composed from IFEval's checkers (`prompts=ifeval_synthetic`), rewarded by the fraction of
instructions each reply follows (`reward=ifeval`). log_path gets config.json, metrics.jsonl,
metrics.png, step_*/ and final/ checkpoints, and `rounds/<n>/samples.jsonl`: every sampled reply
with its reward, advantage and per-token log-probs.

Built on the shared loop and the on-policy recipe's prompts, rewards, sampler and round files, so
model, precision, LoRA, resume, DDP and FSDP2 options mean what they mean in every recipe.
"""

from __future__ import annotations

import sys

import chz

from cookbook.cli import run_cli
from cookbook.rl.train_rl import Config, main

__all__ = ["Config", "cli", "main"]


def cli(argv: list[str] | None = None):
    """Parse `argv` (default: sys.argv[1:]) into a Config and train; exceptions propagate."""
    return chz.nested_entrypoint(main, argv=argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
