"""Resuming with changed options: which changes a resumed run may take, and which it must refuse.

A resumed run continues the stored run, so an option that changes what the run means (model, data,
loss, beta, learning rate and schedule, batch sizes, precision, LoRA) cannot quietly change
halfway: `check_resume_config` refuses such a change naming every differing field (`old -> new`),
unless the user passes the override. Options that do not change the result (eval and save cadence,
logging, display, layout, micro-batch size) are allowed and returned, so the caller can record them.

Configs are compared as stored in config.json (JSON values, the data builder as a nested dict), with
nested fields named by dots (`dataset.path`). A meaning field is a pattern (fnmatch): `lora_*`
matches every LoRA option and `dataset` matches every field of the data set. A field recorded on
only one side (an option added since the run was stored) is not a conflict: it is returned with the
allowed changes.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Collection
from typing import Any

from cookbook.errors import UserError

# The options that change what a preference or SFT run computes.
MEANING_FIELDS: tuple[str, ...] = (
    "model_name", "load_checkpoint_path", "reference_model_name", "renderer_name", "dataset",
    "loss_type", "dpo_beta", "label_smoothing", "simpo_gamma", "nll_weight",
    "learning_rate", "lr_schedule", "warmup_steps", "weight_decay", "max_grad_norm",
    "batch_size", "max_length", "num_epochs", "max_steps", "seed", "precision", "resolved_precision", "dtype",
    "lora_*",
    # on-policy preference training
    "prompts", "reward", "rounds", "prompts_per_round", "samples_per_prompt", "steps_per_round", "min_reward_gap",
    "reference", "temperature", "top_p", "max_new_tokens",
)
# The option that lets a resume apply meaning changes anyway.
OVERRIDE_FIELD = "resume_allow_config_change"
# Never worth recording: how this process was started, not what the run is (and the history of
# earlier resumes, if the caller keeps one in config.json under that name).
IGNORED_FIELDS: tuple[str, ...] = ("behavior_if_log_dir_exists", "log_path", OVERRIDE_FIELD, "resume_history")
MISSING = "<not recorded>"


class ResumeConfigError(UserError, ValueError):
    """Resuming with options that change the run's meaning, without the override."""


def check_resume_config(
    stored: dict,
    new: dict,
    *,
    meaning_fields: Collection[str] = MEANING_FIELDS,
    allow_meaning_changes: bool = False,
    override_option: str = f"{OVERRIDE_FIELD}=true",
    ignored_fields: Collection[str] = IGNORED_FIELDS,
) -> dict[str, tuple[Any, Any]]:
    """The differing fields a resume may apply, `{field: (old, new)}`; raises ResumeConfigError
    naming each differing meaning field unless `allow_meaning_changes`, in which case they are
    returned too. `stored` is config.json's dict, `new` the new run's (JSON round-tripped here)."""
    differences = config_differences(stored, new)
    for field in [f for f in differences if _matches(f, ignored_fields)]:
        del differences[field]
    refused = {field: change for field, change in differences.items()
               if _matches(field, meaning_fields) and MISSING not in change}
    if refused and not allow_meaning_changes:
        listed = ", ".join(f"{field} {_show(old)} -> {_show(value)}" for field, (old, value) in refused.items())
        raise ResumeConfigError(
            f"cannot resume with changed options that change what the run computes: {listed}. Resume with "
            f"the stored values, start a new log_path, or pass {override_option} to apply them from here on."
        )
    return differences


def config_differences(stored: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """`{dotted field: (old, new)}` for every field whose JSON value differs (MISSING on a side
    that does not record it), in the order of `new` then `stored`."""
    old_flat, new_flat = _flatten(_as_json(stored)), _flatten(_as_json(new))
    fields = list(new_flat) + [f for f in old_flat if f not in new_flat]
    return {field: (old_flat.get(field, MISSING), new_flat.get(field, MISSING)) for field in fields
            if old_flat.get(field, MISSING) != new_flat.get(field, MISSING)}


def _as_json(values: dict) -> dict:
    # config.json is written with default=str, so compare what it would hold.
    return json.loads(json.dumps(values, default=str))


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _matches(field: str, patterns: Collection[str]) -> bool:
    parts = field.split(".")
    prefixes = [".".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes for pattern in patterns)


def _show(value: Any) -> str:
    return value if value == MISSING else json.dumps(value)
