"""Model zoo: a 2-layer LSTM sequence classifier (``zoo_models.lstm_classifier``: nn.LSTM
16 -> 32 -> 32, batch-first [B, T, F], last step through a Linear head; seeded weights,
seeded N(0, 1) sequences of 20 steps) through the Session: ONNX, OpenVINO and TFLite exports
match torch, and the INT8 steps (ORT static and dynamic, OpenVINO/NNCF) keep the logits.

Measured here (torch 2.13, ORT 1.32, OpenVINO 2026.4, litert-torch 0.10): every FP32 export
within 1e-7 of torch (ONNX: the torch.export-based exporter, two ONNX LSTM ops; OpenVINO: two
LSTMSequence; TFLite: fixed batch 2, the runner chunks). INT8, top-1 agreement 16/16 on all
three: ``onnx.quantize_static`` quantizes the Linear head only (ONNX Runtime's QDQ quantizer
has no LSTM), ``onnx.quantize_dynamic`` both LSTMs (DynamicQuantizeLSTM) and the head,
``openvino.quantize`` (NNCF) the head's MatMul only (LSTMSequence stays float).
"""

from __future__ import annotations

import collections

import pytest
import torch
from helpers import state_hash
from zoo_models import lstm_classifier, small_batch_session

MODEL = "LSTM (2-layer)"
pytestmark = pytest.mark.zoo(model=MODEL)


@pytest.fixture(scope="module")
def lstm():
    model = lstm_classifier()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 20, 16, generator=g)
    with torch.no_grad():
        ref = model(x)
    return model, x, ref


def _session(model, x):
    return small_batch_session(model, x)


@pytest.mark.parametrize("target,backend", [
    pytest.param("onnx", "onnxruntime", marks=pytest.mark.zoo(cell="ONNX")),
    pytest.param("openvino", "openvino", marks=pytest.mark.zoo(cell="OpenVINO")),
    pytest.param("tflite", "tflite", marks=pytest.mark.zoo(cell="TFLite"))])
def test_lstm_export_matches_torch(lstm, target, backend, record_property, request):
    pytest.importorskip({"onnx": "onnxruntime", "openvino": "openvino",
                         "tflite": "litert_torch"}[target])
    model, x, ref = lstm
    before = state_hash(model)
    if target == "onnx":  # the INT8 ORT cells' session: one ONNX export for all three
        s = request.getfixturevalue("onnx_session")
    else:
        s = _session(model, x)
        s.export(target)
    with s.runner(backend) as r:
        got = r(x)
    err = float((got - ref).abs().max())
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-4)
    record_property("zoo", f"max abs error {err:.2g}")
    assert state_hash(model) == before


@pytest.fixture(scope="module")
def onnx_session(lstm):
    pytest.importorskip("onnxruntime")
    model, x, _ = lstm
    s = _session(model, x)
    s.export("onnx")
    return s


def _int8_agrees(got, ref, record_property, what):
    agree = float((got.argmax(1) == ref.argmax(1)).float().mean())
    rel = float((got - ref).abs().max() / ref.abs().max())
    record_property("zoo", f"top-1 agreement {agree:.2f}, max error {rel:.1%} of |logits|; {what}")
    assert agree >= 0.9, agree
    assert rel <= 0.1, rel


@pytest.mark.zoo(cell="INT8 ORT")
def test_lstm_int8_ort_static_quantizes_the_head(lstm, onnx_session, record_property):
    _, x, ref = lstm
    s = onnx_session
    art = s.apply("onnx.quantize_static")
    try:
        ops = collections.Counter(n.op_type for n in art.model.graph.node)
        # ORT's static (QDQ) quantizer has no LSTM: the Linear head is what runs in INT8
        assert ops["QuantizeLinear"] > 0 and ops["LSTM"] == 2, ops
        with s.runner("onnxruntime") as r:
            _int8_agrees(r(x), ref, record_property, "static QDQ: head only, LSTMs float")
    finally:
        s.discard()


@pytest.mark.zoo(cell="INT8 ORT (dynamic)")
def test_lstm_int8_ort_dynamic_quantizes_the_lstms(lstm, onnx_session, record_property):
    _, x, ref = lstm
    s = onnx_session
    art = s.apply("onnx.quantize_dynamic")
    try:
        ops = collections.Counter(n.op_type for n in art.model.graph.node)
        assert ops["DynamicQuantizeLSTM"] == 2 and ops["LSTM"] == 0, ops
        with s.runner("onnxruntime") as r:
            _int8_agrees(r(x), ref, record_property, "dynamic: both LSTMs and the head")
    finally:
        s.discard()


@pytest.mark.zoo(cell="INT8 OpenVINO")
def test_lstm_int8_openvino(lstm, record_property):
    pytest.importorskip("openvino")
    model, x, ref = lstm
    before = state_hash(model)
    s = _session(model, x)
    s.export("openvino")
    art = s.apply("openvino.quantize")
    assert art.metadata["openvino_fake_quantize"] > 0
    quantized = art.metadata["openvino_quantized_ops"]
    with s.runner("openvino") as r:
        _int8_agrees(r(x), ref, record_property, f"NNCF quantized {dict(quantized)} "
                     "(LSTMSequence float)")
    assert state_hash(model) == before
