"""The rewards of the on-policy recipe: `Reward`, the scorer it builds, the built-ins, and the
`reward=` family.

A reward holds configuration only. `reward.check_prompts(prompts)` refuses prompts it cannot score
(before any sampling, so a mismatch of prompts and reward fails in seconds); `reward.build(device)`
makes the scorer, which scores a batch at a time: `scorer.score(items, replies) -> list[float]`, one
number per reply, `items[i]` being the prompt `replies[i]` answers (a reward model batches; a
rule-based reward just loops). Whatever a subclass's `build` returns is wrapped in a
`CheckedScorer`, so that every reward, a user's too, fails the same way: a `RewardError` naming the
reward and the prompt ("reward ifeval failed on prompt 'synthetic-17': ValueError: ..."), and one
finite number per reply or an error saying which prompt got what. A run should stop on a broken
reward, not train on NaN.

The forms of `reward=`:

- `ifeval` (the default): the fraction of the prompt's IFEval instructions a reply follows. A partial
  score (2 of 3 instructions = 0.667) rather than all-or-nothing gives best-versus-worst pairs on
  many more prompts. "strict" checks the reply as written, as the IFEval evaluation's strict numbers
  do; "loose" also forgives a first/last line or `*` markup. The checkers are those of
  `cookbook.eval.ifeval`, so training and evaluation agree on what following an instruction means;
- `reward_model reward.model_name=...`: a Hugging Face sequence-classification model
  (`AutoModelForSequenceClassification`, as TRL's RewardTrainer writes) reads the conversation with
  the reply appended, rendered with its own chat template when its tokenizer has one (else as plain
  "prompt\\n\\nreply" text); too long a text loses its start, never the reply's end. With one label
  the score is its logit; with two, `logit[1] - logit[0]` (log p(good)/p(bad)), which does not move
  when both logits shift together; more labels are refused. It runs in fp32, batched, without
  gradients;
- `sum`: a weighted sum of other rewards, each term a reward (any form of this list) and its weight,
  typed by position:

      reward=sum reward.terms.0.reward=ifeval reward.terms.0.weight=1 \\
                 reward.terms.1.reward=reward_model reward.terms.1.reward.model_name=runs/rm/final \\
                 reward.terms.1.weight=0.5

  A reply's reward is the sum over terms of weight * that term's score (each term checked as any
  reward is, so a failure names the term); every term must accept the prompts;
- `my.module:my_fn`: a user's plain function `my_fn(item: PromptItem, reply: str) -> float`, called
  once per reply (it becomes `reward=function reward.function=my.module:my_fn`, so the run's
  config.json names it);
- `my.module:MyReward`: a user's subclass of `Reward`.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import chz
from chz.factories import MetaFromString

from cookbook.errors import InvalidOptionError, UserError
from cookbook.models import DEFAULT_MODEL, ModelNotFoundError, resolve_model_path
from cookbook.on_policy.prompts import PromptItem
from cookbook.registry import Registry


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
        function = REWARDS.import_attribute(spec)
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


OPTION = "reward.model_name"


class NotARewardModelError(InvalidOptionError):
    """`reward.model_name` names a model that is not a sequence-classification reward model."""


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


REWARDS: Registry[Reward] = Registry(
    Reward, "reward", "ifeval", base_path="cookbook.on_policy.Reward",
    unknown="Unknown reward {spec!r}. Registered rewards: {names}; or module:Class for your own Reward subclass, "
            "or module:function for a function (item: PromptItem, reply: str) -> float.",
    function_factory=lambda spec: functools.partial(FunctionReward, function=spec),
    function_doc="a function (item: PromptItem, reply: str) -> float",
)
REWARDS.add({"function": FunctionReward, "ifeval": IFEvalReward, "reward_model": RewardModel})


@chz.chz
class WeightedReward:
    """One term of `reward=sum`: a reward and its weight."""

    reward: Reward = chz.field(default_factory=IFEvalReward, meta_factory=REWARDS.meta_factory(),
                               doc="the term's reward: any form `reward=` takes (ifeval, reward_model, module:fn, ...)")
    weight: float = chz.field(default=1.0, doc="what the term's score is multiplied by")

    @chz.validate
    def _check_weight(self) -> None:
        if not math.isfinite(self.weight):
            raise ValueError(f"a reward=sum term's weight must be a finite number, got {self.weight}")


@chz.chz
class SumReward(Reward):
    """The weighted sum of other rewards (see the module docstring)."""

    terms: tuple[WeightedReward, ...] = chz.field(
        doc="the terms, by position: reward.terms.0.reward=ifeval reward.terms.0.weight=1 "
            "reward.terms.1.reward=reward_model reward.terms.1.reward.model_name=DIR reward.terms.1.weight=0.5",
    )

    @chz.validate
    def _check_terms(self) -> None:
        if not self.terms:
            raise ValueError("reward=sum needs at least one term: reward.terms.0.reward=<reward> "
                             "reward.terms.0.weight=<weight>, then reward.terms.1..., ...")

    def name(self) -> str:
        return "sum"

    def check_prompts(self, items: Sequence[PromptItem]) -> None:
        for term in self.terms:
            term.reward.check_prompts(items)

    def build(self, device: Any = "cpu") -> RewardScorer:
        return SumScorer([(term.weight, term.reward.build(device)) for term in self.terms])


class SumScorer:
    """Scores with each term's scorer (already checked: a failure names its reward) and adds them up."""

    def __init__(self, terms: list[tuple[float, RewardScorer]]) -> None:
        self.terms = terms

    def score(self, items: list[PromptItem], replies: list[str]) -> list[float]:
        totals = [0.0] * len(replies)
        for weight, scorer in self.terms:
            for index, value in enumerate(scorer.score(items, replies)):
                totals[index] += weight * value
        return totals


REWARDS.add({"sum": SumReward})
