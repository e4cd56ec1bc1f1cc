"""Checkpoints in `log_path`: Hugging Face directories written atomically, indexed in checkpoints.jsonl.

A checkpoint `step_000040/` (or `final/`) is a `save_pretrained` directory (safetensors weights,
tokenizer) that transformers and our eval load directly, plus `cookbook_checkpoint.json` (renderer,
base model, step) and, for resumable checkpoints, `training_state.pt` (optimizer, scheduler, RNG,
data position). It is written under a hidden temporary name and renamed into place, and only then
appended to checkpoints.jsonl, so a crash mid-write never leaves a checkpoint that resume would pick.
Only the newest checkpoint keeps its optimizer state (it is twice the model's size).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

import torch

INDEX_NAME = "checkpoints.jsonl"
METADATA_NAME = "cookbook_checkpoint.json"
TRAINING_STATE_NAME = "training_state.pt"


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def save_checkpoint(
    log_path: str | Path,
    name: str,
    step: int,
    model_state: dict[str, torch.Tensor],
    causal_lm,
    tokenizer,
    metadata: dict,
    training_state: dict | None,
) -> Path:
    """Write one checkpoint atomically (rank 0 only) and record it in checkpoints.jsonl."""
    log_path = Path(log_path)
    final_dir = log_path / name
    staging = Path(tempfile.mkdtemp(dir=log_path, prefix=f".{name}.tmp-"))
    try:
        causal_lm.save_pretrained(staging, state_dict=model_state, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / METADATA_NAME).write_text(json.dumps({**metadata, "step": step}, indent=2))
        if training_state is not None:
            torch.save(training_state, staging / TRAINING_STATE_NAME)
        staging.chmod(0o755)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        staging.rename(final_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with (log_path / INDEX_NAME).open("a") as f:
        f.write(json.dumps({"name": name, "step": step, "path": str(final_dir.resolve()),
                            "resumable": training_state is not None}) + "\n")
    if training_state is not None:
        _drop_older_training_states(log_path, keep=final_dir)
    return final_dir


def _drop_older_training_states(log_path: Path, keep: Path) -> None:
    for entry in read_index(log_path):
        path = Path(entry["path"])
        if path != keep.resolve() and (path / TRAINING_STATE_NAME).exists():
            (path / TRAINING_STATE_NAME).unlink()


def read_index(log_path: str | Path) -> list[dict]:
    path = Path(log_path) / INDEX_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest_resumable_checkpoint(log_path: str | Path) -> dict | None:
    """The newest recorded checkpoint whose directory and training state are complete."""
    for entry in reversed(read_index(log_path)):
        path = Path(entry["path"])
        if entry.get("resumable") and (path / TRAINING_STATE_NAME).exists() and (path / "config.json").exists():
            return entry
    return None


def final_checkpoint(log_path: str | Path) -> Path | None:
    """The `final` checkpoint when it is the newest one recorded (the run finished)."""
    index = read_index(log_path)
    if index and index[-1]["name"] == "final" and (Path(index[-1]["path"]) / "config.json").exists():
        return Path(index[-1]["path"])
    return None


def read_metadata(checkpoint_dir: str | Path) -> dict:
    path = Path(checkpoint_dir) / METADATA_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def capture_rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_metadata_renderer(model_name: str) -> str | None:
    """The renderer a training checkpoint recorded, when `model_name` is one of ours."""
    path = Path(model_name)
    return read_metadata(path).get("renderer_name") if path.is_dir() else None
