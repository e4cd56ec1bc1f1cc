"""`dataset=file dataset.path=...` (or just `dataset=sft.jsonl`): conversations from a local JSONL,
JSON or Parquet file.

Two row layouts are accepted, TRL's two supervised formats (a file may mix them):

- conversational: `{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}`;
- prompt/completion: `{"prompt": ..., "completion": ...}`, where `prompt` is a string (one user turn)
  or a message list, and `completion` a string (one assistant reply) or a message list starting with
  an assistant reply (or the whole conversation, repeating the prompt first).

Other keys of a row are ignored. A malformed row stops the load with an error naming the file,
line and field, before anything is returned; with `skip_malformed=true` it is counted instead.
"""

from __future__ import annotations

from typing import Any

import chz

from cookbook.datasets.comparison import Skip
from cookbook.datasets.file import LocalFileRows
from cookbook.supervised.builder import SupervisedDatasetBuilder
from cookbook.supervised.example import (
    Conversation,
    conversation_from_messages,
    conversation_from_prompt_completion,
)
from cookbook.supervised.registry import register_supervised_builder


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


@register_supervised_builder("file")
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
