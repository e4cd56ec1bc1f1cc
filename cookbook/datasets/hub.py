"""Data sets on the Hugging Face hub, which also read the same schema from local files.

Each hub builder names its hub id, config and splits as class constants and has two options:
`local_path` (a JSONL, JSON or Parquet file in the hub's schema, used instead of the hub) and
`local_test_path` (its test split; without it, `test_size` items are carved out of `local_path`).
Without network access a hub builder fails within seconds, naming the data set and `local_path`,
instead of waiting on connection timeouts: with `HF_HUB_OFFLINE`/`HF_DATASETS_OFFLINE` set it only
looks in the local Hugging Face cache, and otherwise it first checks with a short socket connect.

Preference sets:

- `dataset=hhh`: Anthropic/hh-rlhf. Each row holds two whole transcripts, `chosen` and `rejected`,
  written as alternating "\\n\\nHuman: " and "\\n\\nAssistant: " turns. The prompt is every turn
  before the final assistant reply and must be identical in both; the two final replies are the
  completions. Rows whose turns do not alternate, or whose transcripts differ before the final
  reply, are malformed. Only the separators are removed: whitespace inside a turn is kept, and
  "Human:" inside a reply (not preceded by a blank line) stays part of the reply.
- `dataset=helpsteer3`: nvidia/HelpSteer3 (config `preference`): a conversation `context`, two
  replies `response1`/`response2` and `overall_preference` from -3 to 3 (negative: response1 is
  better; 0: a tie). Rows can be kept to some `domain`s and `language`s; the others are `filtered`.
- `dataset=ultrafeedback`: HuggingFaceH4/ultrafeedback_binarized: `chosen` and `rejected`
  conversations that share the first user turn, scored `score_chosen` and `score_rejected`; equal
  scores are a `tie`, and a chosen reply scored below the rejected one is kept as labelled.

Supervised: `dataset=no_robots` (HuggingFaceH4/no_robots), 10k instructions with replies written by
people.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import chz

from cookbook.datasets.builder import Skip, assistant, to_messages
from cookbook.datasets.files import count_lines, files_fingerprint, iter_rows
from cookbook.datasets.preference import (
    PREFERENCE_DATASETS,
    Comparison,
    DPODatasetBuilder,
    comparison_from_conversations,
)
from cookbook.datasets.supervised import (
    SUPERVISED_DATASETS,
    Conversation,
    SupervisedDatasetBuilder,
    conversation_from_messages,
)
from cookbook.errors import UserError
from cookbook.models import hub_offline, hub_reachable
from cookbook.renderers.base import Message


class DatasetUnavailableError(UserError, RuntimeError):
    """A hub data set that is neither cached locally nor reachable."""


@chz.chz
class HubRows:
    """What a builder of a hub data set does besides converting a row: read the hub split, or the same
    schema from `local_path` (and `local_test_path`), and name itself by where the rows come from.
    Shared by the preference and supervised hub builders."""

    hub_id: ClassVar[str]
    hub_config: ClassVar[str | None] = None
    hub_splits: ClassVar[tuple[str, str | None]] = ("train", "test")
    registered_name: ClassVar[str] = ""  # the `dataset=` name, for error messages

    local_path: str | None = chz.field(
        default=None, doc="read this JSONL/JSON/Parquet file (same schema as the hub) instead of the hub"
    )
    local_test_path: str | None = chz.field(
        default=None, doc="test split file for local_path; without it the test set is carved out of it"
    )

    def name(self) -> str:
        return self.local_path or self.hub_id

    def split_names(self) -> tuple[str, str | None]:
        if self.local_path is not None:
            return ("train", "test" if self.local_test_path is not None else None)
        return self.hub_splits

    def load_rows(self, split: str) -> Iterable[Any]:
        if self.local_path is not None:
            return iter_rows(self.local_test_path if split == "test" else self.local_path)
        return load_hub_split(self.hub_id, self.hub_config, split, option_hint=self._option_hint())

    def source_fingerprint(self) -> str | None:
        if self.local_path is not None:
            return files_fingerprint(self.local_path, self.local_test_path)
        parts = []
        for split in self.hub_splits:
            if split is not None:
                rows = load_hub_split(self.hub_id, self.hub_config, split, option_hint=self._option_hint())
                parts.append(getattr(rows, "_fingerprint", None))  # `datasets`' digest of the split's data
        return None if None in parts else hashlib.sha256("|".join(parts).encode()).hexdigest()

    def row_count(self, split: str) -> int | None:
        if self.local_path is not None:
            return count_lines(self.local_test_path if split == "test" else self.local_path)
        return None

    def _option_hint(self) -> str:
        prefix = f"dataset={self.registered_name} " if self.registered_name else ""
        return f"{prefix}dataset.local_path=FILE.jsonl (and optionally dataset.local_test_path=FILE)"


@chz.chz
class HubDatasetBuilder(HubRows, DPODatasetBuilder):
    """Base of preference builders that read a hub data set (or the same schema from local files)."""


def load_hub_split(hub_id: str, config: str | None, split: str, option_hint: str) -> Iterable[dict]:
    """One split of a hub data set as dict rows; fails fast with advice when the hub is out of reach."""
    offline = hub_offline(for_datasets=True)
    if not offline and not hub_reachable():
        raise DatasetUnavailableError(_unavailable_message(hub_id, "the hub cannot be reached", option_hint))
    import datasets

    try:
        # With the offline variables set, `datasets` only looks in the local cache (and fails fast).
        with _libraries_offline(offline):
            return datasets.load_dataset(hub_id, config, split=split)
    except Exception as error:
        if not offline:
            raise
        reason = f"it is not in the local Hugging Face cache and hub access is off ({type(error).__name__})"
        raise DatasetUnavailableError(_unavailable_message(hub_id, reason, option_hint)) from error


@contextlib.contextmanager
def _libraries_offline(offline: bool) -> Iterator[None]:
    """`datasets` and `huggingface_hub` read the offline variables once, when first imported; a
    variable set later (a notebook, a test) would leave them retrying the network for half a minute,
    so the value read now is applied to both for this call."""
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _unavailable_message(hub_id: str, reason: str, option_hint: str) -> str:
    return (
        f"Cannot load the data set {hub_id!r}: {reason}. Either download it on a connected machine "
        f"(huggingface-cli download --repo-type dataset {hub_id}) and copy the Hugging Face cache here, "
        f"or read the same schema from a local file: {option_hint}."
    )


# A turn starts at the beginning of the text or after a blank line; the space after the colon is
# part of the separator when present (a few transcripts end with a bare "\n\nAssistant:").
TURN_SEPARATOR = re.compile(r"(?:^|\n\n)(Human|Assistant): ?")


SPEAKER_ROLES = {"Human": "user", "Assistant": "assistant"}


class TranscriptError(ValueError):
    """A transcript that is not a sequence of alternating Human/Assistant turns."""


def parse_transcript(text: str) -> list[Message]:
    """Turns of an hh-rlhf transcript as messages; raises TranscriptError if they do not alternate."""
    if not isinstance(text, str):
        raise TranscriptError(f"expected a string transcript, got {type(text).__name__}")
    pieces = TURN_SEPARATOR.split(text)
    # split() gives [text before the first turn, speaker, content, speaker, content, ...]
    if pieces[0].strip():
        raise TranscriptError(f"text before the first turn: {pieces[0][:40]!r}")
    messages: list[Message] = []
    for speaker, content in zip(pieces[1::2], pieces[2::2]):
        role = SPEAKER_ROLES[speaker]
        expected = "user" if len(messages) % 2 == 0 else "assistant"
        if role != expected:
            raise TranscriptError(f"turn {len(messages) + 1} is {speaker}, expected {expected}")
        messages.append({"role": role, "content": content})
    if not messages:
        raise TranscriptError("no Human/Assistant turns")
    if messages[-1]["role"] != "assistant":
        raise TranscriptError("transcript does not end with an Assistant reply")
    return messages


def transcripts_to_comparison(chosen_text: str, rejected_text: str) -> Comparison | Skip:
    """The comparison of two transcripts that share every turn before their final reply."""
    try:
        chosen = parse_transcript(chosen_text)
        rejected = parse_transcript(rejected_text)
    except TranscriptError as error:
        return Skip("malformed", str(error))
    if chosen[:-1] != rejected[:-1]:
        return Skip("malformed", "chosen and rejected transcripts differ before the final reply")
    return Comparison(prompt=chosen[:-1], chosen=chosen[-1:], rejected=rejected[-1:])


@chz.chz
class HHHBuilder(HubDatasetBuilder):
    """Anthropic/hh-rlhf (all subsets of the default config; splits train and test)."""

    hub_id: ClassVar[str] = "Anthropic/hh-rlhf"
    hub_splits: ClassVar[tuple[str, str | None]] = ("train", "test")
    registered_name: ClassVar[str] = "hhh"

    def row_to_comparison(self, row: dict[str, Any]) -> Comparison | Skip:
        for field in ("chosen", "rejected"):
            if not isinstance(row.get(field), str):
                return Skip("malformed", f"field {field!r} must be a transcript string")
        return transcripts_to_comparison(row["chosen"], row["rejected"])


def _name_set(names: str | None) -> frozenset[str] | None:
    if names is None:
        return None
    return frozenset(name.strip().lower() for name in names.split(",") if name.strip())


@chz.chz
class HelpSteer3Builder(HubDatasetBuilder):
    """nvidia/HelpSteer3 `preference` (splits train and validation)."""

    hub_id: ClassVar[str] = "nvidia/HelpSteer3"
    hub_config: ClassVar[str | None] = "preference"
    hub_splits: ClassVar[tuple[str, str | None]] = ("train", "validation")
    registered_name: ClassVar[str] = "helpsteer3"

    domain: str | None = chz.field(
        default=None, doc="keep only these domains, comma-separated (e.g. general,stem); None = all"
    )
    language: str | None = chz.field(
        default=None, doc="keep only these languages, comma-separated (e.g. english); None = all"
    )

    def row_to_comparison(self, row: dict[str, Any]) -> Comparison | Skip:
        for field, wanted in (("domain", _name_set(self.domain)), ("language", _name_set(self.language))):
            if wanted is not None and str(row.get(field, "")).lower() not in wanted:
                return Skip("filtered", f"{field} {row.get(field)!r} not in {sorted(wanted)}")
        preference = row.get("overall_preference")
        if isinstance(preference, bool) or not isinstance(preference, int) or not -3 <= preference <= 3:
            return Skip("malformed", f"overall_preference must be an integer in -3..3, got {preference!r}")
        if preference == 0:
            return Skip("tie", "overall_preference is 0")
        context = row.get("context")
        if not isinstance(context, list):
            return Skip("malformed", "field 'context' must be a list of messages")
        prompt = [{"role": message["role"], "content": message["content"]} for message in context]
        for field in ("response1", "response2"):
            if not isinstance(row.get(field), str):
                return Skip("malformed", f"field {field!r} must be a string")
        better, worse = (
            (row["response1"], row["response2"]) if preference < 0 else (row["response2"], row["response1"])
        )
        return Comparison(prompt=prompt, chosen=[assistant(better)], rejected=[assistant(worse)])


@chz.chz
class UltraFeedbackBuilder(HubDatasetBuilder):
    """HuggingFaceH4/ultrafeedback_binarized (splits train_prefs and test_prefs)."""

    hub_id: ClassVar[str] = "HuggingFaceH4/ultrafeedback_binarized"
    hub_splits: ClassVar[tuple[str, str | None]] = ("train_prefs", "test_prefs")
    registered_name: ClassVar[str] = "ultrafeedback"

    def row_to_comparison(self, row: dict[str, Any]) -> Comparison | Skip:
        scores = (row.get("score_chosen"), row.get("score_rejected"))
        if any(isinstance(score, bool) or not isinstance(score, int | float) for score in scores):
            return Skip("malformed", f"score_chosen/score_rejected must be numbers, got {scores}")
        if scores[0] == scores[1]:
            return Skip("tie", f"score_chosen == score_rejected == {scores[0]}")
        chosen = to_messages(row.get("chosen"), "chosen")
        rejected = to_messages(row.get("rejected"), "rejected")
        return comparison_from_conversations(chosen, rejected)


@chz.chz
class NoRobotsBuilder(HubRows, SupervisedDatasetBuilder):
    """HuggingFaceH4/no_robots (splits train and test), or the same schema from local files.

    Each row has `prompt` (the first user turn), `prompt_id`, `messages` (the whole conversation,
    sometimes opening with a system message, ending with the assistant's reply) and `category`; splits
    train (9,500) and test (500). The conversation is `messages`."""

    hub_id: ClassVar[str] = "HuggingFaceH4/no_robots"
    registered_name: ClassVar[str] = "no_robots"

    def row_to_example(self, row: dict[str, Any]) -> Conversation | Skip:
        return conversation_from_messages(row["messages"])


PREFERENCE_DATASETS.add({"hhh": HHHBuilder, "helpsteer3": HelpSteer3Builder, "ultrafeedback": UltraFeedbackBuilder})
SUPERVISED_DATASETS.add({"no_robots": NoRobotsBuilder})
