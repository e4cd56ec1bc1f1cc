"""The on-policy recipe's rewards, in one place to import from.

    from cookbook.on_policy.rewards import IFEvalReward, Reward, reward_meta_factory

    reward: Reward = chz.field(default_factory=IFEvalReward, meta_factory=reward_meta_factory(), doc="...")

`config.reward.check_prompts(prompts)` refuses prompts the reward cannot score (before sampling);
`scorer = config.reward.build(device)` then gives `scorer.score(items, replies) -> list[float]`, which
raises `RewardError` naming the reward and the prompt when scoring fails. The forms of `reward=` are
listed in `reward_registry`; a user's own reward is a `Reward` subclass or a plain function
(item, reply) -> float, given as `reward=my.module:Name`.
"""

from cookbook.on_policy.function_reward import FunctionReward, load_function
from cookbook.on_policy.ifeval_reward import IFEvalReward
from cookbook.on_policy.reward_base import CheckedScorer, ItemScorer, Reward, RewardError, RewardScorer
from cookbook.on_policy.reward_model import NotARewardModelError, RewardModel, RewardModelScorer
from cookbook.on_policy.reward_registry import (
    DEFAULT_REWARD,
    RewardMetaFactory,
    register_reward,
    registered_rewards,
    resolve_reward,
    reward_meta_factory,
)

__all__ = [
    "DEFAULT_REWARD",
    "CheckedScorer",
    "FunctionReward",
    "IFEvalReward",
    "ItemScorer",
    "NotARewardModelError",
    "Reward",
    "RewardError",
    "RewardMetaFactory",
    "RewardModel",
    "RewardModelScorer",
    "RewardScorer",
    "load_function",
    "register_reward",
    "registered_rewards",
    "resolve_reward",
    "reward_meta_factory",
]
