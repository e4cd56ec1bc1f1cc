"""`prompts=ifeval_synthetic` (the default): instruction-following prompts made up from a seed.

Each prompt is a task of `data/synthetic_topics.json` (a writing request, or a yes/no question for
the "answer with one of" instruction) plus one to three IFEval instructions, with their checkers'
arguments, so that `reward=ifeval` can score every reply by the fraction of instructions it follows.
The same seed always gives the same prompts.

Why built this way:

- every checker of the IFEval registry is used: the first instruction of each prompt walks through
  all of them in a shuffled order (shuffled again after each pass), so each pass of 25 prompts opens
  once with every checker (with `min_instructions=1`), and the others are drawn among those
  compatible with it;
- instructions that conflict are never combined, and each is worded in several ways
  (`ifeval_instructions`), so the policy learns the rule rather than one sentence;
- the tasks, written for this project, stay off the topics of the bundled IFEval evaluation set
  (`cookbook/eval/data/ifeval_prompts.jsonl`; a test checks no task repeats one of its requests), so
  the evaluation after each round measures prompts the policy has not trained on.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chz

from cookbook.datasets.builder import Skip
from cookbook.on_policy.ifeval_instructions import PHRASINGS, conflict_table, draw_all, phrase
from cookbook.on_policy.prompts import PROMPT_SOURCES, PromptItem, PromptSource

MAX_INSTRUCTIONS = 5
TOPICS_FILE = Path(__file__).parent / "data" / "synthetic_topics.json"
REPEAT = "combination:repeat_prompt"
YES_NO = "detectable_format:constrained_response"  # only a yes/no question fits it


def _read_topics() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(TASKS: open requests any instruction can be attached to, QUESTIONS: yes/no questions)."""
    topics = json.loads(TOPICS_FILE.read_text(encoding="utf-8"))
    return tuple(task for group in topics["tasks"].values() for task in group), tuple(topics["questions"])


TASKS, QUESTIONS = _read_topics()


@chz.chz
class IFEvalSyntheticPrompts(PromptSource):
    """Made-up prompts with verifiable IFEval instructions (see the module docstring)."""

    num_prompts: int = chz.field(default=256, doc="how many prompts to make")
    seed: int = chz.field(default=0, doc="seed of the tasks, instructions, arguments and wordings drawn")
    min_instructions: int = chz.field(default=1, doc="fewest instructions per prompt")
    max_instructions: int = chz.field(default=3, doc=f"most instructions per prompt (at most {MAX_INSTRUCTIONS})")

    @chz.validate
    def _check_counts(self) -> None:
        if self.num_prompts < 1:
            raise ValueError(f"prompts.num_prompts must be >= 1, got {self.num_prompts}")
        if not 1 <= self.min_instructions <= self.max_instructions <= MAX_INSTRUCTIONS:
            raise ValueError(
                f"prompts.min_instructions and prompts.max_instructions must satisfy 1 <= min <= max <= "
                f"{MAX_INSTRUCTIONS}, got {self.min_instructions} and {self.max_instructions}"
            )

    def name(self) -> str:
        return "ifeval_synthetic"

    def load_rows(self) -> Iterator[tuple[str, Any]]:
        items = synthetic_prompts(self.num_prompts, self.seed, self.min_instructions, self.max_instructions)
        for item in items:
            yield item.key, item

    def row_to_item(self, row: Any, where: str) -> PromptItem | Skip:
        return row


def synthetic_prompts(num_prompts: int, seed: int, min_instructions: int = 1,
                      max_instructions: int = 3) -> list[PromptItem]:
    """`num_prompts` distinct prompts, the same for the same arguments."""
    from cookbook.eval.ifeval import instruction_registry

    registry = instruction_registry()
    ids = sorted(set(registry) & set(PHRASINGS))  # a checker added to the registry later waits for wordings
    rng = random.Random(seed)
    firsts: list[str] = []
    items: list[PromptItem] = []
    seen: set[str] = set()
    for _ in range(20 * num_prompts + 100):
        if len(items) == num_prompts:
            return items
        if not firsts:
            firsts = rng.sample(ids, len(ids))
        chosen = _choose_instructions(rng, firsts.pop(), ids, min_instructions, max_instructions)
        if chosen is None:  # this first instruction combines with too few others
            continue
        text, instruction_ids, kwargs = _compose(rng, chosen, registry)
        if " ".join(text.lower().split()) in seen:
            continue
        seen.add(" ".join(text.lower().split()))
        ifeval = {"instruction_id_list": instruction_ids, "kwargs": kwargs, "prompt": text}
        items.append(PromptItem(f"synthetic-{len(items)}", ({"role": "user", "content": text},), ifeval))
    if len(items) == num_prompts:
        return items
    raise ValueError(f"could only make {len(items)} distinct prompts with min_instructions={min_instructions}; "
                     "lower prompts.num_prompts or prompts.min_instructions")


def _choose_instructions(rng: random.Random, first: str, ids: list[str], low: int, high: int) -> list[str] | None:
    """`first` and up to high - 1 more ids that conflict with none chosen; None when fewer than `low`."""
    conflicts = conflict_table()
    target = rng.randint(low, high)
    for _ in range(20):
        chosen = [first]
        while len(chosen) < target:
            options = [i for i in ids if not any(i in conflicts.get(c, {c}) for c in chosen)]
            if not options:
                break
            chosen.append(rng.choice(options))
        if len(chosen) >= low:
            return chosen
    return None


def _compose(rng: random.Random, chosen: list[str], registry: dict[str, Any]) -> tuple[str, list[str], list[dict]]:
    """(prompt text, instruction ids in the order they are stated, each checker's stored kwargs)."""
    arguments = draw_all(rng, chosen)
    task = rng.choice(QUESTIONS if YES_NO in chosen else TASKS)
    stated = [i for i in chosen if i != REPEAT]
    rng.shuffle(stated)
    request = _layout(rng, task, [_finished(phrase(i, arguments[i], rng)) for i in stated])
    text = request
    if REPEAT in chosen:
        # The checker compares the reply's start with the request, which excludes this sentence.
        where = rng.choice(("above", "below"))
        arguments[REPEAT] = {"prompt_to_repeat": request}
        sentence = phrase(REPEAT, arguments[REPEAT], rng, where)
        text = f"{sentence}\n{request}" if where == "below" else f"{request}\n\n{sentence}"
        stated = [REPEAT, *stated] if where == "below" else [*stated, REPEAT]
    kwargs = []
    for instruction_id in stated:
        checker = registry[instruction_id](instruction_id)
        checker.build_description(**arguments[instruction_id])
        kwargs.append(dict(checker.get_instruction_args() or {}))  # what the checker stores, as IFEval rows do
    return text, stated, kwargs


def _finished(sentence: str) -> str:
    # Some checkers' own descriptions end without a full stop ("...starting with P.P.S").
    return sentence + "." if sentence[-1].isalnum() else sentence


def _layout(rng: random.Random, task: str, sentences: list[str]) -> str:
    """The task and the instruction sentences: inline, one per line after the task, or before it."""
    if not sentences:
        return task
    layout = rng.randrange(3)
    if layout == 0:
        return " ".join([task, *sentences])
    if layout == 1:
        return task + "\n\n" + "\n".join(sentences)
    return " ".join(sentences) + "\n\n" + task


PROMPT_SOURCES.add({"ifeval_synthetic": IFEvalSyntheticPrompts})
