"""A step that made things worse is called out (issue 26, item 2): ``Session.compare`` over a
real history whose step is slower and larger than its input (a simulated INT8 step on torch:
fake-quant in float, timed for real) flags that row in the Markdown and terminal tables and
names it in one summary line; the export of a tiny model, larger than the torch model it came
from, is flagged against its input on its own backend; differences within noise are not; and
``Report.best`` picks the best measured row within an accuracy budget."""

from __future__ import annotations


import pytest
import torch

from helpers import terminal_text

import modelopt_core as mo

FAST = {"latency": {"min_time_s": 0.1, "iterations": 20}}


@pytest.fixture(scope="module")
def fake_quant():
    """original -> quantize.static (simulated INT8 on torch: fake-quant in float, timed for
    real: far slower, and its scales make it larger on disk), with an accuracy."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10)).eval()
    x = torch.randn(1, 256)
    s = mo.Session(model, (x,), calibration_data=[(torch.randn(4, 256),) for _ in range(4)],
                   eval_fn=lambda runner: 90.0, progress=False)
    s.apply("quantize.static")
    rep = s.compare(backends=["torch"], profilers=["accuracy", "latency", "size"],
                    profiler_options=FAST)
    return s, rep


def test_a_slower_larger_step_is_flagged_in_markdown_and_terminal(fake_quant):
    _, rep = fake_quant
    base, step = rep.rows
    assert step["latency_p50_ms"] > 5 * base["latency_p50_ms"]  # the real case holds
    assert "regression" not in base
    assert step["regression"].startswith("slower (p50 ") and "larger (" in step["regression"]
    assert step["regression_input"] == "original"
    md = rep.to_markdown()
    header = next(line for line in md.splitlines() if line.startswith("| step"))
    assert "worse than its input" in header
    row = next(line for line in md.splitlines() if line.startswith("| 1:quantize.static"))
    assert "slower (p50 " in row and " ms), larger (" in row
    summary = ("1 step made things worse than its input (beyond noise): 1:quantize.static on "
               "torch is slower (p50 ")
    assert summary in md and "than its input original" in md
    text = terminal_text(rep)
    assert " ".join(summary.split()) in " ".join(text.split())  # wrapped at the width


def test_best_within_the_budget_is_the_measured_best_not_the_last_step(fake_quant):
    s, rep = fake_quant
    choice = rep.best("latency", max_accuracy_drop=1.0)
    assert (choice.index, choice.step, choice.backend, choice.history_index) == \
        (0, "original", "torch", 0)
    assert s.history[choice.history_index] is s.original
    assert choice.reason.startswith("fastest measured row within the accuracy budget (at most "
                                    "1 below the baseline's 90.00): p50 ")
    assert rep.best("size").step == "original"  # the fake-quant step is larger too


def test_an_export_is_judged_against_the_step_it_came_from():
    """A tiny model's ONNX file is larger than its torch state: flagged, naming the input
    (the torch step, on torch: the export's own backend has no row of it)."""
    s = mo.Session(torch.nn.Linear(8, 8), (torch.randn(1, 8),), progress=False)
    s.export("onnx")
    rep = s.compare(backends=["torch", "onnxruntime"], profilers=["size"])
    onnx_row = rep.rows[1]
    assert onnx_row["regression"].startswith("larger (") and onnx_row["size_mb"] > \
        rep.rows[0]["size_mb"]
    assert "1 step made things worse than its input (beyond noise): 1:onnx on onnxruntime " \
           "is larger (" in rep.to_markdown()


def _row(step, backend, p50, iqr=0.0, n=1000, **kw):
    return {"step": step, "format": "onnx", "backend": backend, "latency_p50_ms": p50,
            "latency_iqr_ms": iqr, "latency_n": n, **kw}


def test_noise_is_not_a_regression():
    rows = [_row("original", "torch", 1.0),
            _row("1:onnx", "onnxruntime", 0.50, iqr=0.01),
            _row("2:onnx.optimize", "onnxruntime", 0.52, iqr=0.01),  # +4%: under 5%
            _row("3:onnx.quantize_static", "onnxruntime", 0.56, iqr=0.5, n=20),  # in notches
            # busy machine: 40% slower, but within one interquartile range of calls
            _row("4:onnx.quantize_dynamic", "onnxruntime", 0.80, iqr=0.3, latency_noisy=True)]
    rep = mo.Report(rows)
    assert not any("regression" in r for r in rep.rows)
    assert rep.regression_summary is None and "made things worse" not in rep.to_markdown()
    rows[4]["latency_p50_ms"] = 1.2  # beyond the busy window's spread: flagged
    rep = mo.Report(rows)
    assert rep.rows[4]["regression"] == "slower (p50 1.200 vs 0.560 ms)"
    assert rep.rows[4]["regression_input"] == "3:onnx.quantize_static"


def test_a_tie_within_noise_goes_to_the_smaller_artifact():
    """The tiny detection demo's case: INT8 on OpenVINO within noise of FP32 on OpenVINO, and
    larger: the FP32 step is the best, and the reason says it was a tie."""
    rows = [_row("original", "torch", 1.3, size_mb=0.155, accuracy=50.0),
            _row("1:openvino", "openvino", 0.301, iqr=0.01, size_mb=0.135, accuracy=50.0),
            _row("2:openvino.quantize", "openvino", 0.295, iqr=0.01, size_mb=0.242,
                 accuracy=49.8)]
    rep = mo.Report(rows)
    assert rep.rows[2]["regression"] == "larger (0.242 vs 0.135 MB)"
    choice = rep.best("latency", max_accuracy_drop=1.5)
    assert (choice.step, choice.history_index) == ("1:openvino", 1)
    assert choice.reason.startswith("smallest of the measured rows tied for fastest within "
                                    "the accuracy budget")
    assert choice.reason.endswith("tied within noise: 2:openvino.quantize on openvino (p50 "
                                  "0.295 ms, 0.242 MB)")
    rows[2]["latency_p50_ms"] = 0.2  # clearly faster: no tie, the fastest wins
    assert mo.Report(rows).best("latency", max_accuracy_drop=1.5).step == "2:openvino.quantize"
    assert mo.Report(rows).best("latency", max_accuracy_drop=0.1).step == "1:openvino"


def test_rows_that_are_no_lineage_are_not_judged():
    """A search's trials are alternatives, not steps made one from another."""
    rows = [_row("original (torch fp32)", "torch", 1.0), _row("trial 0", "onnxruntime", 0.5),
            _row("trial 1", "onnxruntime", 0.9)]
    rep = mo.Report(rows)
    assert not any("regression" in r for r in rep.rows)
    assert rep.best().step == "trial 0" and rep.best().history_index is None


def test_best_bad_input_is_a_typed_error():
    rep = mo.Report([_row("original", "torch", 1.0), _row("1:onnx", "onnxruntime", 0.5)])
    with pytest.raises(mo.ConfigError, match="objective 'speed'"):
        rep.best("speed")
    with pytest.raises(mo.ConfigError, match="max_accuracy_drop must be a number >= 0"):
        rep.best(max_accuracy_drop=-1)
    with pytest.raises(mo.DataError, match="baseline row's accuracy"):
        rep.best(max_accuracy_drop=1.0)
    with pytest.raises(mo.DataError, match="no row has 'throughput_per_s'"):
        rep.best("throughput")
