"""`Reward`: the chz class every reward of the on-policy recipe subclasses, and the scorer it builds.

A reward holds configuration only. `reward.build(device)` makes the scorer, which scores a batch at a
time: `scorer.score(items, replies) -> list[float]`, one number per reply, `items[i]` being the
prompt `replies[i]` answers (a reward model batches; a rule-based reward just loops).

Whatever a subclass's `build` returns is wrapped in a `CheckedScorer`, so that every reward, a
user's too, fails the same way: a `RewardError` that names the reward and the prompt ("reward ifeval
failed on prompt 'synthetic-17': ValueError: ..."), and one finite number per reply or an error
saying which prompt got what. A run should stop on a broken reward, not train on NaN.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import chz

from cookbook.errors import UserError
from cookbook.on_policy.prompt import PromptItem


class RewardError(UserError, RuntimeError):
    """A reward that failed on a prompt, or gave something other than a finite number for it."""


class RewardScorer(Protocol):
    def score(self, items: list[PromptItem], replies: list[str]) -> list[float]: ...


class ItemScorer:
    """A scorer made of a per-reply function `score_one(item, reply) -> float`, called reply by reply,
    so that a failure names the exact prompt."""

    def __init__(self, name: str, score_one: Callable[[PromptItem, str], float]) -> None:
        self.name = name
        self.score_one = score_one

    def score(self, items: list[PromptItem], replies: list[str]) -> list[float]:
        values = []
        for item, reply in zip(items, replies, strict=True):
            try:
                values.append(self.score_one(item, reply))
            except RewardError:
                raise
            except Exception as error:
                raise RewardError(f"reward {self.name} failed on prompt {item.key!r}: "
                                  f"{type(error).__name__}: {error}") from error
        return values


class CheckedScorer:
    """Any scorer, with its failures named and its output checked (see the module docstring)."""

    def __init__(self, inner: RewardScorer, name: str) -> None:
        if not callable(getattr(inner, "score", None)):
            raise TypeError(f"reward {name}: build() must return an object with score(items, replies), "
                            f"got {type(inner).__name__}")
        self.inner = inner
        self.name = name

    def score(self, items: Sequence[PromptItem], replies: Sequence[str]) -> list[float]:
        if len(items) != len(replies):
            raise ValueError(f"reward {self.name}: {len(items)} prompts for {len(replies)} replies")
        if not items:
            return []
        try:
            values = list(self.inner.score(list(items), list(replies)))
        except RewardError:
            raise
        except Exception as error:
            raise RewardError(f"reward {self.name} failed on {_which(items)}: "
                              f"{type(error).__name__}: {error}") from error
        if len(values) != len(items):
            raise RewardError(f"reward {self.name} gave {len(values)} scores for {len(items)} replies "
                              f"({_which(items)})")
        return [_finite(value, self.name, item) for value, item in zip(values, items, strict=True)]


def _which(items: Sequence[PromptItem]) -> str:
    if len(items) == 1:
        return f"prompt {items[0].key!r}"
    shown = ", ".join(repr(item.key) for item in items[:3])
    return f"a batch of {len(items)} prompts ({shown}{', ...' if len(items) > 3 else ''})"


def _finite(value: Any, name: str, item: PromptItem) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, str) or not math.isfinite(number):
        raise RewardError(f"reward {name} gave {value!r} for prompt {item.key!r}; a reward must be a finite number")
    return number


@chz.chz
class Reward:
    """Base class of rewards. Configure with fields; `build(device)` returns the scorer."""

    def name(self) -> str:
        """How messages name this reward (the registered name, where there is one)."""
        return type(self).__name__

    def build(self, device: Any = "cpu") -> RewardScorer:
        raise NotImplementedError(f"{type(self).__name__} must define build(device)")

    def check_prompts(self, items: Sequence[PromptItem]) -> None:
        """Raise RewardError when this reward cannot score replies to some of `items` (called before any
        sampling, so a mismatch of prompts and reward fails in seconds); the default accepts any."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        build = cls.__dict__.get("build")
        if build is not None and not getattr(build, "_returns_checked", False):
            cls.build = _checked_build(build)


def _checked_build(build: Callable[..., RewardScorer]) -> Callable[..., CheckedScorer]:
    @functools.wraps(build)
    def checked_build(self: Reward, device: Any = "cpu") -> CheckedScorer:
        scorer = build(self, device)
        return scorer if isinstance(scorer, CheckedScorer) else CheckedScorer(scorer, self.name())

    checked_build._returns_checked = True  # type: ignore[attr-defined]
    return checked_build
