"""`dataset=ultrafeedback`: the binarized UltraFeedback preferences (HuggingFaceH4/ultrafeedback_binarized).

A row has `chosen` and `rejected` conversations that begin with the same user turn (`prompt`) and
end with the two replies, scored `score_chosen` and `score_rejected`. Equal scores are skipped as
`tie`; a chosen reply scored below the rejected one is kept as the data set labels it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import chz

from cookbook.datasets.comparison import Comparison, Skip, comparison_from_conversations, to_messages
from cookbook.datasets.hub import HubDatasetBuilder
from cookbook.datasets.registry import register_builder


@register_builder("ultrafeedback")
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
