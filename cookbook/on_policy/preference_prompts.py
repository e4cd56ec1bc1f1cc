"""`prompts=prompts:<preference dataset>`: the distinct prompts of any preference builder
(`prompts:demo`, `prompts:hhh`, `prompts:prefs.jsonl`, `prompts:my.module:Prefs`).

On-policy training needs prompts only; a preference data set is a ready supply of them, and its
chosen/rejected replies are left aside. Its train pairs give the prompts by default, so that the
pairs it holds out stay prompts the policy never trained on. Many pairs share a prompt: the repeats
are reported as `duplicate` skips, next to the preference builder's own skips.

`prompts=prompts:hhh` is a `PreferencePrompts` whose `dataset` defaults to hhh, so
`prompts.dataset.local_path=hh.jsonl` reaches the hhh builder; `prompts=preference
prompts.dataset=hhh` is the same thing spelled out. Keys are `<dataset>-<hash of the messages>`, so a
prompt keeps its key whatever the order or seed
(`<dataset>` is the last part of the builder's name: `demo`, `hh-rlhf`, `prefs.jsonl`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import chz

from cookbook.datasets.builder import ComparisonSplits, DPODatasetBuilder
from cookbook.datasets.comparison import Comparison, Skip
from cookbook.datasets.demo import DemoBuilder
from cookbook.datasets.preference_field import subclass_with_preference_field
from cookbook.datasets.registry import dataset_meta_factory
from cookbook.datasets.split_builder import SkipCounts
from cookbook.on_policy.prompt import PromptItem, PromptList
from cookbook.on_policy.prompt_registry import PREFERENCE_PREFIX, register_prompt_source
from cookbook.on_policy.prompt_source import PromptSource


@register_prompt_source("preference")
@chz.chz
class PreferencePrompts(PromptSource):
    """The distinct prompts of one split of a preference data set."""

    dataset: DPODatasetBuilder = chz.field(
        default_factory=DemoBuilder,
        meta_factory=dataset_meta_factory(),
        doc="the preference data set whose prompts are sampled on (a name, file or module:Class)",
    )
    split: Literal["train", "test"] = chz.field(default="train", doc="which of its splits gives the prompts")
    max_prompts: int | None = chz.field(default=None, doc="use at most the first N distinct prompts (None = all)")

    def name(self) -> str:
        return f"{PREFERENCE_PREFIX}{self.dataset.name()}"

    def load_rows(self) -> Iterator[tuple[str, Any]]:
        return self._rows(self.dataset())

    def row_to_item(self, row: Any, where: str) -> PromptItem | Skip:
        text = json.dumps(row, sort_keys=True, ensure_ascii=False)
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]
        label = Path(self.dataset.name()).name  # "demo", "hh-rlhf", "prefs.jsonl"
        return PromptItem(key=f"{label}-{digest}", messages=tuple(row))

    def __call__(self) -> PromptList:
        splits = self.dataset()
        prompts = self.build_prompts(self._rows(splits))
        # Report the preference builder's own skips (ties, malformed rows...) with the prompts'.
        skipped = SkipCounts()
        skipped.merge(splits.skipped)
        skipped.merge(prompts.skipped)
        prompts.skipped = skipped
        return prompts

    def _rows(self, splits: ComparisonSplits) -> Iterator[tuple[str, Any]]:
        comparisons: list[Comparison] = getattr(splits, self.split)
        for index, comparison in enumerate(comparisons):
            yield f"{self.dataset.name()} {self.split} pair {index}", comparison.prompt


@functools.cache
def preference_prompts_for(dataset_spec: str) -> type[PreferencePrompts]:
    """A PreferencePrompts subclass whose `dataset` defaults to `dataset_spec`, so the preference
    builder's fields stay settable (`prompts.dataset.local_path=...`). Cached: one class per spec."""
    return subclass_with_preference_field(
        PreferencePrompts, "dataset", dataset_spec,
        doc=f"the preference data set whose prompts are sampled on (default {dataset_spec})",
    )
