"""The plots of the HTML report (:mod:`.report_html`), made with plotly (``go``:
``plotly.graph_objects``, passed in: this module imports no plotting library itself).

No text sits on the points (labels overlap in clusters): each point says what it is on hover,
the legend names its backend, and one annotation marks the chosen best (a star). An accuracy
axis is fitted to the points that matter (those within reach of the accuracy budget, or near
the most accurate point; a button shows all points), with the budget as a line and the region
below it (infeasible) shaded; a latency axis has a linear/log toggle. The trial history plots
the objective over trials with the best so far.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

#: the element ids of the plot divs (stable: tests and users look them up)
PLOT_IDS = {"latency": "pareto-latency", "size": "pareto-size",
            "latency-size": "pareto-latency-size", "history": "trial-history"}
#: a colour per backend, in order of first appearance (the Pareto front is drawn in FRONT)
PALETTE = ("#9467bd", "#ff7f0e", "#2ca02c", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22", "#d62728")
FRONT = "#1f77b4"
STAR = "#f2b701"
#: without an accuracy budget, the points that matter are within this share of the best
#: accuracy (an unrecovered intermediate step far below them stretches the axis otherwise)
NEAR_BEST = 0.05


class View(NamedTuple):
    """What the page marks: the table's columns, the chosen row (``best``, shown with
    ``best_label``; ``best_note`` says why it is not on a plotted front when it is not: one line,
    or one per x column), the
    accuracy floor (the first row's accuracy less the budget), the trial history (a dict:
    ``x``, ``y``, ``title``, ``ok``) and a summary line."""

    columns: list[str]
    best: int | None = None
    best_label: str = "best"
    best_note: str | dict[str, str] | None = None
    budget: float | None = None
    floor: float | None = None
    history: dict[str, Any] | None = None
    summary: str | None = None


def is_num(v: Any) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def hover(report: Any, view: View, i: int) -> str:
    """The hover text of row ``i``: the table's cells (HTML-escaped)."""
    import html

    r = report.rows[i]
    cols = [c for c in view.columns if r.get(c) not in (None, "") and c not in ("note", "error")]
    lines = [f"<b>{html.escape(report.header(c))}</b>: {html.escape(report.cell(c, r[c]))}"
             for c in cols]
    if r.get("latency_noisy"):
        lines.append("<b>noisy</b>: the machine was busy while it was timed")
    if i == view.best:
        lines.insert(0, f"<b>★ {html.escape(view.best_label)}</b>")
    return "<br>".join(lines)


def fitted_range(ys: list[float], floor: float | None,
                 budget: float | None) -> tuple[float, float] | None:
    """The accuracy range that shows the points that matter, or None when every point does:
    with a budget, the points at most one more budget below the floor (and the floor itself);
    without one, the points within NEAR_BEST of the best."""
    if len(ys) < 2:
        return None
    if floor is not None and budget is not None:
        cut = floor - max(budget, 1e-9)
    else:
        cut = max(ys) - NEAR_BEST * abs(max(ys))
    keep = [y for y in ys if y >= cut]
    if len(keep) == len(ys) or not keep:
        return None
    lo, hi = min(keep + ([floor] if floor is not None else [])), max(keep)
    pad = max(hi - lo, abs(hi) * 1e-3, 1e-6) * 0.12
    return lo - pad, hi + pad


def _traces(go: Any, report: Any, view: View, idx: list[int], x: str, y: str) -> list[Any]:
    """One marker trace per backend (noisy rows drawn open), no text on the points."""
    rows = report.rows
    backends: list[str] = []
    for i in idx:
        b = str(rows[i].get("backend", "?"))
        if b not in backends:
            backends.append(b)
    out = []
    for k, b in enumerate(backends):
        mine = sorted((i for i in idx if str(rows[i].get("backend", "?")) == b),
                      key=lambda i: bool(rows[i].get("latency_noisy")))  # legend: a filled one
        out.append(go.Scatter(
            x=[rows[i][x] for i in mine], y=[rows[i][y] for i in mine], mode="markers", name=b,
            marker={"size": 10, "color": PALETTE[k % len(PALETTE)],
                    "symbol": ["circle-open" if rows[i].get("latency_noisy") else "circle"
                               for i in mine], "line": {"width": 1.5}},
            hovertext=[hover(report, view, i) for i in mine], hoverinfo="text"))
    return out


def _star(go: Any, fig: Any, report: Any, view: View, x: str, y: str,
          y_range: tuple[float, float] | None) -> None:
    """The chosen row as a star with one annotation (above the point, or below it when the
    point is in the upper half of the shown range)."""
    r = report.rows[view.best] if view.best is not None else {}
    if not (is_num(r.get(x)) and is_num(r.get(y))):
        return
    fig.add_trace(go.Scatter(
        x=[r[x]], y=[r[y]], mode="markers", name=f"★ {view.best_label}",
        marker={"size": 20, "color": STAR, "symbol": "star", "line": {"width": 1.5,
                                                                      "color": "#6b5200"}},
        hovertext=[hover(report, view, view.best)], hoverinfo="text"))
    ys = [row[y] for row in report.rows if is_num(row.get(y))]
    lo, hi = y_range or (min(ys), max(ys))
    upper = hi > lo and (r[y] - lo) / (hi - lo) > 0.5
    fig.add_annotation(x=r[x], y=r[y], text=f"★ {view.best_label}: {r.get('step', '')}",
                       showarrow=True, arrowhead=2, ax=0, ay=40 if upper else -40,
                       font={"size": 12, "color": "#6b5200"}, bgcolor="rgba(255,255,255,0.85)",
                       bordercolor=STAR, name="best-annotation")


def _front(go: Any, report: Any, x: str, y: str, front: list[int], maximize_y: bool) -> Any:
    rows = report.rows
    ordered = sorted(front, key=lambda i: rows[i][x])
    return go.Scatter(
        x=[rows[i][x] for i in ordered], y=[rows[i][y] for i in ordered], mode="lines",
        name="Pareto front", hoverinfo="skip",
        line={"color": FRONT, "width": 2.5, "shape": "hv" if maximize_y else "linear"})


def _budget(fig: Any, view: View, ys: list[float]) -> None:
    """The accuracy budget as a dashed line, the infeasible region below it shaded."""
    if view.floor is None:
        return
    low = min(ys + [view.floor])
    span = max(max(ys + [view.floor]) - low, 1e-6)
    fig.add_shape(type="rect", xref="paper", x0=0, x1=1, y0=view.floor, y1=low - 0.1 * span,
                  fillcolor="rgba(214,39,40,0.12)", line={"width": 0}, layer="below",
                  showlegend=True, name=f"infeasible (drop > {view.budget:g})")
    fig.add_shape(type="line", xref="paper", x0=0, x1=1, y0=view.floor, y1=view.floor,
                  line={"color": "#d62728", "dash": "dash", "width": 1.5}, showlegend=True,
                  name=f"accuracy budget (≥ {view.floor:.4g})")


def _menus(fitted: tuple[float, float] | None, log_x: bool, n_hidden: int) -> list[dict]:
    """Buttons above the plot: the accuracy axis fitted / all points; x linear / log."""
    menus = []
    base = {"type": "buttons", "direction": "right", "showactive": True, "y": 1.02,
            "yanchor": "bottom", "pad": {"t": 0, "b": 0, "l": 0, "r": 0},
            "font": {"size": 11}}
    if fitted is not None:
        menus.append({**base, "x": 0, "xanchor": "left", "active": 0, "buttons": [
            {"label": "fit: points that matter", "method": "relayout",
             "args": [{"yaxis.range": list(fitted), "yaxis.autorange": False}]},
            {"label": f"all points (+{n_hidden} below)", "method": "relayout",
             "args": [{"yaxis.autorange": True}]}]})
    menus.append({**base, "x": 1, "xanchor": "right", "active": 1 if log_x else 0, "buttons": [
        {"label": "linear x", "method": "relayout",
         "args": [{"xaxis.type": "linear", "xaxis.autorange": True}]},
        {"label": "log x", "method": "relayout",
         "args": [{"xaxis.type": "log", "xaxis.autorange": True}]}]})
    return menus


def pareto_figure(go: Any, report: Any, view: View, x: str, y: str, front: list[int],
                  maximize_y: bool) -> Any:
    """``y`` against ``x`` for every row having both: markers per backend, the front, the
    chosen row's star, on an accuracy axis the budget and the fitted range."""
    rows = report.rows
    idx = [i for i, r in enumerate(rows) if is_num(r.get(x)) and is_num(r.get(y))]
    ys = [rows[i][y] for i in idx]
    accuracy = y == "accuracy"
    fitted = fitted_range(ys, view.floor, view.budget) if accuracy else None
    fig = go.Figure(_traces(go, report, view, idx, x, y))
    fig.add_trace(_front(go, report, x, y, front, maximize_y))
    if accuracy:
        _budget(fig, view, ys)
    _star(go, fig, report, view, x, y, fitted)
    xs = [rows[i][x] for i in idx if rows[i][x] > 0]
    log_x = bool(xs) and max(xs) / min(xs) > 20  # latencies spanning decades read better
    hx, hy = report.header(x), report.header(y)
    n_hidden = sum(v < fitted[0] for v in ys) if fitted else 0
    fig.update_layout(
        title={"text": f"{hy} vs {hx}", "x": 0, "xanchor": "left", "y": 0.98,
               "yanchor": "top"},
        xaxis={"title": {"text": f"{hx} (lower is better)"},
               "type": "log" if log_x else "linear"},
        yaxis={"title": {"text": f"{hy} ({'higher' if maximize_y else 'lower'} is better)"},
               **({"range": list(fitted), "autorange": False} if fitted else {})},
        template="plotly_white", margin={"l": 70, "r": 20, "t": 90, "b": 55},
        legend={"orientation": "v", "x": 1.02, "y": 1, "xanchor": "left"},
        updatemenus=_menus(fitted, log_x, n_hidden), hovermode="closest")
    return fig


def history_figure(go: Any, report: Any, view: View) -> Any | None:
    """The objective over trials (``view.history``: the columns ``x`` and ``y``, ``ok``: the
    feasibility column), the best feasible so far as a step line, the chosen row starred.
    None when fewer than two rows have both."""
    h = view.history or {}
    x, y, ok = h.get("x", "trial"), h.get("y", "objective"), h.get("ok", "feasible")
    rows = report.rows
    idx = sorted((i for i, r in enumerate(rows) if is_num(r.get(x)) and is_num(r.get(y))),
                 key=lambda i: rows[i][x])
    if len(idx) < 2:
        return None
    fig = go.Figure()
    for name, mine, marker in (
            ("feasible", [i for i in idx if rows[i].get(ok)], {"color": FRONT, "size": 9}),
            ("infeasible", [i for i in idx if not rows[i].get(ok)],
             {"color": "#9aa4b1", "size": 9, "symbol": "x"})):
        if mine:
            fig.add_trace(go.Scatter(x=[rows[i][x] for i in mine], y=[rows[i][y] for i in mine],
                                     mode="markers", name=name, marker=marker,
                                     hovertext=[hover(report, view, i) for i in mine],
                                     hoverinfo="text"))
    so_far, bx, by = None, [], []
    for i in idx:
        if rows[i].get(ok) and (so_far is None or rows[i][y] < so_far):
            so_far = rows[i][y]
        if so_far is not None:
            bx.append(rows[i][x])
            by.append(so_far)
    fig.add_trace(go.Scatter(x=bx, y=by, mode="lines", name="best so far", hoverinfo="skip",
                             line={"color": "#2ca02c", "shape": "hv", "width": 2}))
    _star(go, fig, report, view, x, y, None)
    title = h.get("title", report.header(y))
    fig.update_layout(
        title={"text": f"{title} over trials", "x": 0, "xanchor": "left", "y": 0.98,
               "yanchor": "top"},
        xaxis={"title": {"text": report.header(x)}, "dtick": 1 if len(idx) <= 30 else None},
        yaxis={"title": {"text": f"{title} (lower is better)"}}, template="plotly_white",
        margin={"l": 70, "r": 20, "t": 60, "b": 55},
        legend={"orientation": "v", "x": 1.02, "y": 1, "xanchor": "left"})
    return fig
