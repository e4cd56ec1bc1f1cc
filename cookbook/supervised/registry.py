"""Choosing a supervised dataset builder by name on the command line.

The supervised twin of `cookbook.datasets.registry`, with the same forms and one more:

- `dataset=no_robots`: a registered builder;
- `dataset=sft.jsonl`: shorthand for `dataset=file dataset.path=sft.jsonl`;
- `dataset=chosen:demo`, `dataset=chosen:hhh`, `dataset=chosen:prefs.jsonl`: the chosen side of any
  preference data set (`dataset.preference.local_path=...` then sets fields of that preference builder);
- `dataset=my.module:MyBuilder`: a user's subclass of `SupervisedDatasetBuilder`.

A trainer config declares

    dataset: SupervisedDatasetBuilder = chz.field(
        default_factory=resolve_supervised_builder(DEFAULT_SUPERVISED_DATASET),
        meta_factory=supervised_dataset_meta_factory(), doc="...")

A field override given without `dataset=` (e.g. only `dataset.test_size=50`) applies to the default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from chz.factories import MetaFromString

from cookbook.datasets.builder_registry import BuilderRegistry, NamedBuilderMetaFactory
from cookbook.supervised.builder import SupervisedDatasetBuilder

DEFAULT_SUPERVISED_DATASET = "chosen:demo"  # the chosen side of the bundled demo pairs
CHOSEN_PREFIX = "chosen:"
# Modules whose import registers the built-in builders (imported on first lookup).
BUILTIN_MODULES = (
    "cookbook.supervised.chosen",
    "cookbook.supervised.file",
    "cookbook.supervised.no_robots",
)

_BUILDERS = BuilderRegistry(
    SupervisedDatasetBuilder,
    "cookbook.supervised.SupervisedDatasetBuilder",
    "register_supervised_builder",
    BUILTIN_MODULES,
)
BuilderT = TypeVar("BuilderT", bound=type[SupervisedDatasetBuilder])


def register_supervised_builder(name: str) -> Callable[[BuilderT], BuilderT]:
    """Class decorator: make a supervised builder selectable as `dataset=<name>`."""
    if name.startswith(CHOSEN_PREFIX):
        raise ValueError(f"dataset names starting with {CHOSEN_PREFIX!r} are reserved")
    return _BUILDERS.register(name)


def registered_supervised_builders() -> dict[str, type[SupervisedDatasetBuilder]]:
    """Name -> builder class, built-ins included."""
    return _BUILDERS.classes()


def resolve_supervised_builder(spec: str) -> Callable[..., SupervisedDatasetBuilder]:
    """The builder factory for any `dataset=` form (see the module docstring); ValueError lists the names."""
    try:
        return _factory_for(spec)
    except MetaFromString as error:
        raise ValueError(str(error)) from None


def _factory_for(spec: str) -> Callable[..., SupervisedDatasetBuilder]:
    if spec.startswith(CHOSEN_PREFIX):
        from cookbook.supervised.chosen import chosen_builder_for

        return chosen_builder_for(spec.removeprefix(CHOSEN_PREFIX))
    factory = _BUILDERS.file_factory(spec) or _BUILDERS.find_class(spec)
    if factory is None:
        raise MetaFromString(
            f"Unknown supervised dataset {spec!r}. Registered datasets: {', '.join(registered_supervised_builders())}; "
            f"or {CHOSEN_PREFIX}<preference dataset> (e.g. {CHOSEN_PREFIX}demo), a .jsonl/.json/.parquet file, "
            "or module:Class for your own builder."
        )
    return factory


class SupervisedDatasetMetaFactory(NamedBuilderMetaFactory):
    """chz meta-factory for a `SupervisedDatasetBuilder` field (see the module docstring)."""

    option = "dataset"
    default_spec = DEFAULT_SUPERVISED_DATASET
    forms = f"a registered name, {CHOSEN_PREFIX}<name>, a file or module:Class"
    resolve = staticmethod(_factory_for)


def supervised_dataset_meta_factory(default: str = DEFAULT_SUPERVISED_DATASET) -> SupervisedDatasetMetaFactory:
    """The `meta_factory=` for a config field typed `SupervisedDatasetBuilder`."""
    return SupervisedDatasetMetaFactory(default)
