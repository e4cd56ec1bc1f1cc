"""KTO from the command line: preference training from unpaired feedback (one completion to a
prompt, marked desirable or undesirable), on the loop every recipe shares.

    python -m cookbook.recipes.preference.kto log_path=/tmp/kto                     # unpaired:demo
    python -m cookbook.recipes.preference.kto log_path=/tmp/kto dataset=feedback.jsonl   # prompt, completion, label
    python -m cookbook.recipes.preference.kto log_path=/tmp/kto dataset=unpaired:hhh desirable_weight=1.33
    torchrun --nproc_per_node 2 -m cookbook.recipes.preference.kto log_path=/tmp/kto distributed=ddp
    python -m cookbook.recipes.preference.kto --help       # every field with its doc

With only log_path it trains the bundled SmolLM2-135M-Instruct on the demo preference pairs taken
apart (chosen replies desirable, rejected undesirable) and writes what the DPO recipe writes:
config.json, metrics.jsonl, metrics.png, checkpoints.jsonl, reference_logps.pt and Hugging Face
checkpoint directories (`step_*/`, `final/`). A thin launcher over `cookbook.kto.train_kto`; a
user's mistake ends in one `error: ...` line (exit 2), Ctrl-C saves and exits 130
(`cookbook/cli.py`); `cli()` lets exceptions through, for scripts and tests.
"""

from __future__ import annotations

import sys

import chz

from cookbook.cli import run_cli
from cookbook.kto.train_kto import Config, main

__all__ = ["Config", "cli", "main"]


def cli(argv: list[str] | None = None):
    """Parse `argv` (default: sys.argv[1:]) into a Config and train; exceptions propagate."""
    return chz.nested_entrypoint(main, argv=argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
