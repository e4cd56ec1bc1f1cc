"""`reward=sum`: weighted terms typed on the command line, each scored and checked as a reward of its
own, added up per reply; with a trained reward model as one term."""

import chz
import pytest
import torch

from cookbook.on_policy.prompts import PromptItem
from cookbook.on_policy.rewards import (
    REWARDS,
    IFEvalReward,
    Reward,
    RewardError,
    RewardModel,
    SumReward,
    WeightedReward,
)


def reply_length(item, reply: str) -> float:
    return float(len(reply))


def word_count(item, reply: str) -> float:
    return float(len(reply.split()))


def fails_on_b(item, reply: str) -> float:
    if item.key == "b":
        raise ValueError("no score for b")
    return 0.0


@chz.chz
class Config:
    reward: Reward = chz.field(default_factory=IFEvalReward, meta_factory=REWARDS.meta_factory())


def parse(argv):
    return chz.Blueprint(Config).make_from_argv(argv)


def item(key, text, ifeval=None):
    return PromptItem(key, ({"role": "user", "content": text},), ifeval)


ITEMS = [item("a", "Say hi."), item("b", "Say two words.")]
REPLIES = ["hi there", "two words and more"]


def test_terms_are_typed_by_position_on_the_command_line():
    reward = parse(["reward=sum", "reward.terms.0.reward=test_reward_model_sum_reward:reply_length",
                    "reward.terms.0.weight=0.5", "reward.terms.1.reward=reward_model",
                    "reward.terms.1.reward.model_name=rm", "reward.terms.1.weight=2"]).reward
    assert isinstance(reward, SumReward) and reward.name() == "sum"
    assert reward.terms[0].weight == 0.5 and reward.terms[0].reward.name() == "test_reward_model_sum_reward:reply_length"
    assert reward.terms[1] == WeightedReward(reward=RewardModel(model_name="rm"), weight=2.0)
    assert parse(["reward=sum", "reward.terms.0.reward.mode=loose"]).reward.terms[0] == WeightedReward(
        reward=IFEvalReward(mode="loose"), weight=1.0)
    with pytest.raises(chz.blueprint.MissingBlueprintArg, match="Missing required arguments.*reward.terms"):
        parse(["reward=sum"])
    with pytest.raises(ValueError, match="weight must be a finite number"):
        parse(["reward=sum", "reward.terms.0.weight=nan"])


def test_the_score_is_the_weighted_sum_of_the_terms():
    """score(reply) = sum_i w_i * term_i(reply): 0.5 * characters - 2 * words."""
    reward = parse(["reward=sum", "reward.terms.0.reward=test_reward_model_sum_reward:reply_length",
                    "reward.terms.0.weight=0.5", "reward.terms.1.reward=test_reward_model_sum_reward:word_count",
                    "reward.terms.1.weight=-2"]).reward
    scores = reward.build("cpu").score(ITEMS, REPLIES)
    assert scores == [0.5 * 8 - 2 * 2, 0.5 * 18 - 2 * 4]


def test_a_failing_term_is_named_and_every_term_checks_the_prompts():
    reward = parse(["reward=sum", "reward.terms.0.reward=test_reward_model_sum_reward:reply_length",
                    "reward.terms.1.reward=test_reward_model_sum_reward:fails_on_b"]).reward
    with pytest.raises(RewardError, match="reward test_reward_model_sum_reward:fails_on_b failed on prompt 'b'"):
        reward.build("cpu").score(ITEMS, REPLIES)
    with_ifeval = parse(["reward=sum", "reward.terms.0.reward=test_reward_model_sum_reward:reply_length",
                         "reward.terms.1.reward=ifeval"]).reward
    with pytest.raises(RewardError, match="reward ifeval: prompt 'a' .*carries no IFEval instructions"):
        with_ifeval.check_prompts(ITEMS)


def test_ifeval_plus_a_reward_model(tmp_path, tokenizer):
    """The combination the recipe README shows: the IFEval fraction plus a weighted reward-model score."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    ifeval = {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}], "prompt": "say hi"}
    items = [item("a", "say hi", ifeval), item("b", "say hi", ifeval)]
    replies = ["hi there", "HI THERE"]
    reward = parse(["reward=sum", "reward.terms.0.reward=ifeval", "reward.terms.1.reward=reward_model",
                    f"reward.terms.1.reward.model_name={tmp_path / 'rm'}", "reward.terms.1.weight=0.25"]).reward
    reward.check_prompts(items)
    model_scores = RewardModel(model_name=str(tmp_path / "rm")).build("cpu").score(items, replies)
    scores = reward.build("cpu").score(items, replies)
    assert scores == pytest.approx([1.0 + 0.25 * model_scores[0], 0.0 + 0.25 * model_scores[1]])
