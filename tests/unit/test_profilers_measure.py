"""Measurements a user can trust: timing honours its minimum duration, throughput agrees with
latency, noise is flagged, real inputs can be timed, INT8 ONNX weights are counted right, the
environment and the meaning of each row are in the report."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import modelopt_core as mo
from modelopt_profilers.profilers import (LatencyProfiler, MemoryProfiler, ThroughputProfiler,
                                          weight_stats)


class SleepRunner(mo.Runner):
    """Sleeps a given time per call (a list cycles); records the inputs it saw."""

    def __init__(self, artifact, sleeps):
        super().__init__(artifact)
        self.sleeps, self.calls, self.seen = list(sleeps), 0, []

    def _run(self, inputs):
        time.sleep(self.sleeps[self.calls % len(self.sleeps)])
        self.calls += 1
        self.seen.append(float(inputs[0].sum()))
        return [inputs[0]]


@pytest.fixture
def session():
    calib = [torch.full((2, 4), float(i)) for i in range(3)]
    return mo.Session(torch.nn.Identity(), (torch.zeros(2, 4),), calibration_data=calib,
                      progress=False)


def test_throughput_honours_min_time_and_reports_its_duration(session):
    r = SleepRunner(session.current, [0.001])
    out = ThroughputProfiler(min_time_s=0.4, warmup=1).profile(r, session.current,
                                                               session.context())
    assert out["throughput_duration_s"] >= 0.4
    assert out["throughput_calls"] >= 0.4 / 0.0015  # not capped after a few calls
    assert r.calls >= out["throughput_calls"]


def test_throughput_agrees_with_median_latency(session):
    r = SleepRunner(session.current, [0.002] * 99 + [0.05])  # a stray slow call
    ctx = session.context()
    lat = LatencyProfiler(min_time_s=0.3, warmup=1).profile(r, session.current, ctx)
    thr = ThroughputProfiler(min_time_s=0.3, warmup=1).profile(r, session.current, ctx)
    per_call = 2 / thr["throughput_per_s"] * 1e3  # batch of 2
    assert per_call == pytest.approx(lat["latency_p50_ms"], rel=0.3)
    assert lat["latency_max_ms"] >= 40 and lat["latency_min_ms"] < 10
    assert lat["latency_n"] >= 30 and lat["latency_iqr_ms"] >= 0


def test_noisy_latency_is_flagged_with_a_warning(session):
    r = SleepRunner(session.current, [0.001, 0.006])
    ctx = session.context()
    out = LatencyProfiler(min_time_s=0.1, warmup=0).profile(r, session.current, ctx)
    assert out["latency_noisy"] is True
    assert any("noisy" in n for n in ctx.notes)
    quiet = SleepRunner(session.current, [0.002])
    assert "latency_noisy" not in LatencyProfiler(min_time_s=0.1).profile(
        quiet, session.current, session.context())


def test_latency_can_time_real_calibration_inputs(session):
    r = SleepRunner(session.current, [0.0])
    LatencyProfiler(inputs="calibration", iterations=9, min_time_s=0, warmup=0).profile(
        r, session.current, session.context())
    assert sorted(set(r.seen)) == [0.0, 8.0, 16.0]  # every calibration batch was timed


def test_cpu_memory_reports_process_rss_not_a_fake_peak(session):
    with session.runner("torch") as r:
        out = MemoryProfiler().profile(r, session.current, session.context())
    assert out["memory_device"] == "cpu" and "peak_memory_mb" not in out
    assert out["peak_rss_mb"] > 10 and out["rss_growth_mb"] >= 0


def _qdq_model(weight: np.ndarray, zero_point: int, dtype=TensorProto.UINT8) -> onnx.ModelProto:
    """y = x @ DequantizeLinear(W_q, scale, zp), with W_q an initializer and the scale a
    Constant node (as exporters often emit)."""
    np_dtype = np.uint8 if dtype == TensorProto.UINT8 else np.int8
    inits = [numpy_helper.from_array(weight.astype(np_dtype), "w_q"),
             numpy_helper.from_array(np.array(zero_point, np_dtype), "w_zp")]
    scale = helper.make_node("Constant", [], ["w_scale"],
                             value=numpy_helper.from_array(np.array(0.1, np.float32)))
    dq = helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"])
    mm = helper.make_node("MatMul", ["x", "w"], ["y"])
    bias = helper.make_node("Constant", [], ["b"],
                            value=numpy_helper.from_array(np.ones((3,), np.float32)))
    add = helper.make_node("Add", ["y", "b"], ["z"])
    g = helper.make_graph([scale, bias, dq, mm, add], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(g)


def test_int8_onnx_weights_counted_and_zero_points_respected():
    w = np.full((4, 3), 128)
    w[0, 0] = 0  # a raw 0 of a UINT8 weight with zero point 128 is -12.8, not pruned
    art = mo.ModelArtifact("onnx", _qdq_model(w, 128))
    stats = weight_stats(art)
    assert stats["params"] == 12 + 3  # quantized weight + Constant-node bias; no scale/zp
    assert stats["quantized_zero_fraction"] == pytest.approx(11 / 12)
    assert "sparsity" not in stats  # rounding to the zero point is not pruning


def test_float_onnx_constants_count_as_params(session):
    art = session.export("onnx")
    torch_params = sum(p.numel() for p in session.original.model.parameters())
    assert weight_stats(art)["params"] == torch_params


def test_compare_records_environment_and_labels_simulated_rows():
    from modelopt_demo.models import SmallCNN

    torch.manual_seed(0)
    calib = [torch.randn(8, 1, 8, 8) for _ in range(2)]
    s = mo.Session(SmallCNN(width=4).eval(), (torch.randn(1, 1, 8, 8),), calibration_data=calib,
                   progress=False)
    s.apply("quantize.static")
    rep = s.compare(profilers=["size"])
    assert rep.environment["cores"] >= 1 and "torch" in rep.environment["versions"]
    assert "note" not in rep.rows[0]
    assert rep.rows[1]["note"].startswith("simulated INT8")
    assert "Measured on:" in rep.to_markdown()


def test_compare_reports_a_backend_that_matches_no_artifact():
    s = mo.Session(torch.nn.Linear(4, 2), (torch.randn(1, 4),), progress=False)
    rep = s.compare(backends=["torch", "onnxruntime"], profilers=["size"])
    assert [r["backend"] for r in rep.rows] == ["torch"]
    assert "onnxruntime" in rep.notes["compare"][0] and "no rows" in rep.notes["compare"][0]
    with pytest.raises(mo.UnknownComponentError):
        s.compare(backends=["onnxrt"])
