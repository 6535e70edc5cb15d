"""Typed, validated component configs built on attrs.

A component's ``Config`` is an attrs class (``@config`` below: kw-only, frozen). Building one
from user kwargs checks for unknown keys (listing the valid ones), checks each value against the
field's type annotation, and runs the field validators; every failure is a :class:`ConfigError`
naming the component and the field. Configs round-trip through plain data (JSON types).
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal, Union

import attrs

from .errors import ConfigError, close_names

__all__ = ["config", "field", "build_config", "config_to_data", "config_fields"]


def config(cls: type) -> type:
    """Decorate a component's ``Config`` class: attrs, keyword-only, frozen."""
    return attrs.define(kw_only=True, frozen=True)(cls)


def field(default: Any = attrs.NOTHING, *, help: str = "", validator: Any = None,
          factory: Any = None) -> Any:
    """An attrs field with a one-line ``help`` (shown by ``modelopt plugins`` and in errors)."""
    if factory is not None:
        return attrs.field(factory=factory, validator=validator, metadata={"help": help})
    return attrs.field(default=default, validator=validator, metadata={"help": help})


def config_fields(cfg_cls: type) -> dict[str, attrs.Attribute]:
    """Map field name -> attrs attribute for a Config class."""
    return {a.name: a for a in attrs.fields(cfg_cls)}


def _type_ok(value: Any, tp: Any) -> bool:
    if tp is Any or tp is None and value is None:
        return True
    origin = typing.get_origin(tp)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        args = typing.get_args(tp)
        if not args:
            return True
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(v, args[0]) for v in value)
        if origin is tuple:
            return len(args) == len(value) and all(_type_ok(v, a) for v, a in zip(value, args))
        return all(_type_ok(v, args[0]) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            return False
        args = typing.get_args(tp)
        return not args or all(_type_ok(k, args[0]) and _type_ok(v, args[1])
                               for k, v in value.items())
    if origin is typing.Callable or tp is typing.Callable:
        return callable(value)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # exotic annotation: leave it to the field's validators


def _normalise(value: Any, tp: Any) -> Any:
    """Coerce JSON-ish values back to the annotated container type (list -> tuple)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for a in typing.get_args(tp):
            if a is not type(None) and _type_ok(value, a):
                return _normalise(value, a)
        return value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) if isinstance(tp, type) else str(tp).replace("typing.", "")


def build_config(cfg_cls: type, values: dict[str, Any], where: str) -> Any:
    """Validate ``values`` and build ``cfg_cls``; ``where`` names the component in errors."""
    hints = typing.get_type_hints(cfg_cls)
    fields = config_fields(cfg_cls)
    unknown = [k for k in values if k not in fields]
    if unknown:
        k = unknown[0]
        hint = close_names(k, fields)
        raise ConfigError(
            f"{where}: unknown config key {k!r}"
            + (f" (did you mean {', '.join(map(repr, hint))}?)" if hint else "")
            + f". Valid keys: {', '.join(sorted(fields)) or '(none)'}.")
    clean = {}
    for k, v in values.items():
        tp = hints.get(k, Any)
        if not _type_ok(v, tp):
            raise ConfigError(
                f"{where}: config key {k!r} must be {_describe(tp)}, got {type(v).__name__} {v!r}.")
        if isinstance(v, float) and math.isnan(v):
            raise ConfigError(f"{where}: config key {k!r} is NaN; give a number.")
        clean[k] = _normalise(v, tp)
    try:
        return cfg_cls(**clean)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: invalid config: {e}") from e


def _plain(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def config_to_data(cfg: Any) -> dict[str, Any]:
    """Config -> plain JSON-compatible dict (tuples become lists)."""
    return {k: _plain(v) for k, v in attrs.asdict(cfg, recurse=False).items()}


# ---- validators reused by components -------------------------------------------------------

def in_range(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False):
    """attrs validator: ``lo <= value <= hi`` (bounds optionally open)."""

    def check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
        if value is None:
            return
        bad = (value < lo or (lo_open and value == lo) or value > hi or (hi_open and value == hi))
        if bad:
            lb, hb = ("(" if lo_open else "["), (")" if hi_open else "]")
            raise ConfigError(f"config key {attr.name!r} = {value!r} is outside {lb}{lo}, {hi}{hb}.")

    return check


def positive(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    """attrs validator: value > 0 (None allowed)."""
    if value is not None and value <= 0:
        raise ConfigError(f"config key {attr.name!r} must be > 0, got {value!r}.")
