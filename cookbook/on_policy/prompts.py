"""The on-policy recipe's prompt sources, in one place to import from.

    from cookbook.on_policy.prompts import PromptSource, IFEvalSyntheticPrompts, prompt_meta_factory

    prompts: PromptSource = chz.field(
        default_factory=IFEvalSyntheticPrompts, meta_factory=prompt_meta_factory(), doc="...")

Calling a source (`config.prompts()`) gives a `PromptList`: a list of `PromptItem` that also carries
`rows_read`, `skipped` and `describe()`, for the recipe to report what was left out. The forms of
`prompts=` are listed in `prompt_registry`; a user's own source subclasses `PromptSource` (see
`prompt_source`) and is given as `prompts=my.module:MySource`.
"""

from cookbook.on_policy.ifeval_synthetic import IFEvalSyntheticPrompts, synthetic_prompts
from cookbook.on_policy.preference_prompts import PreferencePrompts, preference_prompts_for
from cookbook.on_policy.prompt import PromptItem, PromptList
from cookbook.on_policy.prompt_file import FilePrompts, PromptFileError
from cookbook.on_policy.prompt_registry import (
    DEFAULT_PROMPTS,
    PREFERENCE_PREFIX,
    PromptMetaFactory,
    prompt_meta_factory,
    register_prompt_source,
    registered_prompt_sources,
    resolve_prompt_source,
)
from cookbook.on_policy.prompt_source import NoPromptsError, PromptError, PromptSource

__all__ = [
    "DEFAULT_PROMPTS",
    "PREFERENCE_PREFIX",
    "FilePrompts",
    "IFEvalSyntheticPrompts",
    "NoPromptsError",
    "PreferencePrompts",
    "PromptError",
    "PromptFileError",
    "PromptItem",
    "PromptList",
    "PromptMetaFactory",
    "PromptSource",
    "preference_prompts_for",
    "prompt_meta_factory",
    "register_prompt_source",
    "registered_prompt_sources",
    "resolve_prompt_source",
    "synthetic_prompts",
]
