"""DPO-family preference training from the command line.

    python -m cookbook.recipes.preference.train log_path=/tmp/dpo dpo_beta=0.1
    python -m cookbook.recipes.preference.train log_path=/tmp/dpo dataset=hhh dataset.local_path=hh.jsonl
    torchrun --nproc_per_node 2 -m cookbook.recipes.preference.train log_path=/tmp/dpo distributed=ddp
    python -m cookbook.recipes.preference.train --help     # every field with its doc

With no arguments it trains the bundled SmolLM2-135M-Instruct on the bundled demo preference set
(a few minutes on a laptop CPU) and writes to log_path: config.json, metrics.jsonl (one line per
step and per eval), checkpoints.jsonl, reference_logps.pt, and Hugging Face checkpoint directories
(`step_000050/`, `final/`) that transformers and `cookbook.eval.run_inspect_evals` load directly.

The recipe is a thin launcher: chz parses key=value arguments into the library's `Config`, and
`cookbook.preference.train_dpo.main` does the work, so a script can build a Config and call main.
Run as a program, a mistake in the options or the data ends in one `error: ...` line and exit
status 2, and a run stopped with Ctrl-C exits with 130 after saving (`cookbook/cli.py`); `cli()`
lets every exception through, for scripts and tests.
"""

from __future__ import annotations

import sys

import chz

from cookbook.cli import run_cli
from cookbook.preference.train_dpo import Config, main

__all__ = ["Config", "cli", "main"]


def cli(argv: list[str] | None = None):
    """Parse `argv` (default: sys.argv[1:]) into a Config and train; exceptions propagate."""
    return chz.nested_entrypoint(main, argv=argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
