"""Renderers by name, the default one for a model, and a check that it matches the model's template.

The default is chosen from the tokenizer's chat template when there is one (what the model was
trained on), else from the model name. A mismatch between the renderer used for training and
the template used at serving time silently costs quality, so `check_renderer_matches_template`
renders a few probe conversations both ways and warns on the first difference.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

from cookbook.renderers.base import Message, Renderer
from cookbook.renderers.chatml import ChatMLRenderer, Qwen25Renderer
from cookbook.renderers.hf import HFTemplateRenderer
from cookbook.renderers.llama3 import Llama3Renderer
from cookbook.renderers.qwen3 import Qwen3DisableThinkingRenderer, Qwen3Renderer
from cookbook.renderers.role_colon import RoleColonRenderer

logger = logging.getLogger(__name__)

RendererFactory = Callable[..., Renderer]
_REGISTRY: dict[str, RendererFactory] = {}


def register_renderer(name: str, cls: RendererFactory) -> None:
    """Make `get_renderer(name, tokenizer)` return `cls(tokenizer)`; a later call replaces an earlier one."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a renderer name must be a non-empty string, got {name!r}")
    if not callable(cls):
        raise TypeError(f"renderer {name!r}: expected a Renderer class or factory, got {cls!r}")
    _REGISTRY[name] = cls


def renderer_names() -> list[str]:
    """Every registered renderer name, sorted."""
    return sorted(_REGISTRY)


def get_renderer(name: str, tokenizer) -> Renderer:
    """The renderer registered as `name`, built for `tokenizer`."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown renderer {name!r}; known renderers: {', '.join(renderer_names())}")
    return _REGISTRY[name](tokenizer)


for _cls in (
    ChatMLRenderer,
    Qwen25Renderer,
    Llama3Renderer,
    Qwen3Renderer,
    Qwen3DisableThinkingRenderer,
    RoleColonRenderer,
    HFTemplateRenderer,
):
    register_renderer(_cls.name, _cls)


def renderer_name_for_template(template: str | None) -> str:
    """The renderer that reproduces a chat template: 'role_colon' without one, 'hf' for an unknown one."""
    if not template:
        return "role_colon"
    if "<|im_start|>" in template:
        if "<think>" in template:
            return "qwen3"
        if "named SmolLM" in template:
            return "chatml"
        if "You are Qwen, created by Alibaba Cloud" in template:
            return "qwen2_5"
        return "hf"
    if "<|start_header_id|>" in template:
        return "llama3"
    return "hf"


def renderer_name_for_model_name(model_name: str) -> str | None:
    """A guess from the name alone (None when the name says nothing)."""
    lowered = model_name.lower().replace("_", "-")
    if "qwen3" in lowered:
        return "qwen3"
    if "qwen2.5" in lowered or "qwen2-5" in lowered:
        return "qwen2_5"
    if "smollm" in lowered:
        return "chatml"
    if "llama-3" in lowered or "llama3" in lowered:
        return "llama3"
    return None


def _template_in_directory(directory: Path) -> str | None:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = directory / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def default_renderer_name(tokenizer_or_model_name) -> str:
    """The renderer for a tokenizer (from its chat_template) or a model name / local directory.

    A local checkpoint directory is judged by the template saved in it; a name that says nothing
    about its family gets 'hf' (its own template decides, and 'hf' fails clearly without one).
    """
    if isinstance(tokenizer_or_model_name, (str, Path)):
        path = Path(tokenizer_or_model_name)
        if path.is_dir():
            return renderer_name_for_template(_template_in_directory(path))
        return renderer_name_for_model_name(str(tokenizer_or_model_name)) or "hf"
    template = getattr(tokenizer_or_model_name, "chat_template", None)
    return renderer_name_for_template(template if isinstance(template, str) else None)


PROBE_CONVERSATIONS: list[list[Message]] = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."}],
    [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome."},
    ],
]


def check_renderer_matches_template(renderer: Renderer, tokenizer) -> bool:
    """Render probe conversations with `renderer` and with the tokenizer's own chat template; warn
    (and return False) at the first difference. A tokenizer without a template agrees with anything."""
    if not getattr(tokenizer, "chat_template", None):
        logger.info("tokenizer has no chat_template; nothing to check renderer %r against", renderer.name)
        return True
    for probe in PROBE_CONVERSATIONS:
        for add_generation_prompt in (False, True) if probe[-1]["role"] == "user" else (False,):
            ours = renderer.render_text(probe, add_generation_prompt=add_generation_prompt)
            try:
                theirs = tokenizer.apply_chat_template(
                    probe,
                    tokenize=False,
                    add_generation_prompt=add_generation_prompt,
                    **renderer.template_kwargs,
                )
            except Exception as error:  # a template may reject a probe (e.g. no system role)
                warnings.warn(
                    f"could not compare renderer {renderer.name!r} with the model's chat template: {error}",
                    stacklevel=2,
                )
                return False
            if ours != theirs:
                at = next(
                    (i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs))
                )
                warnings.warn(
                    f"renderer {renderer.name!r} disagrees with the chat template of "
                    f"{getattr(tokenizer, 'name_or_path', 'this tokenizer')!r} at character {at}: renderer "
                    f"gives {ours[max(0, at - 20) : at + 40]!r}, template gives {theirs[max(0, at - 20) : at + 40]!r}. "
                    "The model will see a format it was not trained on; renderer 'hf' uses the template itself.",
                    stacklevel=2,
                )
                return False
    return True
