"""Module-tree records so torch artifacts whose layers were replaced (low-rank factors,
depthwise-separable pairs, folded BatchNorm) reload into the original class.

Saving records every standard layer's type and constructor arguments (never code). Loading
starts from the user's skeleton and replaces each module whose type differs from the record
with one built from the record; only the standard ``torch.nn`` layers listed here are built,
so a manifest cannot make the loader construct anything else. Records are validated field by
field (:func:`check_records`) and a layer with weights is built only when the saved weights have
exactly the shapes its record implies, so no allocation is sized by an unchecked number.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ArtifactError

__all__ = ["record_structure", "rebuild_structure", "check_records"]

_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
         "padding_mode")
_ARGS: dict[str, tuple[str, ...]] = {
    "Conv1d": _CONV, "Conv2d": _CONV, "Conv3d": _CONV,
    "Linear": ("in_features", "out_features"),
    "BatchNorm1d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "BatchNorm2d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "Identity": (), "Sequential": (), "Flatten": ("start_dim", "end_dim"),
    "ReLU": ("inplace",), "ReLU6": ("inplace",), "SiLU": ("inplace",), "GELU": ("approximate",),
    "Sigmoid": (), "Hardswish": ("inplace",),
    "MaxPool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    "AvgPool2d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    "AdaptiveAvgPool2d": ("output_size",),
    "Upsample": ("size", "scale_factor", "mode"),
}


def record_structure(model: Any) -> dict[str, dict[str, Any]]:
    """``{module path: {"type": name, "args": {...}, "bias": bool}}`` for standard layers."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        t = type(m).__name__
        if not name or t not in _ARGS or type(m).__module__.split(".")[0] != "torch":
            continue
        args = {a: _plain(getattr(m, a)) for a in _ARGS[t]}
        rec: dict[str, Any] = {"type": t, "args": args}
        if t.startswith("Conv") or t == "Linear":
            rec["bias"] = m.bias is not None
        out[name] = rec
    return out


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


_MAX = (1 << 31) - 1
#: largest weight (elements) a record may build when no saved weights bound it
MAX_BUILD_ELEMENTS = 1 << 28
_KIND: dict[str, Any] = {
    "in_features": "size", "out_features": "size", "in_channels": "size",
    "out_channels": "size", "num_features": "size", "groups": "pos",
    "kernel_size": "ints", "stride": "ints", "dilation": "ints", "padding": "pad",
    "output_size": "opt_ints", "size": "opt_ints", "eps": "num", "momentum": "opt_num",
    "scale_factor": "opt_nums", "affine": "bool", "track_running_stats": "bool",
    "inplace": "bool", "ceil_mode": "bool", "count_include_pad": "bool",
    "start_dim": "dim", "end_dim": "dim",
    "padding_mode": ("zeros", "reflect", "replicate", "circular"),
    "approximate": ("none", "tanh"),
    "mode": ("nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear", "area"),
}


def _int(v: Any, lo: int = 0, hi: int = _MAX) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and 0 <= v <= 1e4)


def _seq(v: Any, ok: Any) -> bool:
    return isinstance(v, list) and 1 <= len(v) <= 3 and all(ok(x) for x in v)


def _valid(kind: Any, v: Any) -> bool:
    if isinstance(kind, tuple):
        return isinstance(v, str) and v in kind
    return {
        "size": lambda: _int(v), "pos": lambda: _int(v, 1), "dim": lambda: _int(v, -64, 64),
        "bool": lambda: isinstance(v, bool), "num": lambda: _num(v),
        "opt_num": lambda: v is None or _num(v),
        "opt_nums": lambda: v is None or _num(v) or _seq(v, _num),
        "ints": lambda: _int(v) or _seq(v, _int),
        "pad": lambda: _int(v) or _seq(v, _int) or v in ("same", "valid"),
        "opt_ints": lambda: v is None or _int(v) or _seq(v, lambda x: x is None or _int(x)),
    }[kind]()


def check_records(records: Any) -> dict[str, dict[str, Any]]:
    """Validate the ``structure`` field of ``torch_model.json``: module paths, known layer
    types, known argument names with values of the right type and range. ArtifactError names
    the record and field."""
    if not isinstance(records, dict):
        raise ArtifactError(f"field structure: expected an object, got {type(records).__name__}")
    for name, rec in records.items():
        w = f"field structure[{name!r}]"
        if not name or any(not (p.isidentifier() or p.isdigit()) for p in name.split(".")):
            raise ArtifactError(f"{w}: {name!r} is not a module path")
        if not isinstance(rec, dict):
            raise ArtifactError(f"{w}: expected an object, got {type(rec).__name__}")
        t = rec.get("type")
        if not isinstance(t, str) or t not in _ARGS:
            raise ArtifactError(f"{w}.type: layer type {str(t)[:60]!r} cannot be rebuilt (only "
                                f"standard torch.nn layers: {sorted(_ARGS)})")
        extra = sorted(set(rec) - {"type", "args", "bias"})
        if extra:
            raise ArtifactError(f"{w}: unknown key(s) {extra}")
        args = rec.get("args", {})
        if not isinstance(args, dict):
            raise ArtifactError(f"{w}.args: expected an object, got {type(args).__name__}")
        for k, v in args.items():
            if k not in _ARGS[t]:
                raise ArtifactError(f"{w}.args: unknown argument {k!r} for {t} "
                                    f"(known: {list(_ARGS[t])})")
            if not _valid(_KIND[k], v):
                raise ArtifactError(f"{w}.args.{k}: {str(v)[:60]!r} is not a valid value")
        if "bias" in rec and not isinstance(rec["bias"], bool):
            raise ArtifactError(f"{w}.bias: expected true or false")
        needs = [a for a in _ARGS[t] if a.endswith(("features", "channels")) and a not in args]
        if needs:
            raise ArtifactError(f"{w}.args: missing {needs}")
        if t.startswith("Conv"):
            k, g = args.get("kernel_size"), args.get("groups", 1)
            if k is None or isinstance(k, list) and len(k) != int(t[4]):
                raise ArtifactError(f"{w}.args.kernel_size: {k!r} does not fit {t}")
            if args["in_channels"] % g or args["out_channels"] % g:
                raise ArtifactError(f"{w}.args.groups: {g} does not divide the channels")
    return records


def _param_shapes(rec: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shapes of the parameters/buffers the record's layer would allocate."""
    t, a = rec["type"], rec.get("args", {})
    bias = rec.get("bias", True)
    if t == "Linear":
        out = {"weight": (a["out_features"], a["in_features"])}
        return {**out, "bias": (a["out_features"],)} if bias else out
    if t.startswith("Conv"):
        k = a["kernel_size"]
        k = [k] * int(t[4]) if isinstance(k, int) else k
        out = {"weight": (a["out_channels"], a["in_channels"] // a.get("groups", 1), *k)}
        return {**out, "bias": (a["out_channels"],)} if bias else out
    if t.startswith("BatchNorm"):
        n, out = a["num_features"], {}
        if a.get("affine", True):
            out.update(weight=(n,), bias=(n,))
        if a.get("track_running_stats", True):
            out.update(running_mean=(n,), running_var=(n,), num_batches_tracked=())
        return out
    return {}


def _build(name: str, rec: dict[str, Any], shapes: dict[str, tuple[int, ...]] | None) -> Any:
    from torch import nn

    t = rec.get("type")
    if t not in _ARGS:
        raise ArtifactError(f"field structure[{name!r}]: layer type {t!r} cannot be rebuilt")
    for suffix, shape in _param_shapes(rec).items():
        got = None if shapes is None else shapes.get(f"{name}.{suffix}")
        if shapes is not None and (got is None or tuple(got) != shape):
            raise ArtifactError(
                f"field structure[{name!r}]: the record builds a {t} whose {suffix} has shape "
                f"{list(shape)}, but the saved weights hold {list(got) if got else 'none'}; the "
                "structure record does not belong to these weights")
        if shapes is None and math.prod(shape) > MAX_BUILD_ELEMENTS:
            raise ArtifactError(f"field structure[{name!r}]: {t} {suffix} of shape {list(shape)} "
                                f"is larger than {MAX_BUILD_ELEMENTS} elements")
    args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in rec.get("args", {}).items()
            if k in _ARGS[t]}
    if "bias" in rec:
        args["bias"] = bool(rec["bias"])
    try:
        return getattr(nn, t)(**args)
    except Exception as e:  # torch's own argument checks
        raise ArtifactError(f"field structure[{name!r}]: cannot build {t}({args}): {e}") from e


def rebuild_structure(model: Any, records: dict[str, dict[str, Any]],
                      shapes: dict[str, tuple[int, ...]] | None = None) -> int:
    """Replace modules of ``model`` (a private copy) whose type differs from ``records``;
    parents first. ``shapes`` (saved tensor name -> shape) must then hold exactly the shapes a
    rebuilt layer allocates; without it each layer is capped at ``MAX_BUILD_ELEMENTS``.
    Returns how many modules were replaced; ArtifactError on a bad record."""
    check_records(records)
    replaced = 0
    for name in sorted(records, key=lambda n: n.count(".")):
        rec = records[name]
        parent_name, _, attr = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError:
            continue
        cur = getattr(parent, attr, None) if attr in parent._modules else None
        if (cur is not None and type(cur).__name__ == rec.get("type")
                and ("bias" not in rec or (getattr(cur, "bias", None) is not None)
                     == rec["bias"])):
            continue
        layer = _build(name, rec, shapes)
        try:
            parent.add_module(attr, layer)
        except (KeyError, TypeError, AttributeError) as e:
            raise ArtifactError(f"field structure[{name!r}]: cannot place a layer there: {e}") \
                from e
        replaced += 1
    return replaced
