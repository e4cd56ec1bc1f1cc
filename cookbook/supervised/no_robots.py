"""`dataset=no_robots`: HuggingFaceH4/no_robots, 10k instructions with replies written by people.

Each row has `prompt` (the first user turn), `prompt_id`, `messages` (the whole conversation,
sometimes opening with a system message, ending with the assistant's reply) and `category`
(Generation, Open QA, Brainstorm, Chat, Rewrite, Summarize, Coding, Classify, Closed QA, Extract);
splits train (9,500) and test (500). The conversation is `messages`.

Without network access, `local_path` reads the same schema from a JSONL, JSON or Parquet file (and
`local_test_path` its test split); the hub loader fails fast naming these options.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import chz

from cookbook.datasets.comparison import Skip
from cookbook.datasets.files import read_rows
from cookbook.datasets.hub import load_hub_split
from cookbook.supervised.builder import SupervisedDatasetBuilder
from cookbook.supervised.example import Conversation, conversation_from_messages
from cookbook.supervised.registry import register_supervised_builder

HUB_ID = "HuggingFaceH4/no_robots"


@register_supervised_builder("no_robots")
@chz.chz
class NoRobotsBuilder(SupervisedDatasetBuilder):
    """HuggingFaceH4/no_robots (splits train and test), or the same schema from local files."""

    local_path: str | None = chz.field(
        default=None, doc="read this JSONL/JSON/Parquet file (same schema as the hub) instead of the hub"
    )
    local_test_path: str | None = chz.field(
        default=None, doc="test split file for local_path; without it test_size are carved out of it"
    )

    def name(self) -> str:
        return self.local_path or HUB_ID

    def split_names(self) -> tuple[str, str | None]:
        if self.local_path is not None and self.local_test_path is None:
            return ("train", None)
        return ("train", "test")

    def load_rows(self, split: str) -> Iterable[Any]:
        if self.local_path is not None:
            return read_rows(self.local_test_path if split == "test" else self.local_path)
        hint = "dataset=no_robots dataset.local_path=FILE.jsonl (and optionally dataset.local_test_path=FILE)"
        return load_hub_split(HUB_ID, None, split, option_hint=hint)

    def row_to_example(self, row: dict[str, Any]) -> Conversation | Skip:
        return conversation_from_messages(row["messages"])
