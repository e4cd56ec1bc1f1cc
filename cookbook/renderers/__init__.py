"""Renderers: conversations -> token ids + loss weights, exactly as a model's chat template would.

`get_renderer(name, tokenizer)` builds one; `default_renderer_name(tokenizer)` picks the one that
matches the model. See `base.py` for the interface and the tokenization rule they all share.
"""

from cookbook.renderers.base import (
    Message,
    ParsedResponse,
    RenderedExample,
    Renderer,
    Segment,
    StopReason,
    TrainOn,
    validate_messages,
)
from cookbook.renderers.chatml import ChatMLRenderer, Qwen25Renderer
from cookbook.renderers.hf import HFTemplateRenderer
from cookbook.renderers.llama3 import Llama3Renderer
from cookbook.renderers.qwen3 import Qwen3DisableThinkingRenderer, Qwen3Renderer, split_thinking
from cookbook.renderers.registry import (
    check_renderer_matches_template,
    default_renderer_name,
    get_renderer,
    register_renderer,
    renderer_names,
)
from cookbook.renderers.role_colon import RoleColonRenderer

__all__ = [
    "ChatMLRenderer",
    "HFTemplateRenderer",
    "Llama3Renderer",
    "Message",
    "ParsedResponse",
    "Qwen25Renderer",
    "Qwen3DisableThinkingRenderer",
    "Qwen3Renderer",
    "RenderedExample",
    "Renderer",
    "RoleColonRenderer",
    "Segment",
    "StopReason",
    "TrainOn",
    "check_renderer_matches_template",
    "default_renderer_name",
    "get_renderer",
    "register_renderer",
    "renderer_names",
    "split_thinking",
    "validate_messages",
]
