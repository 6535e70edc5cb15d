"""The report's cells and columns, shared by the Markdown/terminal table (``report``) and the
HTML page (``report_html``): headers with units, cell formatting, the Pareto front, the
environment line. Imports nothing of the core, so neither report module imports the other's
internals back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: column -> (header with unit, formatter) for the human-readable table; JSON keeps the keys
_FORMAT: dict[str, tuple[str, Callable[[Any], str]]] = {
    "accuracy": ("accuracy", lambda v: f"{v:.2f}"),
    "accuracy_delta": ("Δ accuracy", lambda v: f"{v:+.2f}"),
    "latency_p50_ms": ("p50 ms", lambda v: f"{v:.3f}"),
    "latency_p95_ms": ("p95 ms", lambda v: f"{v:.3f}"),
    "latency_mean_ms": ("mean ms", lambda v: f"{v:.3f}"),
    "latency_iqr_ms": ("IQR ms", lambda v: f"{v:.3f}"),
    "speedup": ("speedup", lambda v: f"{v:.2f}x"),
    "throughput_per_s": ("samples/s", lambda v: f"{v:,.0f}"),
    "size_mb": ("size MB", lambda v: f"{v:.3f}"),
    "size_ratio": ("smaller", lambda v: f"{v:.2f}x"),
    "params": ("params", lambda v: f"{v:,}"),
    "sparsity": ("sparsity", lambda v: f"{100 * v:.1f}%"),
    "peak_memory_mb": ("peak MB", lambda v: f"{v:.1f}"),
    "peak_rss_mb": ("RSS MB", lambda v: f"{v:.0f}"),
    "rss_growth_mb": ("RSS +MB", lambda v: f"{v:.1f}"),
    "joules_per_inference": ("mJ/inference", lambda v: f"{1e3 * v:.3f}"),
    "avg_watts": ("avg W", lambda v: f"{v:.1f}"),
}



def pareto_indices(xs: list[Any], ys: list[Any], *, maximize_y: bool = True) -> list[int]:
    """Indices ``i`` of the non-dominated points ``(xs[i], ys[i])``: ``x`` is minimised, ``y``
    maximised (or minimised when ``maximize_y`` is False). A point is dominated when another is
    at least as good in both and better in one; equal points are all kept. Entries that are
    not finite numbers (None, NaN, bools, text) are left out."""
    import math
    import numbers

    def ok(v: Any) -> bool:  # numpy scalars count too
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

    sign = 1 if maximize_y else -1
    pts = [(i, float(x), sign * float(y)) for i, (x, y) in enumerate(zip(xs, ys))
           if ok(x) and ok(y)]
    pts.sort(key=lambda p: (p[1], -p[2]))  # by x, best y first among equal x
    front, best_y, best_x = [], -math.inf, math.nan
    for i, x, y in pts:
        # dominated by an earlier point (x' <= x) unless its y beats every earlier one, or it
        # ties the best point exactly
        if y > best_y or (y == best_y and x == best_x):
            if y > best_y:
                best_y, best_x = y, x
            front.append(i)
    return sorted(front)


def header(col: str) -> str:
    """The human header of a column (with its unit)."""
    return _FORMAT[col][0] if col in _FORMAT else col


def fmt(col: str, v: Any) -> str:
    """A cell: fixed decimals and units per column; never scientific notation."""
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if col in _FORMAT:
        return _FORMAT[col][1](v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.4f}".rstrip("0").rstrip(".") if abs(v) < 1e15 else f"{v:.3e}"



def environment_line(env: dict[str, Any]) -> str:
    """One line: CPU, cores, threads, load, key library versions."""
    parts = [str(env.get("cpu", "?"))]
    if env.get("cores"):
        usable = env.get("cores_usable", env["cores"])
        parts.append(f"{env['cores']} cores" if usable == env["cores"]
                     else f"{usable} of {env['cores']} cores usable")
    if env.get("torch_threads"):
        parts.append(f"{env['torch_threads']} torch threads")
    if env.get("load_1min") is not None:
        parts.append(f"load {env['load_1min']}")
    if env.get("cuda"):
        parts.append(str(env["cuda"]))
    versions = env.get("versions", {})
    parts += [f"{k} {v}" for k, v in versions.items()
              if k in ("torch", "onnxruntime", "openvino", "tensorrt", "modelopt-core")]
    return ", ".join(parts)
