"""Supervised (SFT) data: a `Conversation` to train on, the builders that make them, and the
`dataset=` family of the SFT recipe.

A conversation is a list of `{"role": ..., "content": ...}` messages with at least one assistant
reply; which replies carry loss (`train_on=last_assistant` or `all_assistant`) is decided at
tokenization, so one builder serves both. A builder holds configuration only; calling it
(`builder()`) reads the raw rows, turns each into a `Conversation` or a named `Skip`, removes
duplicates (within and across splits), shuffles deterministically with `seed`, and returns the train
and test conversations with the count of every row it did not use. A subclass writes two methods
and is decorated with `@chz.chz`:

- `load_rows(split)`: the raw rows of one source split ("train", "test", ...), any iterable;
- `row_to_example(row)`: one row to a `Conversation`, or `Skip("malformed", why)`, `Skip("filtered")`...

and may override `split_names()` when the source has its own test split.

The forms of `dataset=`: `file` (or just `dataset=sft.jsonl`), `no_robots` (in `hub.py`),
`chosen:<preference data set>` (the chosen side of any preference builder: `chosen:demo`,
`chosen:hhh`, `chosen:prefs.jsonl`; `dataset.preference.local_path=...` then sets fields of that
preference builder), and `module:Class` for a user's subclass of `SupervisedDatasetBuilder`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import chz

from cookbook.datasets.builder import (
    LocalFileRows,
    Skip,
    SkipCounts,
    SplitBuilder,
    builder_options,
    to_messages,
)
from cookbook.datasets.files import SUPPORTED_SUFFIXES
from cookbook.datasets.preference import PREFERENCE_DATASETS, Comparison, DemoBuilder, DPODatasetBuilder
from cookbook.errors import UserError
from cookbook.registry import Registry
from cookbook.renderers.base import ROLES, Message

CHOSEN_PREFIX = "chosen:"


@dataclass(frozen=True)
class Conversation:
    """Messages to train on; the assistant replies are the targets."""

    messages: list[Message]

    def key(self) -> str:
        """A canonical text of the conversation, for finding exact duplicates."""
        return json.dumps(self.messages, sort_keys=True, ensure_ascii=False)


def check_conversation(conversation: Conversation) -> Conversation | Skip:
    """The conversation, trimmed of trailing non-assistant turns, when usable; otherwise a Skip.

    Turns after the last assistant reply carry no loss and, under causal attention, change no
    trained token's prediction, so they would only cost compute: they are dropped, not skipped.
    """
    messages = conversation.messages
    if not isinstance(messages, list) or not messages:
        return Skip("malformed", "messages must be a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return Skip("malformed", f"messages[{index}] must be a message with a string 'content'")
        if message.get("role") not in ROLES:
            return Skip("malformed", f"messages[{index}] has unknown role {message.get('role')!r}")
    last_reply = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last_reply is None:
        return Skip("malformed", "no assistant message to train on")
    if not messages[last_reply]["content"].strip():
        return Skip("empty", "the last assistant reply is empty")
    if last_reply == len(messages) - 1:
        return conversation
    return Conversation(messages[: last_reply + 1])


def conversation_from_messages(value: Any) -> Conversation:
    """A `{"messages": [...]}` row's message list (TRL's conversational format); raises ValueError."""
    return Conversation(to_messages(value, "messages"))


def conversation_from_prompt_completion(prompt: Any, completion: Any) -> Conversation:
    """A prompt/completion row: `prompt` a string (one user turn) or messages, `completion` a string
    (one assistant reply) or messages that start with an assistant reply. A completion written as the
    whole conversation (repeating the prompt first) is accepted. Raises ValueError naming the field."""
    prompt_messages = to_messages(prompt, "prompt", default_role="user")
    completion_messages = to_messages(completion, "completion", default_role="assistant")
    if len(completion_messages) > len(prompt_messages) and completion_messages[: len(prompt_messages)] == prompt_messages:
        completion_messages = completion_messages[len(prompt_messages) :]
    if not prompt_messages:
        raise ValueError("field 'prompt' has no messages")
    if not completion_messages or completion_messages[0]["role"] != "assistant":
        raise ValueError("field 'completion' must start with an assistant message")
    return Conversation(prompt_messages + completion_messages)


class NoUsableExamplesError(UserError, ValueError):
    """Every row of a split was skipped, or too few remain for the requested test split."""


@dataclass
class ExampleSplits:
    """What a builder returns: the conversations to train and test on, and what it left out."""

    train: list[Conversation]
    test: list[Conversation]
    rows_read: dict[str, int]  # per source split
    skipped: SkipCounts
    unused_examples: int = 0  # usable conversations left out by max_examples or test_size


@chz.chz
class SupervisedDatasetBuilder(SplitBuilder[Conversation]):
    """Base class of supervised data sets. Configure with fields, build with `builder()`."""

    item_type: ClassVar[type] = Conversation
    item_noun: ClassVar[str] = "conversations"
    converter_name: ClassVar[str] = "row_to_example"
    limit_field: ClassVar[str] = "max_examples"
    duplicate_detail: ClassVar[str] = "same messages as an earlier row (of either split)"
    no_usable_error: ClassVar[type[Exception]] = NoUsableExamplesError
    # So no test conversation is also trained on (the chosen replies of preference pairs that share
    # a prompt and chosen reply across splits would otherwise be).
    dedupe_across_splits: ClassVar[bool] = True

    test_size: int | None = chz.field(
        default=200,
        doc="held-out conversations: the first test_size of the source's shuffled test split (None = all "
        "of it), or carved out of the train conversations when the source has none (0 = no test set)",
    )
    seed: int = chz.field(default=0, doc="seed of the deterministic shuffle of both splits")
    max_examples: int | None = chz.field(
        default=None, doc="use at most this many training conversations (None = all)"
    )

    # -- what a subclass writes, with load_rows (and maybe split_names, on_malformed, name) --------

    def row_to_example(self, row: Any) -> Conversation | Skip:
        raise NotImplementedError(f"{type(self).__name__} must define row_to_example(row)")

    # -- building ---------------------------------------------------------------------------------

    def convert_row(self, row: Any) -> Conversation | Skip:
        return self.row_to_example(row)

    def check_item(self, item: Conversation) -> Conversation | Skip:
        return check_conversation(item)

    def __call__(self, keep: Callable[[Conversation], Any] | None = None) -> ExampleSplits:
        """Read, convert, deduplicate, shuffle and split. Deterministic for a given `seed`. With `keep`
        the splits hold what it returns for each conversation (see `SplitBuilder.split_rows`)."""
        return self.build_splits(self.load_rows, SkipCounts(), keep)

    def build_splits(self, load_rows: Callable[[str], Iterable[Any]], skipped: SkipCounts,
                     keep: Callable[[Conversation], Any] | None = None) -> ExampleSplits:
        """`__call__` with the rows coming from `load_rows` and earlier skips already in `skipped`
        (a builder that reads all its splits at once passes them in here)."""
        if self.test_size is not None and self.test_size < 0:
            raise ValueError(f"dataset.test_size must be >= 0 or None, got {self.test_size}")
        splits = self.split_rows(load_rows, skipped, self.max_examples, keep)
        return ExampleSplits(splits.train, splits.test, splits.rows_read, splits.skipped, splits.unused)


def row_to_conversation(row: dict[str, Any]) -> Conversation | Skip:
    """One row in either layout (see the module docstring) to a Conversation or a malformed Skip."""
    try:
        if "messages" in row:
            return conversation_from_messages(row["messages"])
        if "prompt" in row and "completion" in row:
            return conversation_from_prompt_completion(row["prompt"], row["completion"])
    except ValueError as error:
        return Skip("malformed", str(error))
    return Skip("malformed", "expected a 'messages' field, or 'prompt' and 'completion' fields")


@chz.chz
class SupervisedFileBuilder(LocalFileRows, SupervisedDatasetBuilder):
    """Conversations from local files; see the module docstring for the accepted row layouts."""

    path: str = chz.field(doc="JSONL, JSON or Parquet file of training conversations")
    test_path: str | None = chz.field(
        default=None, doc="file of test conversations; without it, test_size are carved out of `path`"
    )
    skip_malformed: bool = chz.field(
        default=False, doc="count malformed rows as skips instead of failing on the first one"
    )

    def row_to_example(self, row: dict[str, Any]) -> Conversation | Skip:
        return row_to_conversation(row)


@chz.chz
class ChosenBuilder(SupervisedDatasetBuilder):
    """prompt + chosen reply of every pair of a preference data set."""

    preference: DPODatasetBuilder = chz.field(
        default_factory=DemoBuilder,
        meta_factory=PREFERENCE_DATASETS.meta_factory(),
        doc="the preference data set whose chosen replies are trained on (a name, file or module:Class)",
    )
    test_size: int | None = chz.field(
        default=None,
        doc="held-out conversations: None keeps all of the preference builder's test pairs "
        "(its own test_size decides how many)",
    )

    def name(self) -> str:
        return f"{CHOSEN_PREFIX}{self.preference.name()}"

    def split_names(self) -> tuple[str, str | None]:
        return ("train", "test")

    def load_rows(self, split: str) -> Iterable[Comparison]:
        return getattr(self.preference(), split)

    def row_to_example(self, row: Comparison) -> Conversation | Skip:
        return Conversation([*row.prompt, *row.chosen])

    def source_fingerprint(self) -> str | None:
        # The preference builder's data and options decide the rows (its own seed, test_size...).
        inner = self.preference.source_fingerprint()
        return None if inner is None else hashlib.sha256(f"{inner}|{builder_options(self.preference)}".encode()).hexdigest()

    def __call__(self, keep: Callable[[Conversation], Any] | None = None) -> ExampleSplits:
        # Build the preference data once (load_rows would build it per split).
        pairs = self.preference()
        skipped = SkipCounts()
        skipped.merge(pairs.skipped)
        rows = {"train": pairs.train, "test": pairs.test}
        splits = self.build_splits(rows.__getitem__, skipped, keep)
        # Report the rows the preference builder read, not the pairs it handed over.
        return dataclasses.replace(
            splits, rows_read=dict(pairs.rows_read), unused_examples=splits.unused_examples + pairs.unused_pairs
        )


SUPERVISED_DATASETS: Registry[SupervisedDatasetBuilder] = Registry(
    SupervisedDatasetBuilder, "dataset", "chosen:demo", base_path="cookbook.datasets.SupervisedDatasetBuilder",
    unknown="Unknown supervised dataset {spec!r}. Registered datasets: {names}; or " + CHOSEN_PREFIX + "<preference "
            "dataset> (e.g. " + CHOSEN_PREFIX + "demo), a .jsonl/.json/.parquet file, or module:Class for your own "
            "builder.",
    file_builder="file", file_suffixes=SUPPORTED_SUFFIXES,
)
SUPERVISED_DATASETS.add_prefix(CHOSEN_PREFIX, ChosenBuilder, "preference", PREFERENCE_DATASETS,
                                doc="the preference data set whose chosen replies are trained on")
SUPERVISED_DATASETS.add({"chosen": ChosenBuilder, "file": SupervisedFileBuilder})
