"""Choosing the on-policy recipe's reward by name on the command line.

- `reward=ifeval` (the default), `reward=reward_model reward.model_name=DIR`: registered rewards;
- `reward=my.module:MyReward`: a user's subclass of `Reward`;
- `reward=my.module:my_fn`: a user's plain function `my_fn(item: PromptItem, reply: str) -> float`,
  the shortest way to a custom reward (it becomes `reward=function reward.function=my.module:my_fn`).

A config declares

    reward: Reward = chz.field(default_factory=IFEvalReward, meta_factory=reward_meta_factory(), doc="...")

and a field override given without `reward=` (e.g. only `reward.mode=loose`) sets the default.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from chz.factories import MetaFromString

from cookbook.datasets.builder_registry import BuilderRegistry, NamedBuilderMetaFactory
from cookbook.on_policy.reward_base import Reward

DEFAULT_REWARD = "ifeval"
# Modules whose import registers the built-in rewards (imported on first lookup).
BUILTIN_MODULES = (
    "cookbook.on_policy.function_reward",
    "cookbook.on_policy.ifeval_reward",
    "cookbook.on_policy.reward_model",
)

_REWARDS = BuilderRegistry(Reward, "cookbook.on_policy.Reward", "register_reward", BUILTIN_MODULES, option="reward")
RewardT = TypeVar("RewardT", bound=type[Reward])


def register_reward(name: str) -> Callable[[RewardT], RewardT]:
    """Class decorator: make a reward selectable as `reward=<name>`."""
    return _REWARDS.register(name)


def registered_rewards() -> dict[str, type[Reward]]:
    """Name -> reward class, built-ins included."""
    return _REWARDS.classes()


def import_reward_attribute(spec: str) -> Any:
    """What `module:attribute` names; MetaFromString (chz's "bad value" error) when it cannot be imported."""
    return _REWARDS.import_attribute(spec)


def resolve_reward(spec: str) -> Callable[..., Reward]:
    """The reward factory for any `reward=` form (see the module docstring); ValueError lists the names."""
    try:
        return _factory_for(spec)
    except MetaFromString as error:
        raise ValueError(str(error)) from None


def _factory_for(spec: str) -> Callable[..., Reward]:
    classes = registered_rewards()
    if spec in classes:
        return classes[spec]
    if ":" not in spec:
        raise MetaFromString(
            f"Unknown reward {spec!r}. Registered rewards: {', '.join(classes)}; or module:Class for your own "
            "Reward subclass, or module:function for a function (item: PromptItem, reply: str) -> float."
        )
    value = import_reward_attribute(spec)
    if isinstance(value, type) and issubclass(value, Reward):
        return value
    if callable(value) and not isinstance(value, type):
        return functools.partial(classes["function"], function=spec)
    raise MetaFromString(
        f"reward={spec}: {spec.partition(':')[2]} is neither a subclass of cookbook.on_policy.Reward nor a "
        "function (item: PromptItem, reply: str) -> float"
    )


class RewardMetaFactory(NamedBuilderMetaFactory):
    """chz meta-factory for a `Reward` field (see the module docstring)."""

    option = "reward"
    default_spec = DEFAULT_REWARD
    forms = "a registered name, module:Class or module:function"
    resolve = staticmethod(_factory_for)


def reward_meta_factory(default: str = DEFAULT_REWARD) -> RewardMetaFactory:
    """The `meta_factory=` for a config field typed `Reward`."""
    return RewardMetaFactory(default)
