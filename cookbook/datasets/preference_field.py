"""A builder class's preference data set field, given a default chosen on the command line.

`dataset=chosen:hhh` (supervised) and `prompts=prompts:hhh` (on-policy) each name a builder whose one
`DPODatasetBuilder` field should default to `hhh` while staying settable field by field
(`dataset.preference.local_path=...`). chz takes field defaults from the class, so each spec gets a
generated subclass with that field's default replaced: `subclass_with_preference_field`.
"""

from __future__ import annotations

from typing import TypeVar

import chz

from cookbook.datasets.builder import DPODatasetBuilder
from cookbook.datasets.registry import DatasetMetaFactory

BaseT = TypeVar("BaseT", bound=type)


def subclass_with_preference_field(base: BaseT, field_name: str, spec: str, doc: str) -> BaseT:
    """A chz subclass `<base>[<spec>]` of `base` whose `DPODatasetBuilder` field `field_name` defaults to
    the preference builder `spec` (any `dataset=` form). Raises MetaFromString on an unknown name."""
    meta_factory = DatasetMetaFactory(spec)
    name = f"{base.__name__}[{spec}]"
    namespace = {
        "__module__": base.__module__,
        "__qualname__": name,
        "__annotations__": {field_name: DPODatasetBuilder},
        field_name: chz.field(default_factory=meta_factory.from_string(spec), meta_factory=meta_factory, doc=doc),
    }
    return chz.chz(type(name, (base,), namespace))
