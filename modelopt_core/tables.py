"""The report's cells and columns, shared by the Markdown/terminal table (``report``) and the
HTML page (``report_html``): headers with units, cell formatting and column order (from the
report's own columns and the ones the profilers declare), the Pareto front, the environment
line. Imports nothing of the core but the environment's description, so neither
report module imports the other's internals back."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from .environment import cpu_line


class OwnColumn(NamedTuple):
    """One of the report's own columns (not a profiler's metric): what was measured, the
    ratios against the baseline, the note. The profilers' metrics are declared on the profiler
    classes (``Profiler.columns``, :class:`~modelopt_core.Column`)."""

    title: str
    format: Callable[[Any], str] | None
    order: int
    table: bool = True


#: the report's own columns: name -> (header, formatter, place); no profiler may declare these
#: names (``error`` too: always last)
OWN_COLUMNS: dict[str, OwnColumn] = {
    "step": OwnColumn("step", None, 0),
    "format": OwnColumn("format", None, 1),
    "backend": OwnColumn("backend", None, 2),
    "accuracy_delta": OwnColumn("Δ accuracy", lambda v: f"{v:+.2f}", 11),
    "speedup": OwnColumn("speedup", lambda v: f"{v:.2f}x", 22),
    "size_ratio": OwnColumn("smaller", lambda v: f"{v:.2f}x", 41),
    # a lineage step slower or larger than its input (report_rows.flag_regressions)
    "regression": OwnColumn("worse than its input", None, 999),
    "regression_input": OwnColumn("input", None, 1001, table=False),
    "note": OwnColumn("note", None, 1000),
}
RESERVED_COLUMNS = frozenset(OWN_COLUMNS) | {"error"}


def column_spec(col: str, specs: Mapping[str, Any] | None = None) -> Any:
    """The declaration of ``col``: the report's own, else ``specs[col]`` (a profiler's
    :class:`~modelopt_core.Column`: ``title``, ``format``, ``order``, ``table``), else None."""
    return OWN_COLUMNS.get(col) or (specs or {}).get(col)


def order_columns(present: Iterable[str], specs: Mapping[str, Any] | None = None) -> list[str]:
    """Every column of ``present``: those shown by default (declared with ``table``) by their
    declared place, then the others alphabetically, ``error`` last."""
    present = set(present)
    shown = [c for c in present - {"error"} if getattr(column_spec(c, specs), "table", False)]
    first = sorted(shown, key=lambda c: (column_spec(c, specs).order, c))
    return first + sorted(present - set(first) - {"error"}) + \
        (["error"] if "error" in present else [])


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


def header(col: str, specs: Mapping[str, Any] | None = None) -> str:
    """The human header of a column (with its unit), from its declaration (``specs``)."""
    spec = column_spec(col, specs)
    return spec.title if spec is not None else col


def fmt(col: str, v: Any, specs: Mapping[str, Any] | None = None) -> str:
    """A cell: the declared format of numbers (``specs``), else fixed decimals; never
    scientific notation."""
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    f = getattr(column_spec(col, specs), "format", None)
    if f is not None:
        return f(v) if callable(f) else f.format(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.4f}".rstrip("0").rstrip(".") if abs(v) < 1e15 else f"{v:.3e}"


def environment_line(env: dict[str, Any]) -> str:
    """One line: the machine class (CPU model, cores/threads, the ISA features that decide
    INT8/BF16 speed: :func:`~modelopt_core.environment.cpu_line`), torch threads, load, key
    library versions."""
    parts = [cpu_line(env)]
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
