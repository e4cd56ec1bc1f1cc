"""`reward=my.module:my_fn`: a user's plain function as the reward.

    def my_fn(item: PromptItem, reply: str) -> float: ...

The function is named by its import path (kept in the config, so the run's config.json says which
function scored it) and imported when the reward is built. It is called once per reply; an exception
it raises stops the run with a `RewardError` naming the function and the prompt.
"""

from __future__ import annotations

import inspect
from typing import Any

import chz
from chz.factories import MetaFromString

from cookbook.errors import InvalidOptionError
from cookbook.on_policy.reward_base import ItemScorer, Reward, RewardScorer
from cookbook.on_policy.reward_registry import import_reward_attribute, register_reward


@register_reward("function")
@chz.chz
class FunctionReward(Reward):
    """A function (item: PromptItem, reply: str) -> float, called reply by reply."""

    function: str = chz.field(doc="module:function taking (item: PromptItem, reply: str), returning a float")

    def name(self) -> str:
        return self.function

    def build(self, device: Any = "cpu") -> RewardScorer:
        return ItemScorer(self.function, load_function(self.function))


def load_function(spec: str):
    """The function `module:function` names; InvalidOptionError when it is missing or cannot take
    (item, reply)."""
    if ":" not in spec:
        raise InvalidOptionError(f"reward.function={spec!r} must be module:function")
    try:
        function = import_reward_attribute(spec)
    except MetaFromString as error:
        raise InvalidOptionError(str(error)) from None
    if not callable(function) or isinstance(function, type):
        raise InvalidOptionError(f"reward.function={spec}: {type(function).__name__} is not a function")
    try:
        inspect.signature(function).bind(None, None)
    except TypeError:
        raise InvalidOptionError(
            f"reward.function={spec}: the function must take two arguments (item: PromptItem, reply: str), "
            f"but its signature is {inspect.signature(function)}"
        ) from None
    except ValueError:
        pass  # a builtin without a signature: let the call decide
    return function
