"""`dataset=hhh`: Anthropic's helpful-and-harmless preference transcripts (Anthropic/hh-rlhf).

Each row holds two whole transcripts, `chosen` and `rejected`, written as alternating
"\\n\\nHuman: " and "\\n\\nAssistant: " turns. The prompt is every turn before the final assistant
reply and must be identical in both transcripts; the two final replies are the completions. Rows
whose turns do not alternate, or whose transcripts differ before the final reply, are skipped as
malformed. Only the separators are removed: whitespace inside a turn is kept, and "Human:" inside a
reply (not preceded by a blank line) stays part of the reply.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import chz

from cookbook.datasets.comparison import Comparison, Skip
from cookbook.datasets.hub import HubDatasetBuilder
from cookbook.datasets.registry import register_builder
from cookbook.renderers.base import Message

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


@register_builder("hhh")
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
