"""`Registry`: a family of chz classes chosen by one command-line option, declared once.

Preference data sets (`dataset=`), supervised data sets (`dataset=` of the SFT recipe), prompt sources
(`prompts=`) and rewards (`reward=`) are each one `Registry`: a base class, the option's name, its
default, the built-ins as an explicit mapping (given by the module that defines them), and the
forms beside the names:

- `option=<name>`: a built-in (or one a user registered with `@REGISTRY.register("name")`);
- `option=<prefix><spec>` for each prefix form registered on the family (`chosen:hhh`,
  `prompts:demo`): the prefix's factory builds the class for `spec`;
- `option=data.jsonl`: shorthand for the family's file builder with `path=data.jsonl`;
- `option=my.module:MyClass`: a user's subclass of the base, imported here and nowhere else;
- `option=my.module:my_function`, for a family that takes functions (rewards).

A config field is declared with the family's meta-factory, so chz builds the chosen class and its
sub-fields (`dataset.test_size=100`) set that class's fields; sub-fields given without the option
configure the default:

    dataset: DPODatasetBuilder = chz.field(default_factory=DemoBuilder,
                                           meta_factory=PREFERENCE_DATASETS.meta_factory(), doc="...")

A prefix form is a class with one field of another family (`ChosenBuilder.preference`, a preference
data set) and `<prefix><spec>` sets that field's default to `spec`. chz takes field defaults from the
class, so `chosen:hhh` is a generated subclass whose preference field defaults to hhh while staying
settable field by field (`dataset.preference.local_path=...`); one class per spec, made once.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import chz
from chz.factories import MetaFactory, MetaFromString
from chz.tiepin import CastError

BaseT = TypeVar("BaseT")
ClassT = TypeVar("ClassT", bound=type)


class Registry(Generic[BaseT]):
    """Name -> class for the subclasses of `base`, chosen as `<option>=<spec>`."""

    def __init__(self, base: type[BaseT], option: str, default: str, *, base_path: str, unknown: str,
                 file_builder: str | None = None, file_suffixes: tuple[str, ...] = (),
                 function_factory: Callable[[str], Callable[..., BaseT]] | None = None,
                 function_doc: str = "a function") -> None:
        self.base = base
        self.option = option  # the command-line option: "dataset", "prompts", "reward"
        self.default = default
        self.base_path = base_path  # how messages name `base` for users: "cookbook.datasets.DPODatasetBuilder"
        self.unknown = unknown  # the message for an unknown name, with {spec!r} and {names}
        self.file_builder = file_builder  # the name whose class reads `path=` (the file shorthand)
        self.file_suffixes = file_suffixes
        self.function_factory = function_factory  # `module:function` -> a factory (rewards)
        self.function_doc = function_doc  # what such a function is, for messages
        self._classes: dict[str, type[BaseT]] = {}
        self._prefixes: dict[str, Callable[[str], Callable[..., BaseT]]] = {}

    # -- declaring the family ------------------------------------------------------------------------

    def add(self, builtins: Mapping[str, type[BaseT]]) -> None:
        """Register the built-ins, name -> class."""
        for name, cls in builtins.items():
            self.register(name)(cls)

    def register(self, name: str) -> Callable[[ClassT], ClassT]:
        """Class decorator: make a class selectable as `<option>=<name>`."""

        def register(cls: ClassT) -> ClassT:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{self.option} {name!r} needs a {self.base.__name__} subclass, got {cls!r}")
            for prefix in self._prefixes:
                if name.startswith(prefix):
                    raise ValueError(f"{self.option} names starting with {prefix!r} are reserved")
            existing = self._classes.get(name)
            if existing is not None and existing.__qualname__ != cls.__qualname__:
                raise ValueError(f"{self.option} name {name!r} is already registered to {existing.__qualname__}")
            self._classes[name] = cls
            return cls

        return register

    def add_prefix(self, prefix: str, cls: type[BaseT], field_name: str, family: Registry, doc: str) -> None:
        """`<option>=<prefix><spec>` is `cls` with its field `field_name`, a member of `family`,
        defaulting to what `spec` names there (`chosen:hhh`, `prompts:demo`); `doc` is the field's
        doc, which gets "(default <spec>)" appended."""

        @functools.cache
        def with_default(spec: str) -> type[BaseT]:
            field = chz.chz_fields(cls)[field_name]
            meta_factory = family.meta_factory(spec)
            name = f"{cls.__name__}[{spec}]"
            namespace = {
                "__module__": cls.__module__,
                "__qualname__": name,
                "__annotations__": {field_name: field.final_type},
                field_name: chz.field(default_factory=meta_factory.from_string(spec), meta_factory=meta_factory,
                                      doc=f"{doc} (default {spec})"),
            }
            return chz.chz(type(name, (cls,), namespace))

        self._prefixes[prefix] = with_default

    # -- choosing --------------------------------------------------------------------------------------

    def names(self) -> dict[str, type[BaseT]]:
        """Name -> class, sorted by name."""
        return dict(sorted(self._classes.items()))

    def factory(self, spec: str) -> Callable[..., BaseT]:
        """What builds the class `spec` names (any form of the module docstring); raises MetaFromString
        (chz's "bad value" error, which the command line reports as one line)."""
        for prefix, make in self._prefixes.items():
            if spec.startswith(prefix):
                return make(spec.removeprefix(prefix))
        if spec in self._classes:
            return self._classes[spec]
        if self.file_builder and ":" not in spec and spec.lower().endswith(self.file_suffixes):
            return functools.partial(self._classes[self.file_builder], path=spec)
        if ":" not in spec:
            raise MetaFromString(self.unknown.format(spec=spec, names=", ".join(self.names())))
        value = self.import_attribute(spec)
        if isinstance(value, type) and issubclass(value, self.base):
            return value
        if self.function_factory is not None and callable(value) and not isinstance(value, type):
            return self.function_factory(spec)
        attribute = spec.partition(":")[2]
        what = (f"is not a subclass of {self.base_path}" if self.function_factory is None
                else f"is neither a subclass of {self.base_path} nor {self.function_doc}")
        raise MetaFromString(f"{self.option}={spec}: {attribute} {what}")

    def resolve(self, spec: str) -> Callable[..., BaseT]:
        """`factory(spec)` for code (not the command line): a ValueError naming the choices."""
        try:
            return self.factory(spec)
        except MetaFromString as error:
            raise ValueError(str(error)) from None

    def import_attribute(self, spec: str) -> Any:
        """Whatever `module:attribute` names; MetaFromString when the import fails or finds nothing."""
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

    def meta_factory(self, default: str | None = None) -> RegistryMetaFactory:
        """The `meta_factory=` of a config field typed `base`, defaulting to `default`."""
        return RegistryMetaFactory(self, self.default if default is None else default)

    def forms(self) -> str:
        """What the option takes, for the message when a value is given instead."""
        forms = ["a registered name", *(f"{prefix}<name>" for prefix in self._prefixes)]
        if self.file_builder:
            forms.append("a data file")
        forms.append("module:Class" + (" or module:function" if self.function_factory else ""))
        return ", ".join(forms)


class RegistryMetaFactory(MetaFactory):
    """chz's side of a family: builds the class a `<option>=<spec>` string names."""

    def __init__(self, registry: Registry, default: str) -> None:
        super().__init__()
        self.registry = registry
        self.default = default

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.registry.option}, default={self.default!r})"

    def unspecified_factory(self) -> Callable[..., Any]:
        # Used when only sub-fields are given (`dataset.test_size=5`): they configure the default.
        return self.registry.factory(self.default)

    def from_string(self, factory: str) -> Callable[..., Any]:
        return self.registry.factory(factory)

    def perform_cast(self, value: str):
        option = self.registry.option
        raise CastError(f"{option}={value} is not a value; {option}= takes {self.registry.forms()}")

