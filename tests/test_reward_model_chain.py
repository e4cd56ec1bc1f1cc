"""The chain the recipe README shows, on tiny models: SFT on the demo pairs' chosen replies, a reward
model from the SFT checkpoint on the same pairs, then on-policy preference training from the SFT
checkpoint whose samples that reward model scores (a couple of steps each)."""

import json

import pytest

from cookbook.on_policy.rounds import read_round
from cookbook.recipes.preference.on_policy import cli as on_policy_cli
from cookbook.recipes.reward_model.train import cli as reward_model_cli
from cookbook.recipes.sft.train import cli as sft_cli
from cookbook.training.metrics import read_metrics

DATA = ["max_length=128", "show_example=false", "batch_size=4", "micro_batch_size=2", "max_steps=2",
        "eval_every=0", "display=plain", "learning_rate=1e-3"]


def test_sft_then_reward_model_then_on_policy_scored_by_it(tmp_path, tiny_model_dir):
    sft, rm, on_policy = tmp_path / "sft", tmp_path / "rm", tmp_path / "on_policy"
    sft_cli([f"log_path={sft}", f"model_name={tiny_model_dir}", "dataset.preference.max_pairs=16",
             "dataset.preference.test_size=8", *DATA])
    reward_model_cli([f"log_path={rm}", f"model_name={sft / 'final'}", "dataset.max_pairs=16", "dataset.test_size=8",
                      *DATA])
    meta = json.loads((rm / "final" / "cookbook_checkpoint.json").read_text())
    assert meta["base_model_name"] == str(sft / "final")
    assert json.loads((rm / "final" / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]

    on_policy_cli([f"log_path={on_policy}", f"model_name={sft / 'final'}", "prompts=prompts:demo",
                   "prompts.max_prompts=4", "reward=reward_model", f"reward.model_name={rm / 'final'}",
                   "rounds=1", "prompts_per_round=4", "samples_per_prompt=2", "steps_per_round=2", "batch_size=2",
                   "micro_batch_size=2", "max_new_tokens=8", "max_length=128", "eval_ifeval=false",
                   "show_example=false", "display=plain", "sampler=native", "learning_rate=1e-3"])
    records = read_round(on_policy, 0).records
    rewards = [reply.reward for record in records for reply in record.replies]
    assert len(rewards) == 8 and len(set(rewards)) > 1  # the reward model told the replies apart
    for record in read_round(on_policy, 0).paired:
        scores = [reply.reward for reply in record.replies]
        assert record.replies[record.pair.chosen].reward == max(scores)
    assert [r["step"] for r in read_metrics(on_policy) if "dpo_loss" in r] == [1, 2]
    assert (on_policy / "final" / "config.json").exists()


@pytest.mark.slow
def test_quick_reward_model_on_the_bundled_model(tmp_path):
    """Two steps on the real SmolLM2-135M: its checkpoint is a LlamaForSequenceClassification."""
    log_path = tmp_path / "rm"
    reward_model_cli([f"log_path={log_path}", "dataset.max_pairs=8", "dataset.test_size=4", *DATA])
    first = next(r for r in read_metrics(log_path) if "test/loss" in r)
    assert first["test/loss"] == pytest.approx(0.6931, abs=1e-4)
    assert json.loads((log_path / "final" / "config.json").read_text())["architectures"] == [
        "LlamaForSequenceClassification"]
