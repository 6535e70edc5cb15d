"""Report: the comparison table of a session's artifacts, as Markdown, JSON, HTML or rich text.

The first row is the baseline; ratios (``speedup``, ``size_ratio``, ``accuracy_delta``) are
computed against it, so figures measured side by side in one run compare fairly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .persist import write_text_atomic
from .tables import _FORMAT, environment_line, fmt, header, pareto_indices  # noqa: F401

__all__ = ["Report", "pareto_indices"]

#: preferred column order; other metrics follow alphabetically
COLUMNS = ("step", "format", "backend", "accuracy", "accuracy_delta", "latency_p50_ms",
           "latency_p95_ms", "speedup", "throughput_per_s", "size_mb", "size_ratio",
           "params", "sparsity", "peak_memory_mb", "peak_rss_mb", "rss_growth_mb",
           "joules_per_inference", "avg_watts", "note")

_TEXT = ("step", "format", "backend", "error", "note")
#: columns a narrow terminal drops first (the Markdown and JSON reports keep them all)
_DROP_ORDER = ("format", "peak_rss_mb", "rss_growth_mb", "avg_watts", "latency_p95_ms", "params",
               "sparsity", "peak_memory_mb",
               "throughput_per_s", "size_ratio", "note", "accuracy_delta", "size_mb")


class Report:
    """A table of measurement rows (dicts); the first row is the baseline.

    ``environment`` records what the figures were measured on (see
    :func:`~modelopt_core.environment.describe_environment`); ``notes`` maps a row's step to
    the lineage notes of that step (warnings, fallbacks, what a step did not do)."""

    def __init__(self, rows: list[dict[str, Any]], title: str = "modelopt comparison",
                 environment: dict[str, Any] | None = None,
                 notes: dict[str, list[str]] | None = None) -> None:
        self.title = title
        self.rows = [dict(r) for r in rows]
        self.environment = dict(environment or {})
        self.notes = {k: list(v) for k, v in (notes or {}).items()}
        self._add_ratios()

    def _add_ratios(self) -> None:
        if not self.rows:
            return
        base = self.rows[0]
        for r in self.rows:
            if _num(base.get("latency_p50_ms")) and _num(r.get("latency_p50_ms")):
                r["speedup"] = round(base["latency_p50_ms"] / r["latency_p50_ms"], 3)
            if _num(base.get("size_mb")) and _num(r.get("size_mb")):
                r["size_ratio"] = round(base["size_mb"] / r["size_mb"], 3)
            if _num(base.get("accuracy"), zero_ok=True) and _num(r.get("accuracy"), zero_ok=True):
                r["accuracy_delta"] = round(r["accuracy"] - base["accuracy"], 6)

    @property
    def all_columns(self) -> list[str]:
        """Every scalar column present in any row: the preferred ones first."""
        present = {k for r in self.rows for k, v in r.items()
                   if v is None or isinstance(v, (str, int, float, bool))}
        first = [c for c in COLUMNS if c in present]
        return first + sorted(present - set(first) - {"error"}) + \
            (["error"] if "error" in present else [])

    @property
    def columns(self) -> list[str]:
        """The headline columns present (the table's default); JSON keeps every metric."""
        return [c for c in self.all_columns if c in COLUMNS or c == "error"]

    def to_dict(self) -> dict[str, Any]:
        """Plain data: title, columns, rows, lineage notes, environment."""
        return {"title": self.title, "columns": self.all_columns, "rows": self.rows,
                "notes": self.notes, "environment": self.environment}

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """JSON text; written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, default=str)
        if path is not None:
            write_text_atomic(Path(path), text)
        return text

    def to_markdown(self, path: str | os.PathLike[str] | None = None,
                    columns: list[str] | None = None) -> str:
        """A Markdown table with human headers and fixed decimals, then the lineage notes and
        the environment; written atomically to ``path`` when given."""
        cols = columns or self.columns
        lines = [f"### {self.title}", "", "| " + " | ".join(header(c) for c in cols) + " |",
                 "|" + "|".join("---" for _ in cols) + "|"]
        for r in self.rows:
            lines.append("| " + " | ".join(_md(fmt(c, r.get(c))) for c in cols) + " |")
        if any(self.notes.values()):
            lines += ["", "Notes:"]
            lines += [f"- {step}: {n}" for step, ns in self.notes.items() for n in ns]
        if self.environment:
            lines += ["", "Measured on: " + environment_line(self.environment)]
        text = "\n".join(lines) + "\n"
        if path is not None:
            write_text_atomic(Path(path), text)
        return text

    def to_html(self, path: str | os.PathLike[str] | None = None, *, title: str | None = None,
                pareto: bool = True) -> str:
        """A self-contained HTML page (plotly.js embedded: opens offline): the comparison
        table, Pareto plots of accuracy vs p50 latency (``id="pareto-latency"``) and vs size
        (``id="pareto-size"``), the lineage notes per row and the machine description; written
        atomically to ``path`` when given. Raises
        :class:`~modelopt_core.report_html.ReportDependencyError` when plotly is missing."""
        from .report_html import render_html

        text = render_html(self, title=title, pareto=pareto)
        if path is not None:
            write_text_atomic(Path(path), text)
        return text

    def pareto_front(self, x: str = "latency_p50_ms", y: str = "accuracy", *,
                     maximize_y: bool = True) -> list[int]:
        """Indices of the rows on the Pareto front of columns ``x`` (minimised) and ``y``
        (maximised, or minimised with ``maximize_y=False``); rows lacking either are left
        out. Sorted by index."""
        return pareto_indices([r.get(x) for r in self.rows], [r.get(y) for r in self.rows],
                              maximize_y=maximize_y)

    def print(self, columns: list[str] | None = None, file: Any = None) -> None:
        """Print the table to the terminal (rich on a terminal, fitted to its width; Markdown
        otherwise)."""
        import sys

        cols = columns or self.columns
        out = file or sys.stdout
        if not getattr(out, "isatty", lambda: False)():
            print(self.to_markdown(columns=cols), file=out)
            return
        from rich.console import Console
        from rich.table import Table

        console = Console(file=out)
        cols, hidden = self._fit(cols, console.width)
        t = Table(title=self.title, header_style="bold")
        for c in cols:
            wraps = c in ("note", "error")  # long prose wraps; names and numbers never
            t.add_column(header(c), justify="left" if c in _TEXT else "right",
                         no_wrap=not wraps, overflow="fold" if wraps else "ellipsis")
        for r in self.rows:
            t.add_row(*(fmt(c, r.get(c)) for c in cols))
        console.print(t)
        if hidden:
            console.print(f"({len(hidden)} column(s) hidden to fit {console.width} columns: "
                          f"{', '.join(header(c) for c in hidden)}; see the Markdown/JSON "
                          "report)", style="dim", markup=False)
        if self.environment:
            console.print("measured on: " + environment_line(self.environment),
                          style="dim", markup=False)

    def _fit(self, cols: list[str], width: int) -> tuple[list[str], list[str]]:
        """Drop the least important columns until the table fits ``width`` characters
        (numbers are never wrapped; headers wrap at spaces; text columns wrap)."""

        def need(c: str) -> int:
            cells = [fmt(c, r.get(c)) for r in self.rows]
            if c in ("note", "error"):
                return 15
            if c in _TEXT:
                return min(max([len(x) for x in cells] + [len(c)]), 24) + 3
            return max([len(w) for w in header(c).split()] + [len(x) for x in cells]) + 3

        cols, hidden = list(cols), []
        for c in _DROP_ORDER:
            if sum(need(x) for x in cols) + 1 <= width:
                break
            if c in cols:
                cols.remove(c)
                hidden.append(c)
        return cols, hidden

    def __str__(self) -> str:
        return self.to_markdown()


def _num(v: Any, zero_ok: bool = False) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (zero_ok or v > 0)


def _md(cell: str) -> str:
    return cell.replace("|", "\\|")


