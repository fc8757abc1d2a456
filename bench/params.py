"""Typed option sets for problems and balancers, built from plain mappings with clear errors.

Problems and balancers declare their options as a frozen dataclass. `build_params` turns a
mapping (from a study file, the CLI or Python) into that dataclass, coercing simple types and
naming the field, the source and what was expected when a value does not fit.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

from bench.errors import ConfigError, did_you_mean

P = TypeVar("P")


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in get_args(tp) if a is not type(None)]
        return " or ".join(parts) + (" or nothing" if type(None) in get_args(tp) else "")
    if origin is tuple:
        item = get_args(tp)[0]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true or false values"}
        return "a list of " + plural.get(item, f"values, each {_describe(item)}")
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


INT64 = 2 ** 63  # torch's sizes and generators take signed 64-bit integers


def coerce(tp: Any, value: Any, field: str, source: str | None = None) -> Any:
    """`value` as type `tp` (int, float, str, bool, Literal, tuple, optional), or a ConfigError."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, field, source)
            except ConfigError:
                continue
        raise ConfigError(field, _describe(tp), value, source=source)
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(field, _describe(tp), value, source=source)
    if origin is tuple:
        (item,) = [a for a in get_args(tp) if a is not Ellipsis]
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(field, _describe(tp), value, source=source)
        return tuple(coerce(item, v, field, source) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(field, _describe(tp), value, source=source)
    if tp is int:
        number = _integer(value)
        if number is None:
            raise ConfigError(field, _describe(tp), value, source=source)
        if not -INT64 <= number < INT64:  # torch raised "Overflow when unpacking long long"
            raise ConfigError(field, f"an integer of at most 64 bits (below {INT64:,} in size)", value,
                              source=source)
        return number
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(field, _describe(tp), value, source=source)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(field, _describe(tp), value, source=source)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(field, _describe(tp), value, source=source)
    return value


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    return None


def build_params(cls: type[P], values: Mapping[str, Any] | None, *, source: str | None = None,
                 prefix: str = "", owner: str | None = None) -> P:
    """Build the option dataclass `cls` from `values`, or raise a ConfigError naming the field.

    Unknown keys are refused (a typo must not silently fall back to a default). After coercion,
    the dataclass's optional `validate()` method checks ranges and relations between fields.
    """
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        expected = f"an option of {owner} (its options: {known})" if owner else f"one of the options {known}"
        raise ConfigError(prefix + unknown[0], expected, source=source, hint=did_you_mean(unknown[0], fields))
    kwargs = {name: coerce(hints[name], value, prefix + name, source) for name, value in values.items()}
    params = cls(**kwargs)
    validate = getattr(params, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as err:
            raise err.located(source, prefix=prefix) from None
    return params


def params_to_dict(params: Any) -> dict[str, Any]:
    """A JSON-friendly dict of an option dataclass (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out
