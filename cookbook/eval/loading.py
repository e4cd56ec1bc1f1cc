"""Finding what to evaluate: a model, its tokenizer, and the renderer that formats its prompts.

A training checkpoint records the renderer it was trained with (and its base model) in
`cookbook_checkpoint.json`; evaluation must use the same renderer, or the model is scored on a
prompt format it never saw. The order of preference is therefore: an explicit `renderer_name`,
then the checkpoint's record, then the default renderer of the base model (or of the tokenizer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cookbook.models import DEFAULT_MODEL, ModelNotFoundError, load_tokenizer

CHECKPOINT_INFO_FILE = "cookbook_checkpoint.json"


def read_checkpoint_info(model_path: str) -> dict[str, Any]:
    """The checkpoint's `cookbook_checkpoint.json` as a dict ({} when the path has none)."""
    path = Path(model_path).expanduser()
    info_file = path / CHECKPOINT_INFO_FILE
    if not path.is_dir() or not info_file.exists():
        return {}
    try:
        info = json.loads(info_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{info_file} is not valid JSON: {error}") from None
    if not isinstance(info, dict):
        raise ValueError(f"{info_file} must hold a JSON object, got {type(info).__name__}")
    return info


def check_model_path(model_path: str) -> None:
    """Fail early, naming the option, for a model_path that cannot exist."""
    if model_path == DEFAULT_MODEL:
        return
    path = Path(model_path).expanduser()
    looks_local = model_path.startswith((".", "/", "~")) or model_path.count("/") > 1
    if looks_local and not path.exists():
        raise ModelNotFoundError(f"model_path={model_path!r}: no such directory")
    if path.is_file():
        raise ModelNotFoundError(f"model_path={model_path!r} is a file; pass a checkpoint directory")


@dataclass(frozen=True)
class ModelSpec:
    """Where the weights come from and how prompts are rendered for them."""

    model_path: str
    base_model_name: str | None
    renderer_name: str


def resolve_model_spec(model_path: str, model_name: str | None = None, renderer_name: str | None = None, tokenizer=None) -> ModelSpec:
    """Decide the renderer for `model_path` (see the module docstring for the order)."""
    check_model_path(model_path)
    info = read_checkpoint_info(model_path)
    base_model_name = model_name or info.get("base_model_name")
    name = renderer_name or info.get("renderer_name")
    if not name:
        from cookbook.renderers import default_renderer_name

        if base_model_name:
            name = default_renderer_name(base_model_name)
        else:
            name = default_renderer_name(tokenizer if tokenizer is not None else load_tokenizer(model_path))
    return ModelSpec(model_path=model_path, base_model_name=base_model_name, renderer_name=name)


def load_renderer(renderer_name: str, tokenizer):
    """Our renderer by name; an unknown name raises ValueError naming the option and the choices.
    Warns when the renderer disagrees with the model's own chat template."""
    from cookbook.renderers import check_renderer_matches_template, get_renderer

    try:
        renderer = get_renderer(renderer_name, tokenizer)
    except ValueError as error:
        raise ValueError(f"renderer_name={renderer_name!r}: {error}") from None
    check_renderer_matches_template(renderer, tokenizer)
    return renderer
