"""`BuilderRegistry`: the `dataset=` names of one family of builders, and the forms beside them.

The preference registry (`cookbook.datasets.registry`) and the supervised one
(`cookbook.supervised.registry`) are each one `BuilderRegistry`. They differ only in the base class a
builder must subclass, the modules that register their built-ins and how they word an unknown name,
so both resolve `dataset=<name>`, `dataset=my.module:MyBuilder` and `dataset=data.jsonl` alike.
Other option families (the on-policy recipe's `prompts=` and `reward=`) use it too, naming their
option with `option=` so that messages say `prompts=...` rather than `dataset=...`.

`NamedBuilderMetaFactory` is the chz side of each family: the `meta_factory=` of a config field whose
builder is chosen by such a string.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from chz.factories import MetaFactory, MetaFromString
from chz.tiepin import CastError

from cookbook.datasets.files import SUPPORTED_SUFFIXES

BaseT = TypeVar("BaseT")
ClassT = TypeVar("ClassT", bound=type)


class BuilderRegistry(Generic[BaseT]):
    """Name -> builder class, for the subclasses of `base`."""

    def __init__(
        self,
        base: type[BaseT],
        base_path: str,
        decorator_name: str,
        builtin_modules: tuple[str, ...],
        file_builder_name: str = "file",
        option: str = "dataset",
        file_suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES,
    ) -> None:
        self.base = base
        self.base_path = base_path  # how messages name `base`: "cookbook.datasets.DPODatasetBuilder"
        self.decorator_name = decorator_name  # how messages name `register`
        # Modules whose import registers the built-in builders, imported on first lookup (so importing a
        # registry stays cheap and free of import cycles).
        self.builtin_modules = builtin_modules
        self.file_builder_name = file_builder_name  # the registered builder that reads `path=`
        self.option = option  # the command-line option these builders are chosen with
        self.file_suffixes = file_suffixes  # file names the `option=data.jsonl` shorthand accepts
        self._classes: dict[str, type[BaseT]] = {}

    def register(self, name: str) -> Callable[[ClassT], ClassT]:
        """Class decorator: make a builder selectable as `<option>=<name>`."""

        def register(cls: ClassT) -> ClassT:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(
                    f"{self.decorator_name}({name!r}) needs a {self.base.__name__} subclass, got {cls!r}"
                )
            existing = self._classes.get(name)
            if existing is not None and existing.__qualname__ != cls.__qualname__:
                raise ValueError(f"{self.option} name {name!r} is already registered to {existing.__qualname__}")
            self._classes[name] = cls
            return cls

        return register

    def classes(self) -> dict[str, type[BaseT]]:
        """Name -> builder class, built-ins included, sorted by name."""
        for module in self.builtin_modules:
            importlib.import_module(module)
        return dict(sorted(self._classes.items()))

    def find_class(self, spec: str) -> type[BaseT] | None:
        """The class of a registered name or a `module:Class` path; None when `spec` is neither.
        Raises MetaFromString (chz's "bad value" error) when the import fails or finds no builder."""
        classes = self.classes()
        if spec in classes:
            return classes[spec]
        if ":" not in spec:
            return None
        cls = self.import_attribute(spec)
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            attribute = spec.partition(":")[2]
            raise MetaFromString(f"{self.option}={spec}: {attribute} is not a subclass of {self.base_path}")
        return cls

    def import_attribute(self, spec: str) -> Any:
        """Whatever `module:attribute` names (a class, a function...); MetaFromString when the import
        fails or the module has no such attribute."""
        module_name, _, attribute = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise MetaFromString(
                f"{self.option}={spec}: could not import module {module_name!r} ({type(error).__name__}: {error})"
            ) from None
        value: Any = module
        for part in attribute.split("."):
            value = getattr(value, part, None)
            if value is None:
                raise MetaFromString(f"{self.option}={spec}: module {module_name!r} has no attribute {attribute!r}")
        return value

    def file_factory(self, spec: str) -> Callable[..., BaseT] | None:
        """`dataset=data.jsonl` is shorthand for `dataset=file dataset.path=data.jsonl`; None when `spec`
        is not a data file's path."""
        if not spec.lower().endswith(self.file_suffixes) or ":" in spec:
            return None
        return functools.partial(self.classes()[self.file_builder_name], path=spec)


class NamedBuilderMetaFactory(MetaFactory):
    """chz meta-factory for a field chosen as `<option>=<spec>`. A subclass sets the option's name, its
    default spec, the forms it takes (for the message when a value is given instead) and `resolve`,
    which turns a spec into a builder factory or raises MetaFromString."""

    option: ClassVar[str]
    default_spec: ClassVar[str]
    forms: ClassVar[str]  # "a registered name or module:Class"

    def __init__(self, default: str | None = None) -> None:
        super().__init__()
        self.default = self.default_spec if default is None else default

    def __repr__(self) -> str:
        return f"{type(self).__name__}(default={self.default!r})"

    def resolve(self, spec: str) -> Callable[..., Any]:
        raise NotImplementedError

    def unspecified_factory(self) -> Callable[..., Any]:
        # Used when only sub-fields are given (`dataset.test_size=5`): they configure the default.
        return self.resolve(self.default)

    def from_string(self, factory: str) -> Callable[..., Any]:
        return self.resolve(factory)

    def perform_cast(self, value: str):
        raise CastError(f"{self.option}={value} is not a value; {self.option}= takes {self.forms}")
