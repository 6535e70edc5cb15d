"""Report.to_html (self-contained page with Pareto plots) and the Pareto-front logic."""

from __future__ import annotations

import builtins
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

import modelopt_core as mo
from modelopt_core.report import pareto_indices
from modelopt_core.report_html import ReportDependencyError


@pytest.fixture
def report():
    return mo.Report([
        {"step": "original", "format": "torch", "backend": "torch", "accuracy": 97.5,
         "latency_p50_ms": 10.0, "size_mb": 4.0},
        {"step": "1:onnx", "format": "onnx", "backend": "onnxruntime", "accuracy": 97.5,
         "latency_p50_ms": 4.0, "size_mb": 4.0, "recipe": {"prune.ratio": 0.3}},
        {"step": "2:onnx.quantize_static", "format": "onnx", "backend": "onnxruntime",
         "accuracy": 96.0, "latency_p50_ms": 2.0, "size_mb": 1.0},
        {"step": "3:tensorrt", "format": "tensorrt", "backend": "tensorrt",
         "error": "unavailable: no GPU"},
    ], environment={"cpu": "Test CPU <x86>", "cores": 2, "versions": {"torch": "9.9"}},
        notes={"2:onnx.quantize_static": ["layer fc2 kept in <float>"],
               "compare": ["backend foo ran nothing"]})


def test_html_holds_table_plots_lineage_environment(report, tmp_path):
    path = tmp_path / "sub" / "report.html"
    text = report.to_html(path, title="My <run>")
    assert path.read_text() == text
    assert "<title>My &lt;run&gt;</title>" in text
    # the table: same headers and number formats as the Markdown report
    for cell in ("p50 ms", "size MB", "97.50", "10.000", "5.00x", "4.00x", "-1.50",
                 "unavailable: no GPU", "2:onnx.quantize_static"):
        assert f">{cell}<" in text, cell
    assert 'id="pareto-latency"' in text and 'id="pareto-size"' in text
    assert "Plotly.newPlot" in text
    # lineage: notes escaped, the recipe column shown, stray notes kept
    assert "layer fc2 kept in &lt;float&gt;" in text
    assert "prune.ratio" in text and "backend foo ran nothing" in text
    assert "Test CPU &lt;x86&gt;" in text and "torch 9.9" in text


def test_html_is_self_contained(report):
    text = report.to_html()
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.IGNORECASE)  # no external script
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?https?:", text, re.IGNORECASE)
    assert len(text) > 1_000_000  # plotly.js itself is embedded


def test_pareto_rows_and_front_in_plot(report):
    assert report.pareto_front() == [1, 2]  # the original is slower at equal accuracy
    assert report.pareto_front("size_mb") == [0, 1, 2]  # 0 and 1 tie: both kept
    text = report.to_html()
    assert text.count('<tr class="front">') == 3


def test_without_accuracy_plots_size_vs_latency():
    r = mo.Report([{"step": "a", "latency_p50_ms": 2.0, "size_mb": 4.0},
                   {"step": "b", "latency_p50_ms": 1.0, "size_mb": 8.0},
                   {"step": "c", "latency_p50_ms": 3.0, "size_mb": 8.0}])
    text = r.to_html()
    assert 'id="pareto-latency-size"' in text and 'id="pareto-accuracy-skipped"' in text
    assert 'id="pareto-latency"' not in text
    assert r.pareto_front("latency_p50_ms", "size_mb", maximize_y=False) == [0, 1]


def test_lineage_notes_go_to_their_own_row():
    r = mo.Report([{"step": "original", "backend": "torch", "latency_p50_ms": 1.0},
                   {"step": "original", "backend": "onnxruntime", "latency_p50_ms": 2.0}],
                  notes={"original on onnxruntime": ["noisy"], "original": ["base"]})
    text = r.to_html(pareto=False)
    torch_row, ort_row = text.split('id="lineage"')[1].split("</ul></li>")[:2]
    assert "base" in torch_row and "noisy" not in torch_row
    assert "base" in ort_row and "noisy" in ort_row


def test_nothing_to_plot_and_no_pareto():
    r = mo.Report([{"step": "a", "params": 3}])
    assert 'id="pareto-skipped"' in r.to_html()
    text = r.to_html(pareto=False)
    assert "Pareto fronts" not in text and ">3<" in text


def test_missing_plotly_is_a_typed_error(report, monkeypatch, tmp_path):
    real = builtins.__import__

    def no_plotly(name, *a, **k):
        if name.split(".")[0] == "plotly":
            raise ImportError("No module named 'plotly'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_plotly)
    with pytest.raises(ReportDependencyError, match="pip install") as e:
        report.to_html(tmp_path / "r.html")
    assert isinstance(e.value, mo.ModeloptError)
    assert not (tmp_path / "r.html").exists()


def test_pareto_skips_missing_and_non_finite():
    assert pareto_indices([1.0, None, math.nan, 2.0, "x"], [1.0, 5.0, 9.0, 2.0, 9.0]) == [0, 3]


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def _dominates(a, b, maximize_y):
    ya, yb = (a[1], b[1]) if maximize_y else (-a[1], -b[1])
    return a[0] <= b[0] and ya >= yb and (a[0] < b[0] or ya > yb)


@given(st.lists(st.tuples(st.integers(0, 20).map(float) | finite,
                          st.integers(0, 20).map(float) | finite), max_size=30),
       st.booleans())
def test_pareto_property(points, maximize_y):
    front = pareto_indices([p[0] for p in points], [p[1] for p in points],
                           maximize_y=maximize_y)
    assert front == sorted(set(front))
    on = [points[i] for i in front]
    for f in on:  # no front point is dominated
        assert not any(_dominates(p, f, maximize_y) for p in points)
    for i, p in enumerate(points):  # every other point is dominated by a front point
        if i not in front:
            assert any(_dominates(f, p, maximize_y) for f in on)


# ---- issue 26 item 8: a page a user can share -------------------------------------------

def test_a_written_page_shares_plotly_beside_it_and_stays_small(report, tmp_path):
    from modelopt_core.report_html import script_name

    page = tmp_path / "out" / "report.html"
    text = report.to_html(page)
    js = page.with_name(script_name())
    assert js.is_file() and js.stat().st_size > 3_000_000  # plotly.js, once, beside it
    assert f'<script type="text/javascript" src="{js.name}"></script>' in text
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", text)  # offline
    assert len(text.encode()) < 100_000  # was 4.8 MB with plotly.js inside
    before = js.stat().st_mtime_ns
    report.to_html(page.with_name("other.html"))  # a second page of the folder shares it
    assert js.stat().st_mtime_ns == before and len(list(page.parent.glob("*.js"))) == 1
    inline = report.to_html(tmp_path / "alone.html", shared_script=False)
    assert len(inline) > 1_000_000 and 'src="plotly' not in inline


def test_the_best_row_is_starred_and_noisy_timings_marked(report):
    report.rows[2].update(latency_noisy=True, latency_iqr_ms=0.5)
    text = report.to_html(best=1, best_label="final", summary="final: 1:onnx")
    body = text.split('id="comparison"')[1].split("<tbody>")[1].split("</tbody>")[0]
    rows = re.findall(r"<tr( class=\"[^\"]*\")?>(.*?)</tr>", body)
    assert rows[1][0] == ' class="front best"'
    assert '<span class="star" title="final">★</span> 1:onnx' in rows[1][1]
    assert sum("★" in r[1] for r in rows) == 1
    noisy = re.search(r'2\.000 <span class="noisy" title="([^"]*)">~</span>', rows[2][1])
    assert noisy and "interquartile range 0.5 ms, 25% of the median" in noisy.group(1)
    assert "~: a noisy timing" in text and "★ final: the chosen row" in text
    assert '<p id="summary">final: 1:onnx</p>' in text
    assert '"mode":"markers+text"' not in text  # no labels drawn on the points


def test_accuracy_axes_fit_the_points_that_matter():
    from modelopt_core.report_plots import fitted_range

    ys = [97.5, 75.0, 97.4, 97.3, 96.0]  # an unrecovered step far below the rest
    lo, hi = fitted_range(ys, floor=96.5, budget=1.0)
    assert 75.0 < lo < 96.0 and 97.5 < hi < 98.0  # the floor and the near misses shown
    lo, hi = fitted_range(ys, floor=None, budget=None)  # no budget: near the best
    assert 75.0 < lo < 96.0
    assert fitted_range([97.5, 97.0, 96.9], floor=96.5, budget=1.0) is None  # all matter
    assert fitted_range([97.5], floor=None, budget=None) is None


def _figure(report, **view):
    import plotly.graph_objects as go

    from modelopt_core.report_plots import View, pareto_figure

    v = View(columns=report.columns, **view)
    return pareto_figure(go, report, v, "latency_p50_ms", "accuracy",
                         report.pareto_front(), True)


def test_budget_line_infeasible_region_toggles_and_star(report):
    report.rows.append({"step": "4:prune", "backend": "torch", "accuracy": 70.0,
                        "latency_p50_ms": 9.0, "size_mb": 2.0})
    fig = _figure(report, best=2, budget=1.0, floor=96.5)
    line, = [s for s in fig.layout.shapes if s.type == "line"]
    region, = [s for s in fig.layout.shapes if s.type == "rect"]
    assert line.y0 == line.y1 == 96.5 and "accuracy budget" in line.name
    assert region.y0 == 96.5 and region.y1 < 70.0 and "infeasible" in region.name
    assert 70.0 < fig.layout.yaxis.range[0] < 96.5  # fitted: the pruned step below
    labels = [b.label for m in fig.layout.updatemenus for b in m.buttons]
    assert labels == ["fit: points that matter", "all points (+1 below)", "linear x", "log x"]
    star, = [t for t in fig.data if t.name == "★ best"]
    assert star.marker.symbol == "star" and star.x == (2.0,)
    assert [a.text for a in fig.layout.annotations] == ["★ best: 2:onnx.quantize_static"]
    assert {t.name for t in fig.data} >= {"torch", "onnxruntime", "Pareto front"}
    assert all(t.mode in ("markers", "lines") for t in fig.data)  # no text on the points


def test_a_best_off_a_plotted_front_says_why(report):
    text = report.to_html(best=0, best_note={"latency_p50_ms": "ranked by size"})
    assert 'id="pareto-latency-best-note"' in text and "ranked by size" in text
    assert 'id="pareto-size-best-note"' not in text  # the original is on the size front


def test_trial_history_plots_the_best_feasible_so_far():
    import plotly.graph_objects as go

    from modelopt_core.report_plots import View, history_figure

    rows = [{"step": "original", "accuracy": 97.0}] + [
        {"step": f"trial {i}", "trial": i, "objective": v, "feasible": ok, "accuracy": 97.0}
        for i, (v, ok) in enumerate([(5.0, True), (2.0, False), (4.0, True), (4.5, True),
                                     (3.0, True)])]
    r = mo.Report(rows)
    fig = history_figure(go, r, View(columns=r.columns, best=5, history={"title": "p50 ms"}))
    so_far, = [t for t in fig.data if t.name == "best so far"]
    assert so_far.x == (0, 1, 2, 3, 4) and so_far.y == (5.0, 5.0, 4.0, 4.0, 3.0)
    infeasible, = [t for t in fig.data if t.name == "infeasible"]
    assert infeasible.x == (1,)
    assert fig.layout.title.text == "p50 ms over trials"
    page = r.to_html(history={"title": "p50 ms"})
    assert 'id="trial-history"' in page
    assert 'id="trial-history-skipped"' in mo.Report(rows[:2]).to_html(history={})
