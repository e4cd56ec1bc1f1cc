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

import functools
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from chz.factories import MetaFactory, MetaFromString
from chz.tiepin import CastError

from cookbook.datasets.files import SUPPORTED_SUFFIXES
from cookbook.supervised.builder import SupervisedDatasetBuilder

DEFAULT_SUPERVISED_DATASET = "chosen:demo"  # the chosen side of the bundled demo pairs
CHOSEN_PREFIX = "chosen:"
# Modules whose import registers the built-in builders (kept lazy to avoid import cycles).
BUILTIN_MODULES = (
    "cookbook.supervised.chosen",
    "cookbook.supervised.file",
    "cookbook.supervised.no_robots",
)

_REGISTRY: dict[str, type[SupervisedDatasetBuilder]] = {}
BuilderT = TypeVar("BuilderT", bound=type[SupervisedDatasetBuilder])


def register_supervised_builder(name: str) -> Callable[[BuilderT], BuilderT]:
    """Class decorator: make a supervised builder selectable as `dataset=<name>`."""

    def register(cls: BuilderT) -> BuilderT:
        if not (isinstance(cls, type) and issubclass(cls, SupervisedDatasetBuilder)):
            raise TypeError(
                f"register_supervised_builder({name!r}) needs a SupervisedDatasetBuilder subclass, got {cls!r}"
            )
        if name.startswith(CHOSEN_PREFIX):
            raise ValueError(f"dataset names starting with {CHOSEN_PREFIX!r} are reserved")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"dataset name {name!r} is already registered to {existing.__qualname__}")
        _REGISTRY[name] = cls
        return cls

    return register


def registered_supervised_builders() -> dict[str, type[SupervisedDatasetBuilder]]:
    """Name -> builder class, built-ins included."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return dict(sorted(_REGISTRY.items()))


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
    if spec.lower().endswith(SUPPORTED_SUFFIXES) and ":" not in spec:
        from cookbook.supervised.file import SupervisedFileBuilder

        return functools.partial(SupervisedFileBuilder, path=spec)
    return _resolve_class(spec)


def _resolve_class(spec: str) -> type[SupervisedDatasetBuilder]:
    registry = registered_supervised_builders()
    if spec in registry:
        return registry[spec]
    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise MetaFromString(
                f"dataset={spec}: could not import module {module_name!r} ({type(error).__name__}: {error})"
            ) from None
        cls: Any = module
        for part in attribute.split("."):
            cls = getattr(cls, part, None)
            if cls is None:
                raise MetaFromString(f"dataset={spec}: module {module_name!r} has no attribute {attribute!r}")
        if not (isinstance(cls, type) and issubclass(cls, SupervisedDatasetBuilder)):
            raise MetaFromString(
                f"dataset={spec}: {attribute} is not a subclass of cookbook.supervised.SupervisedDatasetBuilder"
            )
        return cls
    raise MetaFromString(
        f"Unknown supervised dataset {spec!r}. Registered datasets: {', '.join(registry)}; "
        f"or {CHOSEN_PREFIX}<preference dataset> (e.g. {CHOSEN_PREFIX}demo), a .jsonl/.json/.parquet file, "
        "or module:Class for your own builder."
    )


class SupervisedDatasetMetaFactory(MetaFactory):
    """chz meta-factory for a `SupervisedDatasetBuilder` field (see the module docstring)."""

    def __init__(self, default: str = DEFAULT_SUPERVISED_DATASET) -> None:
        super().__init__()
        self.default = default

    def __repr__(self) -> str:
        return f"SupervisedDatasetMetaFactory(default={self.default!r})"

    def unspecified_factory(self) -> Callable[..., Any]:
        # Used when only sub-fields are given (`dataset.test_size=5`): they configure the default.
        return _factory_for(self.default)

    def from_string(self, factory: str) -> Callable[..., Any]:
        return _factory_for(factory)

    def perform_cast(self, value: str):
        raise CastError(
            f"dataset={value} is not a value; dataset= takes a registered name, chosen:<name>, a file or module:Class"
        )


def supervised_dataset_meta_factory(default: str = DEFAULT_SUPERVISED_DATASET) -> SupervisedDatasetMetaFactory:
    """The `meta_factory=` for a config field typed `SupervisedDatasetBuilder`."""
    return SupervisedDatasetMetaFactory(default)
