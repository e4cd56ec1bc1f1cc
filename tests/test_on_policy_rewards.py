"""The on-policy recipe's rewards: IFEval fractions on hand-made replies, a user's function or class,
a tiny random-init reward model, the errors that name the reward and the prompt, and choosing a
reward from the command line."""

import sys
import textwrap

import chz
import pytest
import torch

from cookbook.errors import InvalidOptionError, UserError
from cookbook.models import ModelNotFoundError
from cookbook.on_policy.prompts import PromptItem
from cookbook.on_policy.rewards import (
    REWARDS,
    CheckedScorer,
    FunctionReward,
    IFEvalReward,
    NotARewardModelError,
    Reward,
    RewardError,
    RewardModel,
    render_for_reward,
)


@chz.chz
class RewardConfig:
    """A stand-in for the recipe's config with the reward field declared as the recipe declares it."""

    reward: Reward = chz.field(default_factory=IFEvalReward, meta_factory=REWARDS.meta_factory(), doc="reward")


def parse(argv):
    return chz.Blueprint(RewardConfig).make_from_argv(argv)


def _item(key, text, ids=None, kwargs=None):
    ifeval = None if ids is None else {"instruction_id_list": ids, "kwargs": kwargs, "prompt": text}
    return PromptItem(key, ({"role": "user", "content": text},), ifeval)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_rewards.py").write_text(textwrap.dedent("""
        import chz
        from cookbook.on_policy.rewards import Reward

        def length(item, reply):
            return len(reply) / 10

        def broken(item, reply):
            raise ValueError("boom")

        def not_a_number(item, reply):
            return float("nan") if item.key == "b" else 1.0

        def one_argument(reply):
            return 0.0

        NOT_CALLABLE = 3

        class BatchScorer:
            def __init__(self, fail):
                self.fail = fail

            def score(self, items, replies):
                if self.fail:
                    raise RuntimeError("out of memory")
                return [1.0] * (len(items) - 1)  # one short

        @chz.chz
        class Batched(Reward):
            fail: bool = False

            def build(self, device="cpu"):
                return BatchScorer(self.fail)
    """), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_rewards", raising=False)


# -- ifeval ---------------------------------------------------------------------------------------


def test_ifeval_reward_is_the_fraction_of_instructions_followed():
    """reward = (instructions followed, strict) / (instructions of the prompt)."""
    item = _item("p1", "Describe a quiet morning.",
                 ["punctuation:no_comma", "change_case:english_lowercase", "detectable_format:title"], [{}, {}, {}])
    scorer = IFEvalReward().build()
    replies = [
        "<<a quiet morning>>\nthe kettle hums and the street is still asleep.",  # all three
        "<<a quiet morning>>\nthe kettle hums, and the street is still asleep.",  # a comma
        "The Kettle Hums, And The Street Is Still Asleep.",  # comma, capitals, no title
    ]
    assert scorer.score([item] * 3, replies) == pytest.approx([1.0, 2 / 3, 0.0])


def test_loose_mode_forgives_an_opening_line():
    item = _item("p2", "Say something.", ["startend:quotation"], [{}])
    reply = 'Here you go:\n"the moon is bright tonight"'
    assert IFEvalReward().build().score([item], [reply]) == [0.0]
    assert IFEvalReward(mode="loose").build().score([item], [reply]) == [1.0]


def test_ifeval_reward_on_prompts_without_instructions_names_the_prompt():
    plain = _item("plain-1", "Hello there.")
    message = r"reward ifeval: prompt 'plain-1' carries no IFEval instructions; use prompts with instruction_id_list"
    with pytest.raises(RewardError, match=message):
        IFEvalReward().build().score([plain], ["hi"])
    with pytest.raises(RewardError, match=r"prompt 'plain-1' \(and 1 more\) carries no IFEval"):
        IFEvalReward().check_prompts([_item("ok", "x", ["punctuation:no_comma"], [{}]), plain, plain])
    FunctionReward(function="math:hypot").check_prompts([plain])  # other rewards take any prompt


def test_a_checker_that_raises_is_named_with_the_prompt():
    bad = _item("synthetic-17", "x", ["keywords:frequency"], [{"keyword": "a", "frequency": 2, "relation": "most"}])
    with pytest.raises(RewardError, match=r"^reward ifeval failed on prompt 'synthetic-17': ValueError: "):
        IFEvalReward().build().score([bad], ["a reply"])
    assert issubclass(RewardError, UserError)


# -- a user's function or class ---------------------------------------------------------------------


def test_a_users_function_is_the_reward(user_module):
    reward = parse(["reward=user_rewards:length"]).reward
    assert reward == FunctionReward(function="user_rewards:length")
    assert reward.build().score([_item("a", "x"), _item("b", "y")], ["12345", ""]) == [0.5, 0.0]


def test_a_users_function_that_fails_is_named_with_the_prompt(user_module):
    items = [_item("a", "x"), _item("b", "y")]
    with pytest.raises(RewardError, match=r"^reward user_rewards:broken failed on prompt 'a': ValueError: boom$"):
        parse(["reward=user_rewards:broken"]).reward.build().score(items, ["1", "2"])
    with pytest.raises(RewardError, match=r"reward user_rewards:not_a_number gave nan for prompt 'b'; a reward "
                                          r"must be a finite number"):
        parse(["reward=user_rewards:not_a_number"]).reward.build().score(items, ["1", "2"])
    with pytest.raises(InvalidOptionError, match=r"must take two arguments \(item: PromptItem, reply: str\)"):
        parse(["reward=user_rewards:one_argument"]).reward.build()
    with pytest.raises(InvalidOptionError, match="has no attribute 'gone'"):
        FunctionReward(function="user_rewards:gone").build()


def test_a_users_reward_class_is_checked_too(user_module):
    reward = parse(["reward=user_rewards:Batched"]).reward
    scorer = reward.build()
    assert isinstance(scorer, CheckedScorer)
    items = [_item("a", "x"), _item("b", "y"), _item("c", "z"), _item("d", "w")]
    with pytest.raises(RewardError, match=r"reward Batched gave 3 scores for 4 replies"):
        scorer.score(items, ["1"] * 4)
    with pytest.raises(RewardError, match=r"reward Batched failed on a batch of 4 prompts \('a', 'b', 'c', \.\.\.\): "
                                          r"RuntimeError: out of memory"):
        parse(["reward=user_rewards:Batched", "reward.fail=true"]).reward.build().score(items, ["1"] * 4)


def test_cli_forms_of_reward(user_module):
    assert parse([]).reward == IFEvalReward()
    assert parse(["reward.mode=loose"]).reward == IFEvalReward(mode="loose")
    assert parse(["reward=reward_model", "reward.model_name=rm", "reward.batch_size=2"]).reward == RewardModel(
        model_name="rm", batch_size=2)
    assert parse(["reward=function", "reward.function=user_rewards:length"]).reward.name() == "user_rewards:length"
    assert set(REWARDS.names()) == {"function", "ifeval", "reward_model", "sum"}
    with pytest.raises(chz.blueprint.InvalidBlueprintArg, match="Registered rewards: function, ifeval, reward_model, sum"):
        parse(["reward=rm"])
    with pytest.raises(chz.blueprint.InvalidBlueprintArg, match="NOT_CALLABLE is neither a subclass of "
                                                                "cookbook.on_policy.Reward nor a function"):
        parse(["reward=user_rewards:NOT_CALLABLE"])
    with pytest.raises(chz.blueprint.InvalidBlueprintArg, match="reward=no_such_module:f: could not import module"):
        parse(["reward=no_such_module:f"])
    with pytest.raises(ValueError, match="reward.batch_size must be >= 1"):
        parse(["reward=reward_model", "reward.model_name=rm", "reward.batch_size=0"])


# -- a reward model ---------------------------------------------------------------------------------


def _save_reward_model(directory, tokenizer, num_labels=1):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=num_labels,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model.eval()


ITEMS = [_item("a", "Name a colour."), _item("b", "What is two plus two? Answer in one word."),
         _item("c", "Write a long sentence about the sea.")]
REPLIES = ["Blue.", "Four", "The sea rolls in under a grey sky and pulls the pebbles back with it, again and again."]


def _reference_scores(model, tokenizer):
    """One reply at a time, no padding: the model's logit at the last token of the chat-rendered text."""
    scores = []
    for item, reply in zip(ITEMS, REPLIES):
        text, _ = render_for_reward(tokenizer, item, reply)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            scores.append(model(input_ids=ids).logits[0])
    return torch.stack(scores)


def test_reward_model_scores_match_one_at_a_time(tmp_path, tokenizer):
    model = _save_reward_model(tmp_path / "rm", tokenizer)
    expected = _reference_scores(model, tokenizer)[:, 0]
    for batch_size in (1, 2, 8):
        scores = RewardModel(model_name=str(tmp_path / "rm"), batch_size=batch_size).build("cpu").score(ITEMS, REPLIES)
        torch.testing.assert_close(torch.tensor(scores), expected, atol=1e-4, rtol=1e-4)
    text, add_special = render_for_reward(tokenizer, ITEMS[0], REPLIES[0])
    assert text.startswith("<|im_start|>") and text.rstrip().endswith("Blue.<|im_end|>") and not add_special


def test_two_label_reward_model_scores_the_log_odds(tmp_path, tokenizer):
    """score = logit[1] - logit[0] = log p(label 1) / p(label 0)."""
    model = _save_reward_model(tmp_path / "rm2", tokenizer, num_labels=2)
    logits = _reference_scores(model, tokenizer)
    scores = RewardModel(model_name=str(tmp_path / "rm2")).build("cpu").score(ITEMS, REPLIES)
    torch.testing.assert_close(torch.tensor(scores), logits[:, 1] - logits[:, 0], atol=1e-4, rtol=1e-4)


def test_plain_text_without_a_chat_template(tokenizer):
    class NoTemplate:
        chat_template = None

    two_turns = PromptItem("t", ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}))
    assert render_for_reward(NoTemplate(), two_turns, "Hello.") == ("Be brief.\n\nHi?\n\nHello.", True)


def test_not_a_reward_model_is_refused_clearly(tiny_model_dir):
    with pytest.raises(NotARewardModelError, match=r"is LlamaForCausalLM, not a sequence-classification reward model"):
        RewardModel(model_name=tiny_model_dir).build("cpu")
    with pytest.raises(NotARewardModelError, match="is the bundled causal LM, not a reward model"):
        RewardModel(model_name="smollm2-135m-instruct").build("cpu")
    with pytest.raises(ModelNotFoundError, match=r"pass reward\.model_name=DIR\.$"):
        RewardModel(model_name="someone/some-reward-model").build("cpu")  # the hub is off in tests
