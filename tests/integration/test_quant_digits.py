"""Quantization on the demo CNN (digits): PTQ and QAT accuracy bars, QDQ export that ONNX
Runtime runs with INT8 kernels, QAT recovering what PTQ loses, and quantize.auto."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
from helpers import state_hash

import modelopt_core as mo
from modelopt_core.training import TrainConfig, fit
from modelopt_demo.data import accuracy_fn, predict_accuracy
from modelopt_demo.models import SmallCNN


@pytest.fixture(scope="module")
def trained(digits):
    """A SmallCNN trained briefly on digits, and its float test accuracy."""
    torch.manual_seed(0)
    m = SmallCNN(width=16)
    fit(m, digits.train, config=TrainConfig(epochs=4, lr=3e-3),
        ctx=mo.Context(show_progress=False))
    m.eval()
    return m, predict_accuracy(m, digits.test)


def ill_conditioned(model: torch.nn.Module) -> torch.nn.Module:
    """The same function with 8 channels of the first block scaled x100 (and the next conv's
    inputs /100): per-tensor ranges then waste most of the grid, so PTQ loses accuracy."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        f = m.features
        for c in range(8):
            f[0][1].weight[c] *= 100
            f[0][1].bias[c] *= 100
            f[1][0].weight[:, c] /= 100
    return m


def session(model, digits, **kw):
    return mo.Session(model, (digits.example,), calibration_data=digits.calibration[:8],
                      train_data=digits.train, eval_fn=accuracy_fn(digits.test),
                      progress=False, **kw)


def test_ptq_drop_within_half_a_point_and_exports_int8_qdq(trained, digits, tmp_path):
    model, base = trained
    before = state_hash(model)
    s = session(model, digits)
    q = s.apply("quantize.static")
    assert state_hash(model) == before
    assert len(q.lineage) == 2 and q.lineage[-1].component == "quantize.static"
    assert base - predict_accuracy(q.model, digits.test) <= 0.5
    o = s.export("onnx", rtol=0.1, atol=0.2)
    ops = [n.op_type for n in o.model.graph.node]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 6
    # ONNX Runtime fuses the QDQ pattern into integer kernels
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(o.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert fused.count("QLinearConv") == 4
    ort_acc = predict_accuracy(s.runner("onnxruntime"), digits.test)
    assert base - ort_acc <= 0.5


def test_qat_drop_within_a_fifth_of_a_point(trained, digits):
    model, base = trained
    s = session(model, digits)
    q = s.apply("quantize.qat", epochs=2, lr=5e-4)
    assert base - predict_accuracy(q.model, digits.test) <= 0.2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in q.model.modules())
    o = s.export("onnx", rtol=0.1, atol=0.2)
    assert "QuantizeLinear" in {n.op_type for n in o.model.graph.node}


def test_qat_recovers_what_ptq_loses(trained, digits):
    model, _ = trained
    bad = ill_conditioned(model)
    base = predict_accuracy(bad, digits.test)
    s = session(bad, digits)
    ptq = predict_accuracy(s.apply("quantize.static", per_channel=False,
                                   observer="entropy").model, digits.test)
    s = session(bad, digits)
    qat = predict_accuracy(s.apply("quantize.qat", epochs=2, lr=5e-4, per_channel=False,
                                   learnable_scales=True).model, digits.test)
    assert ptq < base - 0.5, "the ill-conditioned model should lose accuracy under PTQ"
    assert qat > ptq and base - qat <= 0.5


def test_auto_keeps_sensitive_layers_float_within_budget(trained, digits, tmp_path):
    model, _ = trained
    bad = ill_conditioned(model)
    base = predict_accuracy(bad, digits.test)
    s = session(bad, digits)
    a = s.apply("quantize.auto", per_channel=False, observer="entropy", max_accuracy_drop=0.5,
                measure_speed=False)
    md = a.metadata
    assert md["within_budget"] and base - predict_accuracy(a.model, digits.test) <= 0.5
    assert md["float_layers"], "PTQ is over budget here, so some layers must stay float"
    assert set(md["float_layers"]).isdisjoint(md["quantized_layers"])
    ranked = [r["layer"] for r in md["sensitivity"]]
    assert sorted(ranked) == sorted(md["quantized_layers"] + md["float_layers"])
    assert any(n in md["float_layers"] for n in ranked[:3]), "the most sensitive layers go first"
    assert any("kept in float" in n for n in a.lineage[-1].notes)
    # the mixed-precision graph (float layers rewired to float inputs) reloads exactly
    a.save(tmp_path / "auto")
    width = model.features[0][0].out_channels
    back = mo.load_artifact(tmp_path / "auto", model=SmallCNN(width=width))
    x = digits.test[0][0]
    torch.testing.assert_close(back.model(x), a.model(x), rtol=0, atol=0)
    # and float layers stay float in ONNX Runtime (no per-tensor INT8 weights added by ORT)
    s.export("onnx", check_numerics=False)
    with s.runner("onnxruntime") as r:
        assert base - predict_accuracy(r, digits.test) <= 0.5 + 0.25
