"""Report: ratios against the baseline row, Markdown and JSON output (written atomically)."""

from __future__ import annotations

import json

import pytest

import modelopt_core as mo


@pytest.fixture
def report():
    return mo.Report([
        {"step": "original", "format": "torch", "backend": "torch", "accuracy": 97.5,
         "latency_p50_ms": 10.0, "size_mb": 4.0, "custom_metric": 1},
        {"step": "1:onnx", "format": "onnx", "backend": "onnxruntime", "accuracy": 97.5,
         "latency_p50_ms": 4.0, "size_mb": 4.0},
        {"step": "2:onnx.quantize_static", "format": "onnx", "backend": "onnxruntime",
         "accuracy": 96.0, "latency_p50_ms": 2.0, "size_mb": 1.0},
        {"step": "3:tensorrt", "format": "tensorrt", "backend": "tensorrt",
         "error": "unavailable: no GPU | no tensorrt"},
    ])


def test_ratios_against_baseline(report):
    r = report.rows
    assert [x.get("speedup") for x in r] == [1.0, 2.5, 5.0, None]
    assert [x.get("size_ratio") for x in r] == [1.0, 1.0, 4.0, None]
    assert [x.get("accuracy_delta") for x in r] == [0.0, 0.0, -1.5, None]


def test_zero_baseline_gives_no_division():
    r = mo.Report([{"step": "a", "latency_p50_ms": 0.0, "accuracy": 0.0},
                   {"step": "b", "latency_p50_ms": 1.0, "accuracy": 50.0}]).rows
    assert "speedup" not in r[1] and r[1]["accuracy_delta"] == 50.0


def test_rows_are_copied():
    rows = [{"step": "a", "latency_p50_ms": 2.0}]
    mo.Report(rows)
    assert rows == [{"step": "a", "latency_p50_ms": 2.0}]


def test_markdown_table(report, tmp_path):
    md = report.to_markdown(tmp_path / "r.md")
    assert (tmp_path / "r.md").read_text() == md
    lines = md.splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header[:3] == ["step", "format", "backend"] and header[-1] == "error"
    assert "speedup" in header and "custom_metric" not in header  # headline columns only
    assert "p50 ms" in header and "Δ accuracy" in header  # human headers with units
    assert len(lines) == 4 + len(report.rows)
    assert "no GPU \\| no tensorrt" in md  # pipes are escaped inside cells
    quant = next(line for line in lines if "quantize_static" in line)
    cells = [c.strip() for c in quant.strip("|").split("|")]
    assert cells[header.index("speedup")] == "5.00x"
    assert cells[header.index("Δ accuracy")] == "-1.50"
    assert cells[header.index("p50 ms")] == "2.000"
    chosen = report.to_markdown(columns=["step", "custom_metric"])
    assert "| original | 1 |" in chosen


def test_cells_have_fixed_decimals_and_no_scientific_notation():
    from modelopt_core.report import fmt

    assert fmt("throughput_per_s", 14020.7) == "14,021"
    assert fmt("latency_p50_ms", 0.000123) == "0.000"
    assert fmt("sparsity", 0.3) == "30.0%"
    assert fmt("params", 74123) == "74,123"
    assert fmt("custom", 123456789.5) == "123,456,789.5"
    assert "e" not in fmt("custom", 1.5e-7)


def test_terminal_table_fits_80_columns():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    rows = [{"step": f"{i}:onnx.quantize_static", "format": "onnx", "backend": "onnxruntime",
             "accuracy": 99.777, "latency_p50_ms": 0.6123, "latency_p95_ms": 0.9,
             "throughput_per_s": 14020.7, "size_mb": 0.0712} for i in range(3)]
    out = Tty()
    mo.Report(rows, environment={"cpu": "Test CPU", "cores": 2}).print(file=out)
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # colours are not columns
    assert max(len(line) for line in text.splitlines()) <= 80
    for number in ("0.612", "99.78", "0:onnx.quantize_static", "onnxruntime"):
        assert number in text  # never split across lines
    assert "Test CPU" in text


def test_environment_and_notes_in_markdown_and_json():
    r = mo.Report([{"step": "original", "latency_p50_ms": 1.0}],
                  environment={"cpu": "Test CPU", "cores": 2, "versions": {"torch": "9"}},
                  notes={"1:prune.structured": ["kept 3 layers"]})
    md = r.to_markdown()
    assert "- 1:prune.structured: kept 3 layers" in md
    assert "Measured on: Test CPU, 2 cores" in md and "torch 9" in md
    assert r.to_dict()["environment"]["cpu"] == "Test CPU"


def test_json_keeps_every_metric(report, tmp_path):
    text = report.to_json(tmp_path / "out" / "r.json")
    data = json.loads((tmp_path / "out" / "r.json").read_text())
    assert data == json.loads(text)
    assert data["title"] == "modelopt comparison"
    assert "custom_metric" in data["columns"] and data["columns"][-1] == "error"
    assert data["rows"][2]["speedup"] == 5.0 and data["rows"][0]["custom_metric"] == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["r.json"]  # no temp file left


def test_empty_report():
    r = mo.Report([])
    assert r.to_dict()["rows"] == [] and "### modelopt comparison" in r.to_markdown()


def test_cpu_memory_is_in_the_tables():
    """The memory profiler's CPU figures (peak RSS, growth while the model ran) are headline
    columns of the Markdown and HTML tables, not only of the JSON (issue 26, item 4)."""
    rows = [{"step": "original", "backend": "torch", "latency_p50_ms": 1.0, "peak_rss_mb": 812.4,
             "rss_growth_mb": 3.25},
            {"step": "1:onnx", "backend": "onnxruntime", "latency_p50_ms": 0.5,
             "peak_rss_mb": 845.0, "rss_growth_mb": 12.5}]
    rep = mo.Report(rows)
    assert {"peak_rss_mb", "rss_growth_mb"} <= set(rep.columns)
    md = rep.to_markdown()
    assert "RSS MB" in md and "RSS +MB" in md and "812" in md and "12.5" in md
    assert "RSS +MB" in rep.to_html()
