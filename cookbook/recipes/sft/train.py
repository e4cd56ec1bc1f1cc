"""Supervised fine-tuning from the command line: the short SFT phase before DPO.

    python -m cookbook.recipes.sft.train log_path=/tmp/sft                       # chosen side of the demo set
    python -m cookbook.recipes.sft.train log_path=/tmp/sft dataset=no_robots dataset.local_path=nr.jsonl
    python -m cookbook.recipes.sft.train log_path=/tmp/sft dataset=chats.jsonl train_on=all_assistant
    python -m cookbook.recipes.preference.train log_path=/tmp/dpo model_name=/tmp/sft/final   # then DPO
    python -m cookbook.recipes.sft.train --help        # every field with its doc

It writes what the preference recipe writes (config.json, metrics.jsonl, metrics.png,
checkpoints.jsonl, `step_*/` and `final/` Hugging Face directories) and shares its options where
they mean the same: model, renderer, precision, batch sizes, schedule, cadence, distributed, resume.
A thin launcher over `cookbook.supervised.train_sft`; a user's mistake ends in one `error: ...`
line (exit 2), Ctrl-C saves and exits 130 (`cookbook/cli.py`); `cli()` lets exceptions through.
"""

from __future__ import annotations

import sys

import chz

from cookbook.cli import run_cli
from cookbook.supervised.train_sft import Config, main

__all__ = ["Config", "cli", "main"]


def cli(argv: list[str] | None = None):
    """Parse `argv` (default: sys.argv[1:]) into a Config and train; exceptions propagate."""
    return chz.nested_entrypoint(main, argv=argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
