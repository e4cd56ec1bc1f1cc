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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import chz

from cookbook.datasets.builder import ComparisonSplits, DPODatasetBuilder
from cookbook.datasets.comparison import Comparison, Skip
from cookbook.datasets.demo import DemoBuilder
from cookbook.datasets.registry import DatasetMetaFactory, dataset_meta_factory
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


class _PreferenceMetaFactory(DatasetMetaFactory):
    """The preference meta-factory with any `dataset=` form (a file path too) as its default."""

    def unspecified_factory(self) -> Callable[..., DPODatasetBuilder]:
        return self.from_string(self.default)


@functools.cache
def preference_prompts_for(dataset_spec: str) -> type[PreferencePrompts]:
    """A PreferencePrompts subclass whose `dataset` defaults to `dataset_spec`, so the preference
    builder's fields stay settable (`prompts.dataset.local_path=...`). Cached: one class per spec."""
    meta_factory = _PreferenceMetaFactory(dataset_spec)
    default_factory = meta_factory.from_string(dataset_spec)  # raises MetaFromString on an unknown name
    namespace = {
        "__module__": __name__,
        "__qualname__": f"PreferencePrompts[{dataset_spec}]",
        "__annotations__": {"dataset": DPODatasetBuilder},
        "dataset": chz.field(
            default_factory=default_factory,
            meta_factory=meta_factory,
            doc=f"the preference data set whose prompts are sampled on (default {dataset_spec})",
        ),
    }
    return chz.chz(type(f"PreferencePrompts[{dataset_spec}]", (PreferencePrompts,), namespace))
