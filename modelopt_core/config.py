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
import warnings
from collections.abc import Sequence
from typing import Any, Literal, Union

import attrs

from .errors import ConfigError, close_names

__all__ = [
    "Choice",
    "FloatRange",
    "IntRange",
    "build_config",
    "choice",
    "config",
    "config_fields",
    "config_to_data",
    "field",
    "floats",
    "ints",
    "parse_options",
    "search_space",
    "space_from_data",
]


# ---- search spaces: data on config fields ----------------------------------------------------

_SCALAR = (bool, int, float, str, type(None))


@attrs.frozen
class Choice:
    """One of a few values (bool, int, float, str or None)."""

    values: tuple[Any, ...]

    def candidates(self) -> tuple[Any, ...]:
        """Every value the space can yield."""
        return self.values

    def to_data(self) -> dict[str, Any]:
        """Plain data: ``{"choice": [...]}``."""
        return {"choice": list(self.values)}

    def suggest(self, trial: Any, name: str) -> Any:
        """Sample this space on an Optuna trial under parameter ``name``."""
        return trial.suggest_categorical(name, list(self.values))


@attrs.frozen
class IntRange:
    """Integers ``lo..hi`` (inclusive) by ``step``, optionally log-uniform."""

    lo: int
    hi: int
    step: int = 1
    log: bool = False

    def candidates(self) -> tuple[Any, ...]:
        return (self.lo, self.hi)

    def to_data(self) -> dict[str, Any]:
        return {"ints": [self.lo, self.hi], "step": self.step, "log": self.log}

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_int(name, self.lo, self.hi, step=self.step, log=self.log)


@attrs.frozen
class FloatRange:
    """Floats in ``[lo, hi]``, on a grid of ``step`` when given, optionally log-uniform."""

    lo: float
    hi: float
    step: float | None = None
    log: bool = False

    def candidates(self) -> tuple[Any, ...]:
        return (self.lo, self.hi)

    def to_data(self) -> dict[str, Any]:
        return {"floats": [self.lo, self.hi], "step": self.step, "log": self.log}

    def suggest(self, trial: Any, name: str) -> Any:
        v = trial.suggest_float(name, self.lo, self.hi, step=self.step, log=self.log)
        return round(v, 10) if self.step else v  # 0.30000000000000004 -> 0.3


Space = Choice | IntRange | FloatRange


def choice(*values: Any) -> Choice:
    """A search space of a few values: ``choice("l1", "l2")``, ``choice(True, False)``."""
    if not values or not all(isinstance(v, _SCALAR) for v in values):
        raise ConfigError(f"choice{values!r}: give one or more bool/int/float/str/None "
                          "values.")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"choice{values!r}: values repeat.")
    return Choice(tuple(values))


def ints(lo: int, hi: int, step: int = 1, log: bool = False) -> IntRange:
    """A search space of integers ``lo..hi`` inclusive."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi, step)) \
            or lo > hi or step < 1 or (log and (lo < 1 or step != 1)):
        raise ConfigError(f"ints({lo!r}, {hi!r}, step={step!r}, log={log}): need integers "
                          "lo <= hi, step >= 1 (log: lo >= 1 and step 1).")
    return IntRange(lo, hi, step, log)


def floats(lo: float, hi: float, step: float | None = None, log: bool = False) -> FloatRange:
    """A search space of floats in ``[lo, hi]`` (on a ``step`` grid when given)."""
    nums = [v for v in (lo, hi, step) if v is not None]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in nums) or lo > hi or (step is not None and step <= 0) \
            or (log and (lo <= 0 or step is not None)):
        raise ConfigError(f"floats({lo!r}, {hi!r}, step={step!r}, log={log}): need finite "
                          "lo <= hi, step > 0 (log: lo > 0 and no step).")
    return FloatRange(float(lo), float(hi), None if step is None else float(step), log)


def space_from_data(data: Any, where: str = "search space") -> Space:
    """Build a space from plain data (``to_data()``'s output, TOML, JSON); a bare list is
    a choice."""
    if isinstance(data, (list, tuple)):
        return choice(*data)
    if isinstance(data, dict) and len({"choice", "ints", "floats"} & set(data)) == 1:
        rest = {k: v for k, v in data.items() if k in ("step", "log")}
        extra = set(data) - {"choice", "ints", "floats", "step", "log"}
        if not extra:
            if "choice" in data and not rest:
                return choice(*data["choice"])
            for key, make in (("ints", ints), ("floats", floats)):
                if key in data and isinstance(data[key], list) and len(data[key]) == 2:
                    return make(*data[key], **rest)
    raise ConfigError(f"{where}: {data!r} is not a search space; write a list of values, "
                      "{choice = [...]}, {ints = [lo, hi], step = 1} or "
                      "{floats = [lo, hi], step = 0.1, log = false}.")


def search_space(component: type) -> dict[str, Space]:
    """The search space a component (or its ``Config`` class) declares: field -> space."""
    cfg = getattr(component, "Config", component)
    if cfg is None or not attrs.has(cfg):
        return {}
    return {a.name: a.metadata["search"] for a in attrs.fields(cfg) if "search" in a.metadata}


def check_value(cfg_cls: type, name: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` passes field ``name``'s type and
    validators."""
    a = config_fields(cfg_cls)[name]
    try:
        tp = typing.get_type_hints(cfg_cls).get(name, Any)
    except Exception:  # an unresolvable annotation: leave it to the validators
        tp = Any
    where = f"{cfg_cls.__qualname__}.{name}"
    if not _type_ok(value, tp):
        raise ConfigError(f"{where}: search value {value!r} is not a {_describe(tp)}.")
    if a.validator is not None:
        try:
            a.validator(None, a, value)
        except (ConfigError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: search value {value!r} fails the field's validator: "
                              f"{e}") from e


def _check_declared(cfg_cls: type) -> None:
    for name, space in search_space(cfg_cls).items():
        vals = list(space.candidates())
        if isinstance(space, (IntRange, FloatRange)) and space.step:
            vals.append(space.lo + space.step * int((space.hi - space.lo) // space.step))
        for v in vals:
            check_value(cfg_cls, name, v)


def config(cls: type) -> type:
    """Decorate a component's ``Config`` class: attrs, keyword-only, frozen. Search spaces
    declared on its fields (``field(search=...)``) are checked here, at import: every value
    a space can yield must pass the field's type and validators."""
    out = attrs.define(kw_only=True, frozen=True)(cls)
    _check_declared(out)
    _aliases(out)  # checked at import too
    return out


def _aliases(cfg_cls: type) -> dict[str, str]:
    """Deprecated old name -> field name (``field(aliases=...)``); a ConfigError when an
    old name is a field's or two fields claim it."""
    out: dict[str, str] = {}
    fields = config_fields(cfg_cls)
    for name, a in fields.items():
        for old in a.metadata.get("aliases", ()):
            if old in fields or old in out:
                raise ConfigError(f"{cfg_cls.__qualname__}.{name}: alias {old!r} is already "
                                  f"the name of a field or another field's alias.")
            out[old] = name
    return out


def _renamed(cfg_cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` with deprecated old keys under their field's name (a FutureWarning naming
    the new one); giving both the old and the new name is a ConfigError."""
    out = dict(values)
    for old, new in _aliases(cfg_cls).items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{where}: config keys {old!r} and {new!r} are the same option "
                              f"({old!r} is its deprecated old name); give only {new!r}.")
        warnings.warn(f"{where}: config key {old!r} is deprecated; use {new!r} (same "
                      "meaning).", FutureWarning, stacklevel=4)
        out[new] = out.pop(old)
    return out


def field(default: Any = attrs.NOTHING, *, help: str = "", validator: Any = None,
          factory: Any = None, search: Any = None, aliases: tuple[str, ...] = ()) -> Any:
    """An attrs field with a one-line ``help`` (shown by ``modelopt plugins`` and in errors)
    and an optional search space (``search=choice(...)``, ``ints(...)`` or ``floats(...)``)
    that automatic optimization (``Session.optimize``) samples the field from. ``aliases``:
    deprecated old names of the field, still accepted by :func:`build_config` (recipes,
    ``Component(**options)``) with a ``FutureWarning`` naming the new one."""
    meta: dict[str, Any] = {"help": help}
    if aliases:
        if isinstance(aliases, str) or not all(isinstance(a, str) and a for a in aliases):
            raise ConfigError(f"field(aliases=...) must be a tuple of names, got {aliases!r}.")
        meta["aliases"] = tuple(aliases)
    if search is not None:
        if not isinstance(search, (Choice, IntRange, FloatRange)):
            raise ConfigError(f"field(search=...) must be choice(...), ints(...) or "
                              f"floats(...), got {search!r}.")
        meta["search"] = search
    if factory is not None:
        return attrs.field(factory=factory, validator=validator, metadata=meta)
    return attrs.field(default=default, validator=validator, metadata=meta)


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
    values = _renamed(cfg_cls, values, where)
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


def parse_options(items: Sequence[str], flag: str = "--backend-option") -> dict[str, Any]:
    """``KEY=VALUE`` command-line items (``--backend-option performance_hint=LATENCY``) as a
    dict; a value parses as JSON when it can (``2`` -> 2, ``true`` -> True), else stays a
    string. :class:`ConfigError` naming ``flag`` for an item without ``=`` or a key."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} "
                              "inference_num_threads=2.")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out
