"""Optimization profiles of the ``tensorrt`` plugin: the min / opt / max shapes a build gives
every symbolic dim of the inputs (see :mod:`.engine`'s docstring), and the runner's check that
an input lies inside the engine's profile."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import modelopt_core as mo


def profile_shapes(net_inputs: Sequence[tuple[str, Sequence[int]]],
                   specs: Sequence[mo.TensorSpec], example_inputs: Sequence[Any],
                   cfg: Any) -> dict[str, dict[str, list[int]]]:
    """``{input: {"min": shape, "opt": shape, "max": shape}}`` for the network's inputs
    (``(name, dims)`` with -1 for dynamic dims) under ``cfg`` (a
    :class:`~.engine.TrtBuildConfig`), see :mod:`.engine`'s docstring. ConfigError for a
    profile key that names no symbolic dim, or a dim whose min <= opt <= max fails."""
    by_name = {s.name: (i, s) for i, s in enumerate(specs)}
    given = {k: dict(getattr(cfg, f"profile_{k}") or {}) for k in ("min", "opt", "max")}
    seen: dict[str, tuple[int, int, int]] = {}
    out: dict[str, dict[str, list[int]]] = {}
    for idx, (name, dims) in enumerate(net_inputs):
        i, spec = by_name.get(name, (idx, specs[idx] if idx < len(specs) else None))
        ex = example_inputs[i] if i < len(example_inputs) else None
        shapes: dict[str, list[int]] = {"min": [], "opt": [], "max": []}
        for j, d in enumerate(dims):
            if d >= 0:
                lo = opt = hi = int(d)
            else:
                sym = spec.shape[j] if spec is not None and j < len(spec.shape) else None
                sym = sym if isinstance(sym, str) else f"{name}_dim{j}"
                size = (int(ex.shape[j]) if ex is not None and j < ex.dim() else 1)
                base = ((cfg.min_batch, cfg.opt_batch, cfg.max_batch) if sym == "batch"
                        else (size, size, size))
                lo, opt, hi = (given[k].get(sym, b) for k, b in zip(("min", "opt", "max"),
                                                                    base))
                if sym not in given["opt"] and sym != "batch":
                    opt = min(max(opt, lo), hi)  # the example size, inside a given range
                if not 1 <= lo <= opt <= hi:
                    raise mo.ConfigError(
                        f"tensorrt: optimization profile of dim {sym!r} (input {name!r}, dim "
                        f"{j}) needs 1 <= min <= opt <= max, got min={lo}, opt={opt}, max={hi}; "
                        "set profile_min / profile_opt / profile_max (batch: min_batch / "
                        "opt_batch / max_batch).")
                if seen.setdefault(sym, (lo, opt, hi)) != (lo, opt, hi):
                    raise mo.ConfigError(f"tensorrt: dim {sym!r} is shared by several inputs "
                                         "but got different profile ranges.")
            shapes["min"].append(lo)
            shapes["opt"].append(opt)
            shapes["max"].append(hi)
        out[name] = shapes
    unknown = sorted({k for g in given.values() for k in g} - set(seen))
    if unknown:
        raise mo.ConfigError(f"tensorrt: profile dims {unknown} are not symbolic dims of the "
                             f"model's inputs (those are: {sorted(seen) or 'none'}).")
    return out


def check_profile(p: dict[str, list[int]] | None, name: str, shape: tuple[int, ...]) -> None:
    """InputSpecError when ``shape`` lies outside the engine's optimization profile ``p``."""
    if not p:
        return
    for j, (d, lo, hi) in enumerate(zip(shape, p["min"], p["max"])):
        if not lo <= d <= hi:
            raise mo.InputSpecError(
                f"tensorrt: input {name!r} dim {j} is {d}, outside the engine's optimization "
                f"profile [{lo}, {hi}] (min {p['min']}, max {p['max']}); rebuild the engine "
                "with a wider range (min_batch / max_batch, profile_min / profile_max).")
