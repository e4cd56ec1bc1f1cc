"""Choosing the on-policy recipe's prompt source by name on the command line.

The forms, as for `dataset=`:

- `prompts=ifeval_synthetic` (the default), `prompts=file`, `prompts=preference`: registered sources;
- `prompts=prompts.jsonl`: shorthand for `prompts=file prompts.path=prompts.jsonl`;
- `prompts=prompts:hhh`, `prompts=prompts:demo`, `prompts=prompts:prefs.jsonl`: the prompts of any
  preference data set (`prompts.dataset.test_size=...` then sets fields of that preference builder);
- `prompts=my.module:MySource`: a user's subclass of `PromptSource`.

A config declares

    prompts: PromptSource = chz.field(
        default_factory=IFEvalSyntheticPrompts, meta_factory=prompt_meta_factory(), doc="...")

and a field override given without `prompts=` (e.g. only `prompts.num_prompts=64`) sets the default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from chz.factories import MetaFromString

from cookbook.datasets.builder_registry import BuilderRegistry, NamedBuilderMetaFactory
from cookbook.on_policy.prompt_source import PromptSource

DEFAULT_PROMPTS = "ifeval_synthetic"
PREFERENCE_PREFIX = "prompts:"
# Modules whose import registers the built-in sources (imported on first lookup).
BUILTIN_MODULES = (
    "cookbook.on_policy.ifeval_synthetic",
    "cookbook.on_policy.prompt_file",
    "cookbook.on_policy.preference_prompts",
)

_SOURCES = BuilderRegistry(
    PromptSource, "cookbook.on_policy.PromptSource", "register_prompt_source", BUILTIN_MODULES,
    option="prompts", file_suffixes=(".jsonl",),
)
SourceT = TypeVar("SourceT", bound=type[PromptSource])


def register_prompt_source(name: str) -> Callable[[SourceT], SourceT]:
    """Class decorator: make a prompt source selectable as `prompts=<name>`."""
    if name.startswith(PREFERENCE_PREFIX):
        raise ValueError(f"prompt source names starting with {PREFERENCE_PREFIX!r} are reserved")
    return _SOURCES.register(name)


def registered_prompt_sources() -> dict[str, type[PromptSource]]:
    """Name -> source class, built-ins included."""
    return _SOURCES.classes()


def resolve_prompt_source(spec: str) -> Callable[..., PromptSource]:
    """The source factory for any `prompts=` form (see the module docstring); ValueError lists the names."""
    try:
        return _factory_for(spec)
    except MetaFromString as error:
        raise ValueError(str(error)) from None


def _factory_for(spec: str) -> Callable[..., PromptSource]:
    if spec.startswith(PREFERENCE_PREFIX):
        from cookbook.on_policy.preference_prompts import preference_prompts_for

        return preference_prompts_for(spec.removeprefix(PREFERENCE_PREFIX))
    factory = _SOURCES.file_factory(spec) or _SOURCES.find_class(spec)
    if factory is None:
        raise MetaFromString(
            f"Unknown prompts {spec!r}. Registered prompt sources: {', '.join(registered_prompt_sources())}; "
            f"or {PREFERENCE_PREFIX}<preference dataset> (e.g. {PREFERENCE_PREFIX}demo), a .jsonl file, "
            "or module:Class for your own PromptSource subclass."
        )
    return factory


class PromptMetaFactory(NamedBuilderMetaFactory):
    """chz meta-factory for a `PromptSource` field (see the module docstring)."""

    option = "prompts"
    default_spec = DEFAULT_PROMPTS
    forms = f"a registered name, {PREFERENCE_PREFIX}<dataset>, a .jsonl file or module:Class"
    resolve = staticmethod(_factory_for)


def prompt_meta_factory(default: str = DEFAULT_PROMPTS) -> PromptMetaFactory:
    """The `meta_factory=` for a config field typed `PromptSource`."""
    return PromptMetaFactory(default)
