"""The HTML form of a :class:`~modelopt_core.report.Report`: one page that opens offline.

The page holds a summary line, the comparison table (the same headers and number formats as
the Markdown report; the chosen best row starred, the rows on a Pareto front shaded, a noisy
timing marked), interactive Pareto plots made with plotly (accuracy vs p50 latency, accuracy
vs size; size vs latency when no row has an accuracy: see :mod:`.report_plots`), the trial
history of a search, the lineage of every row and the machine the figures were measured on.

plotly.js (4.6 MB) is written once beside a page written to a file (``plotly-VERSION.min.js``,
shared by every page of the folder: the page stays small and still fetches nothing from the
network), or embedded in the page when there is no folder (``shared_script=False``, or no
path). plotly is imported only when a page is rendered.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from .errors import ModeloptError
from .report_plots import PLOT_IDS, View, history_figure, is_num, pareto_figure
from .tables import environment_line, pareto_indices

__all__ = ["PLOT_IDS", "ReportDependencyError", "render_html", "script_name"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.table-wrap { overflow-x: auto; max-width: 100%; }
td.num { white-space: nowrap; } td.text { max-width: 32em; overflow-wrap: break-word; }
td.long { min-width: 14em; }
tr.front td { background: #eef7ee; }
tr.best td { background: #fff4c7; font-weight: 600; } tr.best td:first-child { border-left: 4px solid #f2b701; }
.star { color: #b58900; } .noisy { color: #b35900; cursor: help; }
#summary { font-size: 1.05em; padding: 6px 10px; background: #fff9e0; border-left: 4px solid #f2b701; }
.skipped { color: #666; font-style: italic; } .legend { color: #444; font-size: 0.9em; }
.plot { width: 100%; max-width: 1000px; height: 480px; }
code { background: #f6f6f6; padding: 1px 3px; }
"""
#: the mark a noisy timing gets in the table
NOISY = "~"


class ReportDependencyError(ModeloptError, ImportError):
    """A library the HTML report needs (plotly) is not installed."""


def _plotly() -> tuple[Any, Any]:
    try:
        import plotly.graph_objects as go
        import plotly.offline
    except ImportError as e:
        raise ReportDependencyError(
            f"Report.to_html needs plotly ({e}). Install it with: pip install \"plotly>=5.20\" "
            "(or reinstall modelopt-core, which depends on it). The Markdown and JSON "
            "reports need nothing more.") from e
    return go, plotly.offline


def script_name() -> str:
    """The name of plotly.js beside a page: ``plotly-VERSION.min.js`` (pages written by
    different plotly versions do not overwrite each other's)."""
    _, offline = _plotly()
    return f"plotly-{offline.get_plotlyjs_version()}.min.js"


def _script(offline: Any, folder: Path | None) -> list[str]:
    """plotly.js for the page: written to ``folder`` (once: kept when it is already there
    whole) and loaded from beside the page, or inline without a folder. A page opened without
    its script says so in place of the plots."""
    if folder is None:
        return [f'<script type="text/javascript">{offline.get_plotlyjs()}</script>']
    from .persist import write_text_atomic

    name = script_name()
    js = offline.get_plotlyjs()
    target = folder / name
    if not target.is_file() or target.stat().st_size != len(js.encode()):
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(target, js)
    return [f'<script type="text/javascript" src="{html.escape(name)}"></script>']


def render_html(report: Any, title: str | None = None, pareto: bool = True, *,
                path: str | os.PathLike[str] | None = None, shared_script: bool = True,
                columns: list[str] | None = None, best: int | None = None,
                best_label: str = "best", best_note: str | dict[str, str] | None = None,
                accuracy_budget: float | None = None, history: dict[str, Any] | None = None,
                summary: str | None = None) -> str:
    """The full HTML page of ``report`` (see the module docstring). ``path``: where the page
    will be written (plotly.js goes beside it unless ``shared_script`` is False);
    ``columns``: the table's (default ``report.columns``); ``best``: the index of the chosen
    row (starred in the table and on every plot, called ``best_label``; ``best_note`` says
    why when it is not on a plotted front: one line, or one per x column); ``accuracy_budget``: the largest accuracy drop
    from the first row allowed (a budget line, the infeasible region, the accuracy axes fitted
    to the points that matter); ``history``: a trial-history plot (``{"x": "trial", "y":
    "objective", "title": ..., "ok": "feasible"}``); ``summary``: a line above the table."""
    go, offline = _plotly()
    view = _view(report, columns, best, best_label, best_note, accuracy_budget, history,
                 summary)
    title = title or report.title
    esc = html.escape
    front_rows: set[int] = set()
    plots: list[str] = []
    if pareto:
        plots, front_rows = _pareto_section(report, go, view)
    folder = Path(path).parent if path is not None and shared_script else None
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(title)}</title>", f"<style>{_CSS}</style>",
             *_script(offline, folder), "</head><body>", f"<h1>{esc(title)}</h1>"]
    if view.summary:
        parts.append(f'<p id="summary">{esc(view.summary)}</p>')
    parts += _table(report, view, front_rows)
    if pareto:
        parts += ['<h2>Pareto fronts</h2><div id="pareto">', *plots, "</div>"]
        parts += _history_section(report, go, view)
        if folder is not None:
            parts.append(_missing_script_note())
    parts += _lineage_section(report)
    parts += _environment_section(report.environment)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _view(report: Any, columns: list[str] | None, best: int | None, best_label: str,
          best_note: str | dict[str, str] | None, budget: float | None, history: dict[str, Any] | None,
          summary: str | None) -> View:
    base = report.rows[0].get("accuracy") if report.rows else None
    floor = base - budget if budget is not None and is_num(base) else None
    if best is not None and not 0 <= best < len(report.rows):
        best = None
    return View(columns=list(columns or report.columns), best=best, best_label=best_label,
                best_note=best_note, budget=budget if floor is not None else None,
                floor=floor, history=history, summary=summary)


def _missing_script_note() -> str:
    """A line shown in place of the plots when plotly.js is not beside the page."""
    name = html.escape(script_name())
    return (f'<p id="plotly-missing" class="skipped" style="display:none">The plots need '
            f"<code>{name}</code> beside this page (it was written there with it); the tables "
            "above do not.</p><script>if (!window.Plotly) { document.getElementById("
            "'plotly-missing').style.display = 'block'; }</script>")


def _table(report: Any, view: View, front_rows: set[int]) -> list[str]:
    """The comparison table: the best row starred, Pareto rows shaded, noisy timings
    marked; a legend line for each mark used."""
    esc = html.escape
    cols = view.columns
    parts = ['<h2>Comparison</h2><div class="table-wrap"><table id="comparison"><thead><tr>',
             "".join(f"<th>{esc(report.header(c))}</th>" for c in cols), "</tr></thead><tbody>"]
    noisy = False
    for i, r in enumerate(report.rows):
        cells = []
        for k, c in enumerate(cols):
            text = esc(report.cell(c, r.get(c)))
            kind = "num" if is_num(r.get(c)) else "text long" if len(text) > 40 else "text"
            if k == 0 and i == view.best:
                text = f'<span class="star" title="{esc(view.best_label)}">★</span> {text}'
            if r.get("latency_noisy") and c in ("latency_p50_ms", "latency_p95_ms") and text:
                noisy = True
                text += f' <span class="noisy" title="{esc(_noise_title(r))}">{NOISY}</span>'
            cells.append(f'<td class="{kind}">{text}</td>')
        cls = " ".join(n for n, on in (("front", i in front_rows), ("best", i == view.best))
                       if on)
        attr = f' class="{cls}"' if cls else ""
        parts.append(f"<tr{attr}>{''.join(cells)}</tr>")
    parts.append("</tbody></table></div>")
    legend = []
    if view.best is not None:
        legend.append(f"★ {esc(view.best_label)}: the chosen row (a star on the plots).")
    if front_rows:
        legend.append("Shaded rows lie on a Pareto front below.")
    if noisy:
        legend.append(f"{NOISY}: a noisy timing (the machine was busy while it was timed: "
                      "its interquartile range is wide; hover for it).")
    if legend:
        parts.append(f'<p class="legend">{" ".join(legend)}</p>')
    return parts


def _noise_title(r: dict[str, Any]) -> str:
    iqr, p50 = r.get("latency_iqr_ms"), r.get("latency_p50_ms")
    if is_num(iqr) and is_num(p50) and p50 > 0:
        return (f"noisy: interquartile range {iqr:.3g} ms, {100 * iqr / p50:.0f}% of the "
                "median; the machine was busy while it was timed")
    return "noisy: the machine was busy while it was timed"


def _pareto_section(report: Any, go: Any, view: View) -> tuple[list[str], set[int]]:
    has = {c: any(is_num(r.get(c)) for r in report.rows)
           for c in ("accuracy", "latency_p50_ms", "size_mb")}
    out: list[str] = []
    front_rows: set[int] = set()
    if has["accuracy"]:
        specs = [("latency", "latency_p50_ms", "accuracy", True),
                 ("size", "size_mb", "accuracy", True)]
    elif has["latency_p50_ms"] and has["size_mb"]:
        specs = [("latency-size", "latency_p50_ms", "size_mb", False)]
        out.append('<p class="skipped" id="pareto-accuracy-skipped">No row has an accuracy '
                   "(give the Session an eval_fn and profile \"accuracy\"): showing size vs "
                   "latency instead.</p>")
    else:
        specs = []
    for key, x, y, maximize_y in specs:
        if not has[x]:
            out.append(f'<p class="skipped" id="{PLOT_IDS[key]}-skipped">No {report.header(x)} '
                       f"measured: no {report.header(y)} vs {report.header(x)} plot.</p>")
            continue
        front = pareto_indices([r.get(x) for r in report.rows], [r.get(y) for r in report.rows],
                               maximize_y=maximize_y)
        front_rows.update(front)
        fig = pareto_figure(go, report, view, x, y, front, maximize_y)
        out.append(_div(fig, PLOT_IDS[key]))
        out += _off_front(report, view, front, x, y, PLOT_IDS[key])
    if not specs:
        out.append('<p class="skipped" id="pareto-skipped">Nothing to plot: the rows have '
                   "neither accuracy nor both latency and size.</p>")
    return out, front_rows


def _off_front(report: Any, view: View, front: list[int], x: str, y: str,
               pid: str) -> list[str]:
    """A line under a plot whose front misses the chosen row, saying why (``best_note``)."""
    r = report.rows[view.best] if view.best is not None else {}
    if view.best is None or view.best in front or not (is_num(r.get(x)) and is_num(r.get(y))):
        return []
    note = view.best_note
    why = note.get(x) if isinstance(note, dict) else note
    why = why or "it was chosen by another measure than these two"
    return [(f'<p class="legend" id="{pid}-best-note">★ {html.escape(view.best_label)} is not '
            f"on this front: {html.escape(why)}.</p>")]


def _history_section(report: Any, go: Any, view: View) -> list[str]:
    if view.history is None:
        return []
    fig = history_figure(go, report, view)
    if fig is None:
        return [('<h2>Trial history</h2><p class="skipped" id="trial-history-skipped">Fewer '
                "than two trials measured: no history to plot.</p>")]
    return ["<h2>Trial history</h2>", _div(fig, PLOT_IDS["history"])]


def _div(fig: Any, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       default_width="100%", default_height="480px",
                       config={"displaylogo": False, "responsive": True})


def _plain(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _lineage_section(report: Any) -> list[str]:
    esc = html.escape
    out = ['<h2>Lineage</h2><ul id="lineage">']
    used: set[str] = set()
    for r in report.rows:
        step = str(r.get("step", "?"))
        backend = str(r.get("backend", "?"))
        keys = [k for k in report.notes if k in (step, f"{step} on {backend}")]
        used.update(keys)
        items = [f"<li><b>{c}</b>: <code>{esc(_plain(r[c]))}</code></li>"
                 for c in ("recipe", "lineage") if r.get(c) not in (None, "", [], {})]
        if r.get("note"):
            items.append(f"<li>note: {esc(str(r['note']))}</li>")
        items += [f"<li>{esc(k)}: {esc(n)}</li>" for k in keys for n in report.notes[k]]
        body = f"<ul>{''.join(items)}</ul>" if items else ""
        fmt_ = f" ({esc(str(r['format']))})" if r.get("format") else ""
        out.append(f"<li><b>{esc(step)}</b> on {esc(backend)}{fmt_}{body}</li>")
    out.append("</ul>")
    rest = [(k, n) for k, ns in report.notes.items() if k not in used for n in ns]
    if rest:
        out.append('<h3>Other notes</h3><ul id="notes">'
                   + "".join(f"<li>{esc(k)}: {esc(n)}</li>" for k, n in rest) + "</ul>")
    return out


def _environment_section(env: dict[str, Any]) -> list[str]:
    if not env:
        empty = '<p id="environment" class="skipped">No environment recorded.</p>'
        return ["<h2>Measured on</h2>", empty]
    esc = html.escape
    rows = [(k, _plain(v)) for k, v in env.items() if k != "versions"]
    rows += [(f"{k} version", str(v)) for k, v in env.get("versions", {}).items()]
    return ['<h2>Measured on</h2><div id="environment">',
            f"<p>{esc(environment_line(env))}</p><table>",
            *(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows),
            "</table></div>"]
