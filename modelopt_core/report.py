"""Report: the comparison table of a session's artifacts, as Markdown, JSON, HTML or rich text.

The first row is the baseline; ratios (``speedup``, ``size_ratio``, ``accuracy_delta``) are
computed against it, so figures measured side by side in one run compare fairly. In a lineage
(``Session.compare`` over a history) a step slower or larger than its input, beyond noise, is
flagged (``regression``) and named in a summary line; :meth:`Report.best` picks the best
measured row within an accuracy budget (see :mod:`~modelopt_core.report_rows`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import tables
from .persist import write_text_atomic
from .report_rows import Choice, best_row, flag_regressions, regression_summary
from .tables import environment_line, order_columns, pareto_indices

if TYPE_CHECKING:
    from .interfaces import Column
    from .plugins import PluginManager

__all__ = ["Choice", "Report", "pareto_indices"]

_TEXT = ("step", "format", "backend", "error", "note", "regression", "regression_input")
#: prose that wraps in the terminal table (names and numbers never do)
_WRAPS = ("note", "error", "regression")
#: columns a narrow terminal drops first (the Markdown and JSON reports keep them all); the
#: columns of other profilers go after "avg_watts"; CPU memory stays longer than the details,
#: and longer than the regression marks (the summary line under the table says them too)
_DROP_ORDER = ("format", "rss_growth_mb", "avg_watts", "latency_p95_ms", "params", "sparsity",
               "peak_memory_mb", "throughput_per_s", "regression", "peak_rss_mb", "size_ratio",
               "note", "accuracy_delta", "size_mb")
#: columns a narrow terminal always keeps
_KEEP = ("step", "backend", "accuracy", "latency_p50_ms", "speedup", "joules_per_inference",
         "error")


def declared_columns(plugins: PluginManager | None = None) -> Mapping[str, Any]:
    """The columns the registered profilers declare (``Profiler.columns``), by name: of
    ``plugins``, or of the process-wide plugin manager."""
    from .plugins import get_plugin_manager

    return (plugins or get_plugin_manager()).columns()


def header(col: str, specs: Mapping[str, Any] | None = None) -> str:
    """The human header of a column (with its unit), as its profiler declares it (``specs``:
    default, the registered profilers' columns)."""
    return tables.header(col, declared_columns() if specs is None else specs)


def fmt(col: str, v: Any, specs: Mapping[str, Any] | None = None) -> str:
    """A cell: fixed decimals and units per column as its profiler declares them; never
    scientific notation."""
    return tables.fmt(col, v, declared_columns() if specs is None else specs)


class Report:
    """A table of measurement rows (dicts); the first row is the baseline.

    ``environment`` records what the figures were measured on (see
    :func:`~modelopt_core.environment.describe_environment`); ``notes`` maps a row's step to
    the lineage notes of that step (warnings, fallbacks, what a step did not do). Headers,
    number formats and the column order come from the columns the profilers of ``plugins``
    declare (default: the process-wide plugin manager), so a plugin's metric shows too."""

    def __init__(self, rows: list[dict[str, Any]], title: str = "modelopt comparison",
                 environment: dict[str, Any] | None = None,
                 notes: dict[str, list[str]] | None = None,
                 plugins: PluginManager | None = None,
                 columns: Sequence[Column] = ()) -> None:
        self.title = title
        self.rows = [dict(r) for r in rows]
        self.environment = dict(environment or {})
        self.notes = {k: list(v) for k, v in (notes or {}).items()}
        self._plugins = plugins
        #: columns the caller declares for keys of its own (a search's ``confirmed_p50_ms``):
        #: header, format and order as a profiler's
        self._own = {c.name: c for c in columns}
        self._specs: Mapping[str, Any] | None = None
        self._add_ratios()
        flag_regressions(self.rows, self.cell)

    @property
    def column_specs(self) -> Mapping[str, Any]:
        """The profilers' declared columns (:class:`~modelopt_core.Column`) by name."""
        if self._specs is None:
            self._specs = {**declared_columns(self._plugins), **self._own}
        return self._specs

    def header(self, col: str) -> str:
        """The human header of column ``col`` (with its unit)."""
        return tables.header(col, self.column_specs)

    def cell(self, col: str, v: Any) -> str:
        """The text of value ``v`` in column ``col``."""
        return tables.fmt(col, v, self.column_specs)

    @property
    def regression_summary(self) -> str | None:
        """One line naming each lineage step slower or larger than its input beyond noise
        (the rows flagged in the ``regression`` column), or None when none is."""
        return regression_summary(self.rows)

    def best(self, objective: str = "latency", max_accuracy_drop: float | None = None, *,
             backends: list[str] | None = None) -> Choice | None:
        """The best measured row: lowest p50 (``objective="latency"``), or ``"size"``,
        ``"throughput"``, ``"accuracy"`` or any column a profiler declares with ``better``;
        among the rows without an error (on ``backends``, default all) whose accuracy is
        within ``max_accuracy_drop`` points of the baseline's (None: no budget). Returns a
        :class:`~modelopt_core.report_rows.Choice` (``index``, ``row``, ``step``, ``backend``,
        ``history_index``: ``session.history[history_index]`` is its artifact in a
        ``Session.compare`` report, and ``reason``, one line), or None when no row
        qualifies. See :func:`~modelopt_core.report_rows.best_row` for the errors."""
        return best_row(self.rows, objective, max_accuracy_drop, backends=backends,
                        specs=self.column_specs, cell=self.cell)

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
        """Every scalar column present in any row: the table's columns first, in their
        declared order, then the others alphabetically, ``error`` last."""
        present = {k for r in self.rows for k, v in r.items()
                   if v is None or isinstance(v, (str, int, float, bool))}
        return order_columns(present, self.column_specs)

    @property
    def columns(self) -> list[str]:
        """The headline columns present (the table's default: the report's own and those
        the profilers declare with ``table=True``); JSON keeps every metric."""
        specs = self.column_specs
        return [c for c in self.all_columns
                if c == "error" or getattr(tables.column_spec(c, specs), "table", False)]

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
        """The title, the machine it was measured on (CPU model, cores/threads, ISA
        features), a Markdown table with human headers and fixed decimals, the line naming
        the steps that made things worse, then the lineage notes; written atomically to
        ``path`` when given."""
        cols = columns or self.columns
        lines = [f"### {self.title}", ""]
        if self.environment:  # the machine class first: no figure is read without it
            lines += ["Measured on: " + environment_line(self.environment), ""]
        lines += ["| " + " | ".join(self.header(c) for c in cols) + " |",
                  "|" + "|".join("---" for _ in cols) + "|"]
        for r in self.rows:
            lines.append("| " + " | ".join(_md(self.cell(c, r.get(c))) for c in cols) + " |")
        summary = self.regression_summary
        if summary:
            lines += ["", f"**{summary}**"]
        if any(self.notes.values()):
            lines += ["", "Notes:"]
            lines += [f"- {step}: {n}" for step, ns in self.notes.items() for n in ns]
        text = "\n".join(lines) + "\n"
        if path is not None:
            write_text_atomic(Path(path), text)
        return text

    def to_html(self, path: str | os.PathLike[str] | None = None, *, title: str | None = None,
                pareto: bool = True, **view: Any) -> str:
        """An HTML page that opens offline: the comparison table, Pareto plots of accuracy vs
        p50 latency (``id="pareto-latency"``) and vs size (``id="pareto-size"``), the lineage
        notes per row and the machine description; written atomically to ``path`` when given,
        with plotly.js beside it (``plotly-VERSION.min.js``, shared by the folder's pages;
        ``shared_script=False``, or no ``path``: embedded). ``view`` marks the page: ``best``
        (a row index, starred), ``best_label``, ``accuracy_budget``, ``columns``,
        ``history``, ``summary`` (see :func:`~modelopt_core.report_html.render_html`; default:
        the line naming the steps that made things worse, if any). Raises
        :class:`~modelopt_core.report_html.ReportDependencyError` when plotly is missing."""
        from .report_html import render_html

        view.setdefault("summary", self.regression_summary)
        text = render_html(self, title=title, pareto=pareto, path=path, **view)
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
        otherwise): the machine first, then the table and the steps that made things
        worse."""
        import sys

        cols = columns or self.columns
        out = file or sys.stdout
        if not getattr(out, "isatty", lambda: False)():
            print(self.to_markdown(columns=cols), file=out)
            return
        from rich.console import Console
        from rich.table import Table

        console = Console(file=out, highlight=False)
        cols, hidden = self._fit(cols, console.width)
        if self.environment:
            console.print("measured on: " + environment_line(self.environment),
                          style="dim", markup=False)
        t = Table(title=self.title, header_style="bold")
        for c in cols:
            wraps = c in _WRAPS  # long prose wraps; names and numbers never
            t.add_column(self.header(c), justify="left" if c in _TEXT else "right",
                         no_wrap=not wraps, overflow="fold" if wraps else "ellipsis")
        for r in self.rows:
            t.add_row(*(self.cell(c, r.get(c)) for c in cols))
        console.print(t)
        if hidden:
            console.print(f"({len(hidden)} column(s) hidden to fit {console.width} columns: "
                          f"{', '.join(self.header(c) for c in hidden)}; see the Markdown/JSON "
                          "report)", style="dim", markup=False)
        if self.regression_summary:
            console.print(self.regression_summary, style="bold yellow", markup=False)

    def _fit(self, cols: list[str], width: int) -> tuple[list[str], list[str]]:
        """Drop the least important columns until the table fits ``width`` characters
        (numbers are never wrapped; headers wrap at spaces; text columns wrap)."""

        def need(c: str) -> int:
            cells = [self.cell(c, r.get(c)) for r in self.rows]
            if c in _WRAPS:
                return 15
            if c in _TEXT:
                return min(max([len(x) for x in cells] + [len(c)]), 24) + 3
            return max([len(w) for w in self.header(c).split()] + [len(x) for x in cells]) + 3

        cols, hidden = list(cols), []
        at = _DROP_ORDER.index("avg_watts") + 1  # other profilers' columns after the energy's
        others = tuple(c for c in cols if c not in _DROP_ORDER and c not in _KEEP)
        for c in _DROP_ORDER[:at] + others + _DROP_ORDER[at:]:
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


