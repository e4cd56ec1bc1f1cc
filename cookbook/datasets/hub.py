"""Builders for data sets on the Hugging Face hub, which can also read the same schema locally.

Each hub builder names its hub id, config and splits as class constants and inherits two options:
`local_path` (a JSONL, JSON or Parquet file in the hub's schema, used instead of the hub) and
`local_test_path` (its test split; without it, `test_size` pairs are carved out of `local_path`).

Without network access a hub builder fails within seconds, naming the data set and `local_path`,
instead of waiting on connection timeouts: with `HF_HUB_OFFLINE`/`HF_DATASETS_OFFLINE` set it only
looks in the local Hugging Face cache, and otherwise it first checks with a short socket connect.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, ClassVar

import chz

from cookbook.datasets.builder import DPODatasetBuilder
from cookbook.datasets.files import read_rows
from cookbook.errors import UserError
from cookbook.models import hub_reachable

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class DatasetUnavailableError(UserError, RuntimeError):
    """A hub data set that is neither cached locally nor reachable."""


def hub_offline() -> bool:
    return any(
        os.environ.get(name, "0").lower() not in ("0", "", "false", "no") for name in OFFLINE_VARIABLES
    )


@chz.chz
class HubDatasetBuilder(DPODatasetBuilder):
    """Base of builders that read a hub data set (or the same schema from local files)."""

    hub_id: ClassVar[str]
    hub_config: ClassVar[str | None] = None
    hub_splits: ClassVar[tuple[str, str | None]] = ("train", "test")
    registered_name: ClassVar[str] = ""  # the `dataset=` name, for error messages

    local_path: str | None = chz.field(
        default=None, doc="read this JSONL/JSON/Parquet file (same schema as the hub) instead of the hub"
    )
    local_test_path: str | None = chz.field(
        default=None, doc="test split file for local_path; without it the test pairs are carved out of it"
    )

    def name(self) -> str:
        return self.local_path or self.hub_id

    def split_names(self) -> tuple[str, str | None]:
        if self.local_path is not None:
            return ("train", "test" if self.local_test_path is not None else None)
        return self.hub_splits

    def load_rows(self, split: str) -> Iterable[Any]:
        if self.local_path is not None:
            return read_rows(self.local_test_path if split == "test" else self.local_path)
        return load_hub_split(self.hub_id, self.hub_config, split, option_hint=self._option_hint())

    def _option_hint(self) -> str:
        prefix = f"dataset={self.registered_name} " if self.registered_name else ""
        return f"{prefix}dataset.local_path=FILE.jsonl (and optionally dataset.local_test_path=FILE)"


def load_hub_split(hub_id: str, config: str | None, split: str, option_hint: str) -> Iterable[dict]:
    """One split of a hub data set as dict rows; fails fast with advice when the hub is out of reach."""
    offline = hub_offline()
    if not offline and not hub_reachable():
        raise DatasetUnavailableError(_unavailable_message(hub_id, "the hub cannot be reached", option_hint))
    import datasets

    try:
        # With the offline variables set, `datasets` only looks in the local cache (and fails fast).
        return datasets.load_dataset(hub_id, config, split=split)
    except Exception as error:
        if not offline:
            raise
        reason = f"it is not in the local Hugging Face cache and hub access is off ({type(error).__name__})"
        raise DatasetUnavailableError(_unavailable_message(hub_id, reason, option_hint)) from error


def _unavailable_message(hub_id: str, reason: str, option_hint: str) -> str:
    return (
        f"Cannot load the data set {hub_id!r}: {reason}. Either download it on a connected machine "
        f"(huggingface-cli download --repo-type dataset {hub_id}) and copy the Hugging Face cache here, "
        f"or read the same schema from a local file: {option_hint}."
    )
