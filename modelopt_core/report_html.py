"""The HTML form of a :class:`~modelopt_core.report.Report`: one self-contained file.

The page holds the comparison table (the same headers and number formats as the Markdown
report), interactive Pareto plots made with plotly (accuracy vs p50 latency, accuracy vs size;
size vs latency when no row has an accuracy), the lineage of every row and the machine the
figures were measured on. plotly.js is embedded in the file, so it opens offline and fetches
nothing. plotly is imported only when a page is rendered.
"""

from __future__ import annotations

import html
import json
from typing import Any

from .errors import ModeloptError
from .tables import environment_line, pareto_indices

__all__ = ["PLOT_IDS", "ReportDependencyError", "render_html"]

#: the element ids of the plot divs (stable: tests and users look them up)
PLOT_IDS = {"latency": "pareto-latency", "size": "pareto-size",
            "latency-size": "pareto-latency-size"}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.front td { background: #eef7ee; }
.skipped { color: #666; font-style: italic; }
.plot { width: 100%; max-width: 1000px; height: 480px; }
code { background: #f6f6f6; padding: 1px 3px; }
"""


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


def render_html(report: Any, title: str | None = None, pareto: bool = True) -> str:
    """The full HTML page of ``report`` (see the module docstring)."""
    go, offline = _plotly()
    title = title or report.title
    esc = html.escape
    cols = report.columns
    front_rows: set[int] = set()
    plots: list[str] = []
    if pareto:
        plots, front_rows = _pareto_section(report, go)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>", f"<style>{_CSS}</style>",
        # plotly.js inline (no network): the plot divs below call Plotly.newPlot
        f'<script type="text/javascript">{offline.get_plotlyjs()}</script>',
        "</head><body>", f"<h1>{esc(title)}</h1>",
        '<h2>Comparison</h2><table id="comparison"><thead><tr>',
        "".join(f"<th>{esc(report.header(c))}</th>" for c in cols), "</tr></thead><tbody>",
    ]
    for i, r in enumerate(report.rows):
        cells = "".join(f'<td class="{"num" if _is_num(r.get(c)) else "text"}">'
                        f"{esc(report.cell(c, r.get(c)))}</td>" for c in cols)
        cls = ' class="front"' if i in front_rows else ""
        parts.append(f"<tr{cls}>{cells}</tr>")
    parts.append("</tbody></table>")
    if front_rows:
        parts.append('<p class="legend">Shaded rows lie on a Pareto front below.</p>')
    if pareto:
        parts += ['<h2>Pareto fronts</h2><div id="pareto">', *plots, "</div>"]
    parts += _lineage_section(report)
    parts += _environment_section(report.environment)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _pareto_section(report: Any, go: Any) -> tuple[list[str], set[int]]:
    has = {c: any(_is_num(r.get(c)) for r in report.rows)
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
        out.append(_plot(report, go, key, x, y, front, maximize_y))
    if not specs:
        out.append('<p class="skipped" id="pareto-skipped">Nothing to plot: the rows have '
                   "neither accuracy nor both latency and size.</p>")
    return out, front_rows


def _hover(report: Any, r: dict[str, Any]) -> str:
    cols = [c for c in report.columns if r.get(c) is not None and c not in ("note", "error")]
    return "<br>".join(f"<b>{html.escape(report.header(c))}</b>: "
                       f"{html.escape(report.cell(c, r[c]))}" for c in cols)


def _plot(report: Any, go: Any, key: str, x: str, y: str, front: list[int],
          maximize_y: bool) -> str:
    idx = [i for i, r in enumerate(report.rows) if _is_num(r.get(x)) and _is_num(r.get(y))]
    rows = report.rows
    label = [f"{rows[i].get('step', i)} / {rows[i].get('backend', '?')}" for i in idx]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[rows[i][x] for i in idx], y=[rows[i][y] for i in idx], mode="markers+text",
        text=label, textposition="top center", name="measured", cliponaxis=False,
        marker={"size": 9, "color": "#9aa4b1"}, hovertext=[_hover(report, rows[i]) for i in idx],
        hoverinfo="text"))
    ordered = sorted(front, key=lambda i: rows[i][x])
    fig.add_trace(go.Scatter(
        x=[rows[i][x] for i in ordered], y=[rows[i][y] for i in ordered], mode="lines+markers",
        name="Pareto front", line={"color": "#1f77b4", "shape": "hv" if maximize_y else "linear"},
        marker={"size": 13, "color": "#1f77b4", "symbol": "diamond"},
        hovertext=[_hover(report, rows[i]) for i in ordered], hoverinfo="text"))
    xs = [rows[i][x] for i in idx if rows[i][x] > 0]
    log_x = bool(xs) and max(xs) / min(xs) > 20  # latencies spanning decades read better
    better = "higher is better" if maximize_y else "lower is better"
    hx, hy = report.header(x), report.header(y)
    fig.update_layout(
        title=f"{hy} vs {hx} (lower {hx} is better, {hy}: {better})",
        xaxis={"title": {"text": hx}, "type": "log" if log_x else "linear"},
        yaxis={"title": {"text": hy}}, template="plotly_white",
        margin={"l": 60, "r": 20, "t": 60, "b": 50}, legend={"orientation": "h"})
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=PLOT_IDS[key],
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
