"""On-policy preference training from the command line: the policy samples its own replies, a
reward picks each prompt's best and worst, and DPO (or any preference loss) trains on those pairs,
round after round.

    python -m cookbook.recipes.preference.on_policy log_path=/tmp/onpolicy
    python -m cookbook.recipes.preference.on_policy log_path=/tmp/op prompts=prompts:hhh reward=reward_model \
        reward.model_name=my/reward-model
    torchrun --nproc_per_node 2 -m cookbook.recipes.preference.on_policy log_path=/tmp/op distributed=ddp
    python -m cookbook.recipes.preference.on_policy --help     # every field with its doc

With no arguments it trains the bundled SmolLM2-135M-Instruct on instruction-following prompts
composed from IFEval's checkers (`prompts=ifeval_synthetic`, none of them in the evaluation set),
rewarded by the fraction of instructions each reply follows (`eval_ifeval=true` also reports IFEval
accuracy on the bundled evaluation set at the start and the end). log_path gets what the preference recipe
writes (config.json, metrics.jsonl, metrics.png, step_*/ and final/ checkpoints) and
`rounds/<n>/samples.jsonl`: every sampled reply with its reward, and the pair chosen.
"""

from __future__ import annotations

import sys

import chz

from cookbook.cli import run_cli
from cookbook.on_policy.train_on_policy import Config, main

__all__ = ["Config", "cli", "main"]


def cli(argv: list[str] | None = None):
    """Parse `argv` (default: sys.argv[1:]) into a Config and train; exceptions propagate."""
    return chz.nested_entrypoint(main, argv=argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
