"""Choosing a dataset builder by name on the command line.

`dataset=hhh` picks a registered builder; `dataset=my.module:MyBuilder` imports a user's subclass of
`DPODatasetBuilder`. Both work through chz's polymorphic construction, so a trainer config declares

    dataset: DPODatasetBuilder = chz.field(
        default_factory=DemoBuilder, meta_factory=dataset_meta_factory(), doc="...")

and `dataset=hhh dataset.test_size=100` sets fields of the chosen builder. A field override given
without `dataset=` (e.g. only `dataset.max_pairs=500`) applies to the default builder.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from chz.factories import MetaFactory, MetaFromString
from chz.tiepin import CastError

from cookbook.datasets.builder import DPODatasetBuilder
from cookbook.datasets.files import SUPPORTED_SUFFIXES

DEFAULT_DATASET = "demo"
# Modules whose import registers the built-in builders (kept lazy so importing the registry stays cheap
# and free of import cycles).
BUILTIN_MODULES = (
    "cookbook.datasets.demo",
    "cookbook.datasets.file",
    "cookbook.datasets.hhh",
    "cookbook.datasets.helpsteer3",
    "cookbook.datasets.ultrafeedback",
)

_REGISTRY: dict[str, type[DPODatasetBuilder]] = {}
BuilderT = TypeVar("BuilderT", bound=type[DPODatasetBuilder])


def register_builder(name: str) -> Callable[[BuilderT], BuilderT]:
    """Class decorator: make a builder selectable as `dataset=<name>`."""

    def register(cls: BuilderT) -> BuilderT:
        if not (isinstance(cls, type) and issubclass(cls, DPODatasetBuilder)):
            raise TypeError(f"register_builder({name!r}) needs a DPODatasetBuilder subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"dataset name {name!r} is already registered to {existing.__qualname__}")
        _REGISTRY[name] = cls
        return cls

    return register


def registered_builders() -> dict[str, type[DPODatasetBuilder]]:
    """Name -> builder class, built-ins included."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return dict(sorted(_REGISTRY.items()))


def resolve_builder(spec: str) -> type[DPODatasetBuilder]:
    """The builder class for a registered name or a `module:Class` path; ValueError lists the names."""
    try:
        return _resolve(spec)
    except MetaFromString as error:
        raise ValueError(str(error)) from None


def _resolve(spec: str) -> type[DPODatasetBuilder]:
    registry = registered_builders()
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
        if not (isinstance(cls, type) and issubclass(cls, DPODatasetBuilder)):
            raise MetaFromString(
                f"dataset={spec}: {attribute} is not a subclass of cookbook.datasets.DPODatasetBuilder"
            )
        return cls
    raise MetaFromString(
        f"Unknown dataset {spec!r}. Registered datasets: {', '.join(registry)}. "
        "For your own builder give module:Class (e.g. dataset=my_package.prefs:MyBuilder)."
    )


def _file_builder_for(path: str) -> Callable[..., Any]:
    """`dataset=prefs.jsonl` is shorthand for `dataset=file dataset.path=prefs.jsonl`."""
    from cookbook.datasets.file import FileBuilder

    return functools.partial(FileBuilder, path=path)


class DatasetMetaFactory(MetaFactory):
    """chz meta-factory for a `DPODatasetBuilder` field: registered short names, a data file's path,
    then `module:Class`."""

    def __init__(self, default: str = DEFAULT_DATASET) -> None:
        super().__init__()
        self.default = default

    def __repr__(self) -> str:
        return f"DatasetMetaFactory(default={self.default!r})"

    def unspecified_factory(self) -> Callable[..., Any]:
        # Used when only sub-fields are given (`dataset.test_size=5`): they configure the default.
        return _resolve(self.default)

    def from_string(self, factory: str) -> Callable[..., Any]:
        if factory.lower().endswith(SUPPORTED_SUFFIXES) and ":" not in factory:
            return _file_builder_for(factory)
        return _resolve(factory)

    def perform_cast(self, value: str):
        raise CastError(f"dataset={value} is not a value; dataset= takes a registered name or module:Class")


def dataset_meta_factory(default: str = DEFAULT_DATASET) -> DatasetMetaFactory:
    """The `meta_factory=` for a config field typed `DPODatasetBuilder` (see the module docstring)."""
    return DatasetMetaFactory(default)
