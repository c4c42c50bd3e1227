"""Typed configuration machinery: frozen dataclasses built from plain mappings (YAML, JSON, overrides).

A field's annotation is its whole contract: its type, and its constraints next to it through `Annotated`
(`PositiveInt`, `Fraction`, `Range(gt=0, le=1)`) or a `Literal` of the allowed values. `build` checks every key and
value in one pass and raises `ConfigError` naming the dotted field, what was expected and what was found, with a
"did you mean" for misspelt keys and choices. A dataclass may add checks that span several of its fields in a
`validate()` method that raises `Invalid(field, expected)`; `build` names the field with its full path.

Every float must be finite (NaN passes no comparison, so it would slip through any range check unnoticed).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from iterdpo.core.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Bounds of a number: `Annotated[float, Range(ge=0, lt=1)]`."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def holds(self, value: float) -> bool:
        return ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))

    def __str__(self) -> str:
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if low and high:
            return f"a value in {low}, {high}"
        if low:
            return f"a value {'>=' if self.ge is not None else '>'} {low[1:]}"
        return f"a value {'<=' if self.le is not None else '<'} {high[:-1]}"


PositiveInt = Annotated[int, Range(gt=0)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(ge=0, lt=1)]  # a share of something, 1 excluded
Share = Annotated[float, Range(gt=0, le=1)]  # a share of something, 0 excluded
Probability = Annotated[float, Range(ge=0, le=1)]


class DuplicateKey(Exception):
    """A YAML mapping with the same key twice (YAML itself keeps the last one silently)."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"key {key!r} at lines {first} and {second}")
        self.key, self.first, self.second = key, first, second


EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


def unique_key_loader() -> type:
    """A safe YAML loader that refuses a mapping with a repeated key (`DuplicateKey`, with both 1-based lines)."""
    import yaml

    class UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKey(key, seen[key], line)
                seen[key] = line
            return super().construct_mapping(node, deep)

    # YAML 1.1 reads `1e-5` (an exponent without a dot or a sign) as a string; people write learning rates so.
    UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789."))
    return UniqueKeyLoader


class Invalid(ConfigError):
    """Raised by a dataclass's `validate()`: `field` (relative to the dataclass) did not get what it `expected`."""

    def __init__(self, field: str, expected: str) -> None:
        super().__init__(f"{field}: {expected}")
        self.field, self.expected = field, expected


def did_you_mean(word: str, options: typing.Iterable[Any], prefix: str = "") -> str:
    close = difflib.get_close_matches(str(word), [str(option) for option in options], n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def unknown_key(key: str, names: typing.Iterable[str], prefix: str) -> ConfigError:
    dotted = f"{prefix}.{key}" if prefix else str(key)
    return ConfigError(f"unknown config key '{dotted}'{did_you_mean(key, names, prefix + '.' if prefix else '')}")


class _OutOfBounds(ConfigError):
    """The value has the right type but breaks a constraint (a range, finiteness, a choice)."""


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _mismatch(where: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{where}: expected {expected}, got {type(value).__name__} {value!r}")


def convert(value: Any, tp: Any, where: str) -> Any:
    """`value` checked against the annotation `tp` (ints are accepted where floats are expected)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        inner, *constraints = typing.get_args(tp)
        value = convert(value, inner, where)
        for constraint in constraints:
            if isinstance(constraint, Range) and not constraint.holds(value):
                raise _OutOfBounds(f"{where}: expected {constraint}, got {value!r}")
        return value
    if origin is Literal:
        options = typing.get_args(tp)
        kinds = {type(option) for option in options}
        if len(kinds) == 1 and not isinstance(value, bool) and not isinstance(value, *kinds):
            raise _mismatch(where, next(iter(kinds)).__name__, value)
        if value not in options or isinstance(value, bool):
            raise _OutOfBounds(f"{where}: expected one of {list(options)}, got {value!r}{did_you_mean(value, options)}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return convert(value, option, where)
            except ConfigError as err:
                errors.append(err)
        # A value of the right type that broke a constraint says so, rather than listing the union's types.
        broken = [err for err in errors if isinstance(err, _OutOfBounds)]
        raise broken[0] if broken else _mismatch(where, _type_name(tp), value)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {type(value).__name__}")
        return build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise _mismatch(where, "a list", value)
        (item_tp,) = typing.get_args(tp)
        return [convert(item, item_tp, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _mismatch(where, "a mapping", value)
        return dict(value)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _mismatch(where, "float", value)
        if not math.isfinite(value):
            raise _OutOfBounds(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is bool or tp is int:
        if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
            raise _mismatch(where, tp.__name__, value)
        return value
    if not isinstance(value, tp):
        raise _mismatch(where, _type_name(tp), value)
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


class Checked:
    """Base of config dataclasses: however an instance is made (from a file by `build`, or directly in code), every
    field holds to its annotation and `validate()` passes. Ints given for floats become floats."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            where = f"{type(self).__name__}.{f.name}"  # built in code: a file's values were checked by `build`
            object.__setattr__(self, f.name, convert(getattr(self, f.name), hints[f.name], where))
        self.validate()

    def validate(self) -> None:
        """Checks that span several fields; raise `Invalid(field, expected)`."""


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """An instance of the dataclass `cls` from `data`: unknown keys, wrong types, broken constraints and failed
    `validate()` checks are `ConfigError`s naming the field under `prefix`."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    removed = getattr(cls, "REMOVED", {})  # field name -> what to set instead
    for key in data:
        if key in removed:
            raise ConfigError(f"{prefix + '.' if prefix else ''}{key}: no longer a setting; {removed[key]}")
        if key not in names:
            raise unknown_key(key, names, prefix)
    kwargs = {name: convert(data[name], hints[name], f"{prefix}.{name}" if prefix else name)
              for name in names if name in data}
    try:
        return cls(**kwargs)  # a `Checked` class runs its `validate()` here
    except Invalid as err:
        raise ConfigError(f"{prefix}.{err.field}: {err.expected}" if prefix else str(err)) from None
