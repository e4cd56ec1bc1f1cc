"""`reward=reward_model reward.model_name=...`: a trained reward model scores each reply.

The model is a Hugging Face sequence-classification model (`AutoModelForSequenceClassification`,
as TRL's RewardTrainer writes), from a local directory or a hub id. What it reads is the
conversation with the reply appended, rendered with the reward model's own chat template when its
tokenizer has one (the format it was trained on), and as plain "prompt\\n\\nreply" text otherwise.
Too long a text loses its start, never the reply's end, where the model reads its score.

The score: with one label, its logit (the usual reward model); with two, the log-odds of the second
label over the first (`logit[1] - logit[0]`, i.e. log p(good)/p(bad) for a good/bad classifier),
which does not move when both logits shift together. More labels have no single "better" direction
and are refused. The model runs in fp32 (weights and compute), batched, without gradients.
"""

from __future__ import annotations

from typing import Any, Literal

import chz

from cookbook.errors import InvalidOptionError
from cookbook.models import DEFAULT_MODEL, ModelNotFoundError, resolve_model_path
from cookbook.on_policy.prompt import PromptItem
from cookbook.on_policy.reward_base import Reward, RewardScorer
from cookbook.on_policy.reward_registry import register_reward

OPTION = "reward.model_name"


class NotARewardModelError(InvalidOptionError):
    """`reward.model_name` names a model that is not a sequence-classification reward model."""


@register_reward("reward_model")
@chz.chz
class RewardModel(Reward):
    """Scores with a sequence-classification reward model (see the module docstring)."""

    model_name: str = chz.field(doc="the reward model: a local Hugging Face directory or a hub id")
    batch_size: int = chz.field(default=8, doc="replies scored together")
    max_length: int = chz.field(default=2048, doc="most tokens of prompt + reply read (a longer one loses its start)")
    device: Literal["auto", "cpu", "cuda"] = chz.field(default="auto", doc="auto: the device training runs on")

    @chz.validate
    def _check_sizes(self) -> None:
        for name in ("batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"reward.{name} must be >= 1, got {getattr(self, name)}")

    def name(self) -> str:
        return "reward_model"

    def build(self, device: Any = "cpu") -> RewardScorer:
        import torch

        target = torch.device(device if self.device == "auto" else self.device)
        model, tokenizer = load_reward_model(self.model_name, target)
        return RewardModelScorer(model, tokenizer, self.batch_size, self.max_length)


def load_reward_model(model_name: str, device):
    """(model in eval mode on `device`, tokenizer) or an error saying why this is not a reward model."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    if model_name == DEFAULT_MODEL:
        raise NotARewardModelError(
            f"{OPTION}={model_name} is the bundled causal LM, not a reward model; give a sequence-classification "
            "reward model (a local directory or hub id)"
        )
    try:
        path = resolve_model_path(model_name, option=OPTION)
        config = AutoConfig.from_pretrained(path)
    except ModelNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"{OPTION}={model_name!r}: cannot read its config.json ({error})") from None
    _check_classifier(model_name, config)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # as reward models are trained (TRL); the model pools the last non-pad token
    tokenizer.truncation_side = "left"  # keep the reply's end
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def _check_classifier(model_name: str, config) -> None:
    architectures = list(getattr(config, "architectures", None) or [])
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        what = ", ".join(architectures) if architectures else "a model whose config.json names no architecture"
        raise NotARewardModelError(
            f"{OPTION}={model_name!r} is {what}, not a sequence-classification reward model: its config.json "
            "'architectures' must name a ...ForSequenceClassification class (as a reward model trained with "
            "TRL's RewardTrainer has). A causal LM cannot score replies."
        )
    if config.num_labels not in (1, 2):
        raise NotARewardModelError(
            f"{OPTION}={model_name!r} has {config.num_labels} labels; a reward model has 1 (its score) or 2 "
            "(scored as logit[1] - logit[0])"
        )


def render_for_reward(tokenizer, item: PromptItem, reply: str) -> tuple[str, bool]:
    """(text, whether the tokenizer should add its special tokens): the chat template's rendering of the
    conversation with the reply, or plain "prompt\\n\\nreply" when the tokenizer has no template."""
    if getattr(tokenizer, "chat_template", None):
        messages = [*item.messages, {"role": "assistant", "content": reply}]
        return tokenizer.apply_chat_template(messages, tokenize=False), False
    prompt = "\n\n".join(message["content"] for message in item.messages)
    return f"{prompt}\n\n{reply}", True


class RewardModelScorer:
    """Batches replies through the reward model; one float per reply."""

    def __init__(self, model, tokenizer, batch_size: int, max_length: int) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    def score(self, items: list[PromptItem], replies: list[str]) -> list[float]:
        import torch

        rendered = [render_for_reward(self.tokenizer, item, reply) for item, reply in zip(items, replies, strict=True)]
        scores: list[float] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(rendered), self.batch_size):
            batch = rendered[start : start + self.batch_size]
            encoded = self.tokenizer(
                [text for text, _ in batch], padding=True, truncation=True, max_length=self.max_length,
                add_special_tokens=batch[0][1], return_tensors="pt",
            ).to(device)
            with torch.inference_mode():
                logits = self.model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
            logits = logits.float()
            values = logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1] - logits[:, 0]
            scores.extend(values.tolist())
        return scores
