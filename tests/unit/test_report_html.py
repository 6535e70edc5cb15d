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
