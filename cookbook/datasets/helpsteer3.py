"""`dataset=helpsteer3`: NVIDIA's HelpSteer3 preference data (nvidia/HelpSteer3, config `preference`).

A row has a conversation `context` (messages with `role` and `content`), two candidate replies
`response1` and `response2`, and `overall_preference` from -3 to 3: negative means response1 is
better, positive response2, 0 a tie (skipped as `tie`). Rows can be kept to some `domain`s and
`language`s; the others are counted as `filtered`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import chz

from cookbook.datasets.comparison import Comparison, Skip, assistant
from cookbook.datasets.hub import HubDatasetBuilder
from cookbook.datasets.registry import register_builder


def _name_set(names: str | None) -> frozenset[str] | None:
    if names is None:
        return None
    return frozenset(name.strip().lower() for name in names.split(",") if name.strip())


@register_builder("helpsteer3")
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
