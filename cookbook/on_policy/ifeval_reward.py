"""`reward=ifeval` (the default): the fraction of the prompt's IFEval instructions a reply follows.

A partial score (2 of 3 instructions = 0.667) rather than all-or-nothing gives best-versus-worst
pairs on many more prompts: with several instructions per prompt, replies that all miss one
instruction still differ in how many others they follow. "strict" checks the reply as written, as
the IFEval evaluation's strict numbers do; "loose" also forgives a first/last line or `*` markup.
The checkers are those of `cookbook.eval.ifeval` (the IFEval registry), so training and evaluation
agree on what following an instruction means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import chz

from cookbook.on_policy.prompt import PromptItem
from cookbook.on_policy.reward_base import ItemScorer, Reward, RewardError, RewardScorer
from cookbook.on_policy.reward_registry import register_reward


@register_reward("ifeval")
@chz.chz
class IFEvalReward(Reward):
    """Fraction of the prompt's instructions followed (needs prompts with IFEval fields)."""

    mode: Literal["strict", "loose"] = chz.field(
        default="strict", doc="strict: the reply as written; loose: also with its first/last line or * markup removed"
    )

    def name(self) -> str:
        return "ifeval"

    def build(self, device: Any = "cpu") -> RewardScorer:
        from cookbook.eval.ifeval import instruction_registry

        instruction_registry()  # NLTK's tables and the checkers, once, before the first reply
        return ItemScorer(self.name(), self.score_one)

    def check_prompts(self, items: Sequence[PromptItem]) -> None:
        lacking = [item for item in items if item.ifeval is None]
        if lacking:
            raise _no_instructions(lacking[0], f" (and {len(lacking) - 1:,} more)" if len(lacking) > 1 else "")

    def score_one(self, item: PromptItem, reply: str) -> float:
        from cookbook.eval.ifeval import score_response

        if item.ifeval is None:
            raise _no_instructions(item)
        verdicts = score_response(reply, item.ifeval)[self.mode]
        return sum(verdicts) / len(verdicts)


def _no_instructions(item: PromptItem, more: str = "") -> RewardError:
    return RewardError(
        f"reward ifeval: prompt {item.key!r}{more} carries no IFEval instructions; use prompts with "
        "instruction_id_list/kwargs (prompts=ifeval_synthetic, or a prompts file whose rows have those "
        "fields), or another reward (reward=reward_model, reward=my.module:my_function)"
    )
