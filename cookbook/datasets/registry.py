"""Choosing a dataset builder by name on the command line.

`dataset=hhh` picks a registered builder; `dataset=my.module:MyBuilder` imports a user's subclass of
`DPODatasetBuilder`. Both work through chz's polymorphic construction, so a trainer config declares

    dataset: DPODatasetBuilder = chz.field(
        default_factory=DemoBuilder, meta_factory=dataset_meta_factory(), doc="...")

and `dataset=hhh dataset.test_size=100` sets fields of the chosen builder. A field override given
without `dataset=` (e.g. only `dataset.max_pairs=500`) applies to the default builder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from chz.factories import MetaFromString

from cookbook.datasets.builder import DPODatasetBuilder
from cookbook.datasets.builder_registry import BuilderRegistry, NamedBuilderMetaFactory

DEFAULT_DATASET = "demo"
# Modules whose import registers the built-in builders (imported on first lookup).
BUILTIN_MODULES = (
    "cookbook.datasets.demo",
    "cookbook.datasets.file",
    "cookbook.datasets.hhh",
    "cookbook.datasets.helpsteer3",
    "cookbook.datasets.ultrafeedback",
)

_BUILDERS = BuilderRegistry(
    DPODatasetBuilder, "cookbook.datasets.DPODatasetBuilder", "register_builder", BUILTIN_MODULES
)
BuilderT = TypeVar("BuilderT", bound=type[DPODatasetBuilder])


def register_builder(name: str) -> Callable[[BuilderT], BuilderT]:
    """Class decorator: make a builder selectable as `dataset=<name>`."""
    return _BUILDERS.register(name)


def registered_builders() -> dict[str, type[DPODatasetBuilder]]:
    """Name -> builder class, built-ins included."""
    return _BUILDERS.classes()


def resolve_builder(spec: str) -> type[DPODatasetBuilder]:
    """The builder class for a registered name or a `module:Class` path; ValueError lists the names."""
    try:
        return _resolve(spec)
    except MetaFromString as error:
        raise ValueError(str(error)) from None


def _resolve(spec: str) -> type[DPODatasetBuilder]:
    cls = _BUILDERS.find_class(spec)
    if cls is None:
        raise MetaFromString(
            f"Unknown dataset {spec!r}. Registered datasets: {', '.join(registered_builders())}. "
            "For your own builder give module:Class (e.g. dataset=my_package.prefs:MyBuilder)."
        )
    return cls


def _factory_for(spec: str) -> Callable[..., DPODatasetBuilder]:
    # `dataset=prefs.jsonl` is shorthand for `dataset=file dataset.path=prefs.jsonl`.
    return _BUILDERS.file_factory(spec) or _resolve(spec)


class DatasetMetaFactory(NamedBuilderMetaFactory):
    """chz meta-factory for a `DPODatasetBuilder` field: registered short names, a data file's path,
    then `module:Class`."""

    option = "dataset"
    default_spec = DEFAULT_DATASET
    forms = "a registered name or module:Class"
    resolve = staticmethod(_factory_for)


def dataset_meta_factory(default: str = DEFAULT_DATASET) -> DatasetMetaFactory:
    """The `meta_factory=` for a config field typed `DPODatasetBuilder` (see the module docstring)."""
    return DatasetMetaFactory(default)
