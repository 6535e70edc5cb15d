"""Module-tree records so torch artifacts whose layers were replaced (low-rank factors,
depthwise-separable pairs, folded BatchNorm) reload into the original class.

Saving records every standard layer's type and constructor arguments (never code). Loading
starts from the user's skeleton and replaces each module whose type differs from the record
with one built from the record; only the standard ``torch.nn`` layers listed here are built,
so a manifest cannot make the loader construct anything else.
"""

from __future__ import annotations

from typing import Any

__all__ = ["record_structure", "rebuild_structure"]

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


def _build(rec: dict[str, Any]) -> Any:
    from torch import nn

    t = rec.get("type")
    if t not in _ARGS:
        raise ValueError(f"layer type {t!r} cannot be rebuilt")
    args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in rec.get("args", {}).items()
            if k in _ARGS[t]}
    if "bias" in rec:
        args["bias"] = bool(rec["bias"])
    return getattr(nn, t)(**args)


def rebuild_structure(model: Any, records: dict[str, dict[str, Any]]) -> int:
    """Replace modules of ``model`` (a private copy) whose type differs from ``records``;
    parents first. Returns how many modules were replaced."""
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
                and ("bias" not in rec or (cur.bias is not None) == rec["bias"])):
            continue
        parent.add_module(attr, _build(rec))
        replaced += 1
    return replaced
