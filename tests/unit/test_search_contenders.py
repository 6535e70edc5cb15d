"""Which trials the end of a latency search re-times side by side (issue 24): the fastest few
by their own trial's timing and, besides, the fastest feasible one of every backend; and the
inputs it times them on (the trials' batch)."""

from __future__ import annotations

import torch
from modelopt_search.optimize import CONFIRM_TOP, _tiled, contenders


def _row(trial, backend, ms, **kw):
    return {"trial": trial, "backend": backend, "objective": ms, "accuracy": 90.0,
            "state": "complete", "feasible": True, **kw}


def test_the_fastest_feasible_trial_of_every_backend_is_a_contender():
    ort = [_row(i, "onnxruntime", 20.0 + i) for i in range(CONFIRM_TOP + 2)]
    rows = ort + [
        _row(10, "openvino", 21.5),  # 3rd fastest by its own trial's timing
        _row(11, "openvino", 30.0),
        _row(12, "openvino", 5.0, feasible=False),  # faster, but misses the budget
        _row(13, "openvino", 25.0, duplicate_of=11),  # a repeat: no candidate of its own
        _row(14, "openvino", 4.0, state="pruned", feasible=False),
    ]
    got = [r["trial"] for r in contenders(rows)]
    assert got == [0, 1, 10, 2]  # both backends among the fastest four: only those
    slow_ov = [r for r in rows if r["trial"] != 10]
    got = [r["trial"] for r in contenders(slow_ov)]
    # the fastest four are all ONNX Runtime: OpenVINO's fastest feasible one competes too
    assert got == [0, 1, 2, 3, 11]
    assert [r["trial"] for r in contenders([r for r in slow_ov if r["backend"] == "openvino"
                                            ])] == [11]
    assert contenders([r for r in rows if not r["feasible"]]) == []


def test_the_confirmation_inputs_are_tiled_to_the_trials_batch():
    x = torch.arange(2 * 3, dtype=torch.float32).reshape(2, 3)
    up = _tiled(x, 5)
    assert up.shape == (5, 3) and torch.equal(up, torch.cat([x, x, x])[:5])
    assert torch.equal(_tiled(x, 1), x[:1])
    assert _tiled(x, 2) is not None and torch.equal(_tiled(x, 2), x)
    assert _tiled(torch.tensor(3.0), 4).shape == ()  # a scalar is no batch
    assert _tiled("mask", 4) == "mask"


def test_a_third_party_profilers_metric_is_a_column_of_the_search_tables():
    import types

    import modelopt_core as mo
    from modelopt_search.optimize import report_columns

    class Widgets(mo.Profiler):
        """widgets per second (a third party's metric)"""

        name = "thirdparty.widgets"
        columns = (mo.Column("widgets_per_s", "widgets/s", "1/s", "{:.1f}", "higher"),)

        def profile(self, runner, artifact, ctx):
            return {"widgets_per_s": 1.0}

    mod = types.ModuleType("thirdparty")
    mod.register_profilers = mo.hookimpl(lambda register: register(Widgets))
    pm = mo.PluginManager()
    pm.register_plugin(mod, name="thirdparty", distribution="thirdparty-dist")
    report = mo.Report([{"step": "a", "latency_p50_ms": 1.0, "widgets_per_s": 3.0,
                         "objective": 1.0, "latency_p95_ms": 1.2}], plugins=pm)
    cols = report_columns(report, pm)
    assert cols == ["step", "latency_p50_ms", "speedup", "widgets_per_s", "objective"]
    assert "widgets/s" in report.to_markdown(columns=cols)
