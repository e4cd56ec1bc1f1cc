"""Reward-model training from the command line: a scalar head on a causal LM, trained on preference
pairs (Bradley-Terry), saved as a sequence classifier the on-policy recipe scores with.

    python -m cookbook.recipes.reward_model.train log_path=/tmp/rm                 # bundled model, demo pairs
    python -m cookbook.recipes.reward_model.train log_path=/tmp/rm dataset=hhh dataset.local_path=hhh.jsonl
    python -m cookbook.recipes.reward_model.train log_path=/tmp/rm model_name=/tmp/sft/final center_coef=0
    python -m cookbook.recipes.preference.on_policy log_path=/tmp/op prompts=prompts:demo \\
        reward=reward_model reward.model_name=/tmp/rm/final                           # then score samples with it
    python -m cookbook.recipes.reward_model.train --help       # every field with its doc

It writes what the other recipes write (config.json, metrics.jsonl, metrics.png, checkpoints.jsonl,
`step_*/` and `final/`), each checkpoint an `AutoModelForSequenceClassification` directory, and
shares their options where they mean the same: model, renderer, precision, batch sizes, schedule,
cadence, distributed, resume. A thin launcher over `cookbook.reward_model.train_reward_model`; a
user's mistake ends in one `error: ...` line (exit 2), Ctrl-C saves and exits 130
(`cookbook/cli.py`); `cli()` lets exceptions through.
"""

from __future__ import annotations

import sys

import chz

from cookbook.cli import run_cli
from cookbook.reward_model.train_reward_model import Config, main

__all__ = ["Config", "cli", "main"]


def cli(argv: list[str] | None = None):
    """Parse `argv` (default: sys.argv[1:]) into a Config and train; exceptions propagate."""
    return chz.nested_entrypoint(main, argv=argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
