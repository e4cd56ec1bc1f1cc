#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: ruff (F rules on), then pytest.
# Tests marked `slow` (the real bundled model) run too; pass `-m "not slow"` to skip them.
# Two pytest workers (COOKBOOK_TEST_WORKERS; 0 runs in this process), each file's tests on one
# worker so a file's session fixtures (a vLLM engine, the bundled model) are built once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${COOKBOOK_TEST_WORKERS:-2}" --dist loadfile "$@"
