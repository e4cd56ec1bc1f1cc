"""Checkpoints in `log_path`: Hugging Face directories written atomically, indexed in checkpoints.jsonl.

A checkpoint `step_000040/` (or `final/`) is a `save_pretrained` directory (safetensors weights,
tokenizer) that transformers and our eval load directly, plus `cookbook_checkpoint.json` (renderer,
base model, step) and, for resumable checkpoints, `training_state.pt` (optimizer, scheduler, RNG,
data position). A LoRA run's checkpoint holds a peft adapter (`adapter_config.json`,
`adapter_model.safetensors`) in place of the weights (see `lora.py`). It is written under a hidden
staging name (`.step_000040.tmp-*`) and renamed into place, and only then listed in checkpoints.jsonl, so a crash mid-write never leaves a checkpoint
that resume would pick; `clean_stale_staging` removes what such a crash left. Only the newest
checkpoint keeps its optimizer state (it is twice the model's size), and `prune_checkpoints` keeps
the newest few.

checkpoints.jsonl is rewritten whole (through a temporary file) on every change, so our own writes
never tear it; a torn last line (a crash of an older writer, a copy cut short) is ignored when read,
and a bad line anywhere else stops with its file and line. `training_state.pt` is loaded with
`weights_only=True`: a file planted in a shared log_path cannot run code on resume.

`CheckpointWriter` gathers the full weights (under FSDP) and optimizer state on rank 0 and writes
them; with LoRA `final/` also holds `merged/`, the full model with the adapters merged in.
"""

from __future__ import annotations

import errno
import functools
import json
import pickle
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from cookbook.errors import UserError
from cookbook.models import (
    ADAPTER_CONFIG_NAME,
    METADATA_NAME,
    load_model_and_tokenizer,
    read_checkpoint_metadata,
)
from cookbook.training import distributed as dist_utils
from cookbook.training import lora
from cookbook.training.precision import CompensatedAdamW

INDEX_NAME = "checkpoints.jsonl"
TRAINING_STATE_NAME = "training_state.pt"
STEP_NAME = re.compile(r"step_(\d+)")
STAGING_NAME = re.compile(r"\.(step_\d+|final)\.tmp-.+")


class CheckpointIndexError(UserError, ValueError):
    """checkpoints.jsonl holds a line that is not a checkpoint record (other than a torn last one)."""


class DiskFullError(UserError, OSError):
    """A checkpoint could not be written for lack of space; the message names the last good one."""


class UnsafeTrainingStateError(UserError, ValueError):
    """training_state.pt holds something other than tensors and plain values."""


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
    write_weights: Callable[[Path], None] | None = None,
) -> Path:
    """Write one checkpoint atomically (rank 0 only) and record it in checkpoints.jsonl. The weights
    are `model_state` saved through `causal_lm.save_pretrained`, or whatever `write_weights(directory)`
    writes instead (a LoRA adapter).

    Raises DiskFullError, leaving no staging directory, when the disk fills up during the write."""
    log_path = Path(log_path)
    final_dir = log_path / name
    staging = None
    renamed = False
    try:
        staging = Path(tempfile.mkdtemp(dir=log_path, prefix=f".{name}.tmp-"))
        if write_weights is not None:
            write_weights(staging)
        else:
            causal_lm.save_pretrained(staging, state_dict=model_state, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / METADATA_NAME).write_text(json.dumps({**metadata, "step": step}, indent=2))
        if training_state is not None:
            torch.save(training_state, staging / TRAINING_STATE_NAME)
        staging.chmod(0o755)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        staging.rename(final_dir)
        renamed = True
        _write_index(log_path, [*read_index(log_path), {
            "name": name, "step": step, "path": str(final_dir.resolve()), "resumable": training_state is not None,
        }])
    except Exception as error:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if renamed:  # not listed in the index, so not a checkpoint: remove it rather than leave it half-known
            shutil.rmtree(final_dir, ignore_errors=True)
        if is_disk_full(error):
            raise DiskFullError(_disk_full_message(log_path, name, step)) from error
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    if training_state is not None:
        _drop_older_training_states(log_path, keep=final_dir)
    return final_dir


def is_disk_full(error: BaseException) -> bool:
    """Whether a failed write ran out of space: ENOSPC/EDQUOT, or how torch's zip writer and
    safetensors report it (`[enforce fail at inline_container.cc...]`, `StorageFull`)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        if any(sign in text for sign in ("No space left", "StorageFull", "Disk quota exceeded", "os error 28",
                                         "inline_container", "PytorchStreamWriter failed", "file write failed")):
            return True
        error = error.__cause__ or error.__context__
    return False


def _disk_full_message(log_path: Path, name: str, step: int) -> str:
    free = shutil.disk_usage(log_path).free / 2**20
    message = (f"the disk holding {log_path} is full: checkpoint {name} (step {step}) could not be written and "
               f"its partial copy was removed ({free:.0f} MiB free now). ")
    try:
        last = latest_resumable_checkpoint(log_path)
    except CheckpointIndexError:
        last = None
    if last is None:
        return message + "No resumable checkpoint was saved before it; free some space and run again."
    return (message + f"The last good checkpoint is {last['path']} (step {last['step']}): free some space and "
            "rerun with behavior_if_log_dir_exists=resume.")


def _drop_older_training_states(log_path: Path, keep: Path) -> None:
    for entry in read_index(log_path):
        path = checkpoint_dir(log_path, entry)
        if path.resolve() != keep.resolve() and (path / TRAINING_STATE_NAME).exists():
            (path / TRAINING_STATE_NAME).unlink()


def read_index(log_path: str | Path) -> list[dict]:
    """The records of checkpoints.jsonl; a torn last line is ignored (it is what a crash leaves)."""
    path = Path(log_path) / INDEX_NAME
    if not path.exists():
        return []
    numbered = [(number, line) for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
                if line.strip()]
    entries = []
    for position, (number, line) in enumerate(numbered):
        try:
            entry = json.loads(line)
            problem = None if isinstance(entry, dict) and {"name", "step"} <= entry.keys() else \
                "a record must be a JSON object with 'name' and 'step'"
        except json.JSONDecodeError as error:
            problem = f"not a JSON record ({error.msg})"
        if problem is None:
            entries.append(entry)
        elif position == len(numbered) - 1:
            break
        else:
            raise CheckpointIndexError(f"{path}:{number}: {problem}; fix or remove that line to resume")
    return entries


def _write_index(log_path: Path, entries: list[dict]) -> None:
    path = log_path / INDEX_NAME
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    tmp.replace(path)


def checkpoint_dir(log_path: str | Path, entry: dict) -> Path:
    """Where an index entry's checkpoint is: by name under log_path (which may have been moved
    since the absolute `path` was recorded), else that path."""
    by_name = Path(log_path) / entry["name"]
    return by_name if by_name.is_dir() else Path(entry.get("path", by_name))


def latest_resumable_checkpoint(log_path: str | Path) -> dict | None:
    """The newest recorded checkpoint whose directory and training state are complete; its `path`
    is where it is now."""
    for entry in reversed(read_index(log_path)):
        path = checkpoint_dir(log_path, entry)
        if entry.get("resumable") and (path / TRAINING_STATE_NAME).exists() and holds_weights(path):
            return {**entry, "path": str(path)}
    return None


def final_checkpoint(log_path: str | Path) -> Path | None:
    """The `final` checkpoint when it is the newest one recorded (the run finished)."""
    index = read_index(log_path)
    if index and index[-1]["name"] == "final":
        path = checkpoint_dir(log_path, index[-1])
        if holds_weights(path):
            return path
    return None


def holds_weights(path: Path) -> bool:
    """A complete checkpoint directory: a model's config, or a LoRA adapter's."""
    return (path / "config.json").exists() or (path / ADAPTER_CONFIG_NAME).exists()


def load_training_state(path: str | Path) -> dict:
    """A resumable checkpoint's training_state.pt (a checkpoint directory or the file itself),
    loaded with weights_only=True: tensors and plain Python values only."""
    path = Path(path)
    if path.is_dir():
        path = path / TRAINING_STATE_NAME
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsafeTrainingStateError(
            f"{path} holds objects other than tensors and plain values, so it was not loaded (a run of ours "
            f"never writes those; the file may not come from one): {reason}"
        ) from None


def clean_stale_staging(log_path: str | Path) -> list[str]:
    """Remove staging directories (`.step_000040.tmp-*`) a killed checkpoint write left behind;
    returns their names. Call it holding the run's lock: a live run's staging looks the same."""
    removed = []
    for entry in sorted(Path(log_path).iterdir()):
        if STAGING_NAME.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
            removed.append(entry.name)
    return removed


def prune_checkpoints(log_path: str | Path, keep: int | None) -> list[str]:
    """Delete all but the newest `keep` step checkpoints (None: keep all); returns the names deleted.

    `final/` and the checkpoint resume would use are never deleted, and checkpoints.jsonl is
    rewritten first, so it never lists a checkpoint that is gone."""
    if keep is None:
        return []
    if keep < 1:
        raise ValueError(f"keep_last_checkpoints must be >= 1 or None, got {keep}")
    log_path = Path(log_path)
    entries = read_index(log_path)
    on_disk = {p.name for p in log_path.iterdir() if p.is_dir() and STEP_NAME.fullmatch(p.name)}
    names = sorted({e["name"] for e in entries if STEP_NAME.fullmatch(e["name"])} | on_disk,
                   key=lambda name: int(STEP_NAME.fullmatch(name).group(1)))
    resume = latest_resumable_checkpoint(log_path)
    kept = set(names[-keep:]) | ({resume["name"]} if resume else set())
    doomed = [name for name in names if name not in kept]
    if doomed:
        _write_index(log_path, [e for e in entries if e["name"] not in doomed])
        for name in doomed:
            shutil.rmtree(log_path / name, ignore_errors=True)
    return doomed


def capture_rng_state() -> dict:
    """Python's and torch's RNG states; all tensors, ints and tuples, so they load with weights_only."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    python_state = state["python"]
    # torch.save keeps the tuples, but a state that went through JSON or lists still restores.
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_metadata_renderer(model_name: str) -> str | None:
    """The renderer a training checkpoint recorded, when `model_name` is one of ours."""
    path = Path(model_name)
    return read_checkpoint_metadata(path).get("renderer_name") if path.is_dir() else None


class CheckpointWriter:
    """Gathers the full weights (and optimizer state) on rank 0 and writes a checkpoint atomically.

    The weights written are the fp32 masters (in bf16-true: each bf16 weight plus its compensation,
    i.e. the value the optimizer is tracking), so a checkpoint never rounds the training away."""

    def __init__(self, run, policy, causal_lm, optimizer, scheduler, scaler, tokenizer, metadata: dict,
                 save_prefix: str, keep_last: int | None):
        self.run, self.policy, self.optimizer, self.scheduler, self.scaler = run, policy, optimizer, scheduler, scaler
        self.causal_lm, self.tokenizer, self.metadata, self.save_prefix = causal_lm, tokenizer, metadata, save_prefix
        self.keep_last = keep_last
        if run.lora is not None:
            self.metadata = {**metadata, "lora": run.lora.summary()}

    def save(self, name: str, step: int, resumable: bool, export_dtype: str = "float32") -> Path | None:
        info = self.run.info
        adapters = self.run.lora
        if adapters is not None:
            model_state = adapters.adapter_state(dist_utils.unwrap(self.policy), dist_utils.full_tensor,
                                                 prefix=self.save_prefix)
        elif isinstance(self.optimizer, CompensatedAdamW):
            model_state = self.optimizer.full_master_weights(dist_utils.unwrap(self.policy), dist_utils.full_tensor)
        else:
            model_state = dist_utils.full_model_state_dict(self.policy)
        optim_state = dist_utils.full_optimizer_state_dict(self.policy, self.optimizer) if resumable else None
        path = None
        if info.is_main:
            training_state = None
            if resumable:
                training_state = {"optimizer": optim_state, "scheduler": self.scheduler.state_dict(),
                                  "rng": capture_rng_state(), "step": step,
                                  "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None}
            dtype = getattr(torch, export_dtype)
            if adapters is not None:
                # Adapters stay float32 (they are small, and bf16 would round the training away);
                # export_dtype applies to the merged model.
                merged_dtype = dtype if name == "final" and self.run.config.write_merged_final else None
                write_weights = functools.partial(self._write_adapters, weights=model_state, merged_dtype=merged_dtype)
                path = save_checkpoint(self.run.log_path, name, step, model_state, None, self.tokenizer,
                                            self.metadata, training_state, write_weights=write_weights)
            else:
                weights = {k.removeprefix(self.save_prefix): v.to(dtype) if v.is_floating_point() else v
                           for k, v in model_state.items() if k not in self.run.tied_aliases}
                path = save_checkpoint(self.run.log_path, name, step, weights, self.causal_lm, self.tokenizer,
                                            self.metadata, training_state)
            self.run.console.print(f"[green]Saved checkpoint {path}")
            for name in prune_checkpoints(self.run.log_path, self.keep_last):
                self.run.console.print(f"Removed old checkpoint {name} (keep_last_checkpoints={self.keep_last})")
        dist_utils.barrier(info)
        return path

    def _write_adapters(self, directory: Path, weights: dict, merged_dtype: torch.dtype | None) -> None:
        """The adapter files; with `merged_dtype`, also `merged/`: the base (loaded again, on CPU) with
        the adapters merged in, a plain HF directory in that dtype."""
        base_model_name = self.metadata["base_model_name"]
        self.run.lora.save(directory, weights, base_model_name)
        if merged_dtype is None:
            return
        base = load_model_and_tokenizer(base_model_name, dtype="float32", device="cpu",
                                        num_labels=self.run.num_labels)[0]
        lora.save_merged(directory, directory / lora.MERGED_NAME, base, self.tokenizer,
                         {key: value for key, value in self.metadata.items() if key != "lora"}, dtype=merged_dtype)
        self.run.console.print(f"Merged the adapters into the base: final/{lora.MERGED_NAME}")


def tied_aliases(model: nn.Module) -> set[str]:
    """Names under which a parameter appears a second time (lm_head tied to embed_tokens): FSDP's full
    state dict repeats them, a HF checkpoint stores them once."""
    seen: set[int] = set()
    aliases: set[str] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            aliases.add(name)
        seen.add(id(param))
    return aliases
