"""`dataset=chosen:<preference dataset>`: supervised fine-tuning on the chosen replies of any
preference builder (`chosen:demo`, `chosen:hhh`, `chosen:prefs.jsonl`, `chosen:my.module:Prefs`).

This is the usual first phase before DPO: it moves the policy onto the distribution of the replies
DPO will compare. The preference builder decides the split: its train pairs give the training
conversations and its test pairs the held-out ones, so a DPO run on the same preference data set
afterwards is evaluated on prompts the SFT phase never trained on. Its skips (ties, malformed rows,
...) are reported with the supervised data's own.

`dataset=chosen:hhh` is a `ChosenBuilder` whose `preference` field defaults to `hhh`, so
`dataset.preference.local_path=hh.jsonl` reaches the hhh builder; `dataset=chosen
dataset.preference=hhh` is the same thing spelled out.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable

import chz

from cookbook.datasets.builder import DPODatasetBuilder, SkipCounts
from cookbook.datasets.comparison import Comparison, Skip
from cookbook.datasets.demo import DemoBuilder
from cookbook.datasets.preference_field import subclass_with_preference_field
from cookbook.datasets.registry import dataset_meta_factory
from cookbook.supervised.builder import ExampleSplits, SupervisedDatasetBuilder
from cookbook.supervised.example import Conversation
from cookbook.supervised.registry import CHOSEN_PREFIX, register_supervised_builder


@register_supervised_builder("chosen")
@chz.chz
class ChosenBuilder(SupervisedDatasetBuilder):
    """prompt + chosen reply of every pair of a preference data set."""

    preference: DPODatasetBuilder = chz.field(
        default_factory=DemoBuilder,
        meta_factory=dataset_meta_factory(),
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

    def __call__(self) -> ExampleSplits:
        # Build the preference data once (load_rows would build it per split).
        pairs = self.preference()
        skipped = SkipCounts()
        skipped.merge(pairs.skipped)
        rows = {"train": pairs.train, "test": pairs.test}
        splits = self.build_splits(rows.__getitem__, skipped)
        # Report the rows the preference builder read, not the pairs it handed over.
        return dataclasses.replace(
            splits, rows_read=dict(pairs.rows_read), unused_examples=splits.unused_examples + pairs.unused_pairs
        )


@functools.cache
def chosen_builder_for(preference_spec: str) -> type[ChosenBuilder]:
    """A ChosenBuilder subclass whose `preference` defaults to `preference_spec`, so the preference
    builder's fields stay settable (`dataset.preference.local_path=...`). Cached: one class per spec."""
    return subclass_with_preference_field(
        ChosenBuilder, "preference", preference_spec,
        doc=f"the preference data set whose chosen replies are trained on (default {preference_spec})",
    )
