"""The CPU deployment path end to end: export -> onnx.optimize -> ORT quantization -> runner."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import modelopt_core as mo
from helpers import state_hash
from modelopt_demo.data import accuracy_fn
from modelopt_demo.models import MLP, YoloStyle


@pytest.fixture(scope="module")
def trained(trained_cnn):
    return trained_cnn


def test_export_dynamic_batch_and_numerics(trained, digits):
    before = state_hash(trained)
    s = mo.Session(trained, (digits.example,), progress=False)
    art = s.export("onnx")
    assert art.format == "onnx" and art.lineage[-1].component == "onnx"
    assert art.metadata["onnx_exporter_used"] == "dynamo"
    assert art.metadata["max_abs_error"] < 1e-3
    dim0 = art.model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param  # symbolic batch axis
    with s.runner("onnxruntime") as r, s.runner("torch", s.original) as t:
        for b in (1, 5, 17):
            x = torch.randn(b, 1, 8, 8)
            torch.testing.assert_close(r(x), t(x), rtol=1e-3, atol=1e-4)
    assert state_hash(trained) == before


def test_torchscript_exporter_option(trained, digits):
    s = mo.Session(trained, (digits.example,), progress=False)
    art = s.export("onnx", exporter="torchscript")
    assert art.metadata["onnx_exporter_used"] == "torchscript"
    x = digits.test[0][0]
    torch.testing.assert_close(s.runner("onnxruntime")(x), s.runner("torch", s.original)(x),
                               rtol=1e-3, atol=1e-4)


class _DataDependent(torch.nn.Module):
    """A branch on tensor values: torch.export refuses it, TorchScript tracing takes one path."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > -1e9:
            return self.lin(x)
        return -self.lin(x)


def test_fallback_to_torchscript_is_recorded():
    s = mo.Session(_DataDependent(), (torch.randn(2, 4),), progress=False)
    art = s.export("onnx")
    assert art.metadata["onnx_exporter_used"] == "torchscript"
    assert any("TorchScript" in n for n in art.lineage[-1].notes)
    s2 = mo.Session(_DataDependent(), (torch.randn(2, 4),), progress=False)
    with pytest.raises(mo.ExportError, match="dynamo exporter failed"):
        s2.export("onnx", fallback=False)
    assert len(s2.history) == 1  # a failed step leaves the history as it was


def test_multi_output_detector_runs_alike_on_torch_and_ort():
    torch.manual_seed(0)
    m = YoloStyle().eval()
    x = torch.randn(1, 3, 64, 64)
    s = mo.Session(m, (x,), progress=False)
    s.export("onnx")
    out_t = s.runner("torch", s.original)(torch.randn(2, 3, 64, 64))
    xb = torch.randn(2, 3, 64, 64)
    out_t = s.runner("torch", s.original)(xb)
    out_o = s.runner("onnxruntime")(xb)
    assert isinstance(out_o, tuple) and len(out_o) == 3
    for a, b in zip(out_t, out_o):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def _conv_bn_graph() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    for name, arr in [("scale", rng.random(4) + 0.5), ("bias", rng.standard_normal(4)),
                      ("mean", rng.standard_normal(4)), ("var", rng.random(4) + 0.5)]:
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"],
                              ["output"])]
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         ["batch", 3, 8, 8])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_optimize_folds_batchnorm_exactly():
    proto = _conv_bn_graph()
    art = mo.ModelArtifact("onnx", proto, (mo.TensorSpec("input", ("batch", 3, 8, 8)),),
                           (mo.TensorSpec("output", ("batch", 4, 8, 8)),))
    s = mo.Session(art, (torch.randn(2, 3, 8, 8),), progress=False)
    original_bytes = proto.SerializeToString()
    out = s.apply("onnx.optimize")
    assert [n.op_type for n in out.model.graph.node] == ["Conv"]
    assert proto.SerializeToString() == original_bytes
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(s.runner("onnxruntime")(x),
                               s.runner("onnxruntime", s.original)(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_quantize_static_keeps_accuracy(trained, digits, method):
    s = mo.Session(trained, (digits.example,), calibration_data=digits.calibration[:8],
                   eval_fn=accuracy_fn(digits.test), progress=False)
    s.export("onnx")
    q = s.apply("onnx.quantize_static", calibrate_method=method, per_channel=True)
    ops = [n.op_type for n in q.model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # per-channel: a weight DequantizeLinear carries a vector of scales
    inits = {i.name: numpy_helper.to_array(i) for i in q.model.graph.initializer}
    assert any(n.op_type == "DequantizeLinear" and inits.get(n.input[1]) is not None
               and inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1
               for n in q.model.graph.node)
    acc_f = s.eval_fn(s.runner("torch", s.original))
    acc_q = s.eval_fn(s.runner("onnxruntime"))
    assert acc_q >= acc_f - 1.0, (method, acc_f, acc_q)


def test_quantize_static_reports_size_drop(trained, digits):
    s = mo.Session(trained, (digits.example,), calibration_data=digits.calibration[:4],
                   eval_fn=accuracy_fn(digits.test[:3]), progress=False)
    s.export("onnx")
    s.apply("onnx.quantize_static")
    rep = s.compare(backends=["torch", "onnxruntime"], profilers=["size", "accuracy"])
    assert [r["step"] for r in rep.rows] == ["original", "1:onnx", "2:onnx.quantize_static"]
    assert rep.rows[2]["size_ratio"] > 2.5  # int8 weights vs fp32
    assert "| step |" in rep.to_markdown()


def test_quantize_dynamic_on_linear_model_and_noop_warning():
    torch.manual_seed(0)
    m = MLP(64, 128, 32, depth=3).eval()
    x = torch.randn(4, 64)
    s = mo.Session(m, (x,), progress=False)
    s.export("onnx")
    q = s.apply("onnx.quantize_dynamic")
    ops = {n.op_type for n in q.model.graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
    ref = s.runner("torch", s.original)(x)
    got = s.runner("onnxruntime")(x)
    assert float((ref - got).abs().max() / ref.abs().max()) < 0.05
    # a graph without MatMul/Gemm: explicit no-op step with the warning in its lineage
    conv = mo.ModelArtifact("onnx", _conv_bn_graph(), (mo.TensorSpec("input", ("batch", 3, 8, 8)),))
    s2 = mo.Session(conv, (torch.randn(1, 3, 8, 8),), progress=False)
    out = s2.apply("onnx.quantize_dynamic")
    assert out.model is conv.model and "no-op" in " ".join(out.lineage[-1].notes)


def test_ort_backend_options_and_missing_provider(trained, digits):
    s = mo.Session(trained, (digits.example,), progress=False)
    s.export("onnx")
    x = digits.test[0][0]
    ref = s.runner("onnxruntime")(x)
    r = s.runner("onnxruntime", graph_optimization_level="disable", intra_op_num_threads=1)
    torch.testing.assert_close(r(x), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(mo.BackendUnavailableError, match="NoSuchExecutionProvider"):
        s.runner("onnxruntime", providers=("NoSuchExecutionProvider",))
    with pytest.raises(mo.ConfigError, match="graph_optimization_level"):
        s.runner("onnxruntime", graph_optimization_level="max")


def test_onnx_artifact_save_load_roundtrip(trained, digits, tmp_path):
    s = mo.Session(trained, (digits.example,), calibration_data=digits.calibration[:2],
                   progress=False)
    s.export("onnx")
    q = s.apply("onnx.quantize_static")
    q.save(tmp_path / "int8")
    back = mo.load_artifact(tmp_path / "int8")
    assert back.format == "onnx" and back.inputs == q.inputs
    assert [st.component for st in back.lineage][:-1] == [st.component for st in q.lineage]
    x = digits.test[0][0]
    torch.testing.assert_close(s.runner("onnxruntime", back)(x), s.runner("onnxruntime")(x))


def _trt_here() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.skipif(_trt_here(), reason="TensorRT and a GPU are present: see the engine test")
def test_tensorrt_reports_unavailable_without_gpu(trained, digits):
    pm = mo.get_plugin_manager()
    ok, why = pm.get("backend", "tensorrt").cls.availability()
    assert not ok and ("tensorrt" in why or "CUDA" in why)
    s = mo.Session(trained, (digits.example,), progress=False)
    with pytest.raises(mo.BackendUnavailableError, match="tensorrt"):
        s.export("tensorrt")
    # every link is checked before any runs: a chain that cannot finish leaves no half
    assert [a.format for a in s.history] == ["torch"]


@pytest.mark.skipif(not _trt_here(), reason="needs the tensorrt package and an NVIDIA GPU")
def test_tensorrt_engine_matches_torch(trained, digits):
    s = mo.Session(trained, (digits.example,), calibration_data=digits.calibration[:4],
                   progress=False)
    s.export("tensorrt", fp16=False, max_batch=64)
    assert s.current.format == "tensorrt" and isinstance(s.current.model, bytes)
    x = digits.test[0][0]
    ref = s.runner("torch", s.original)(x)
    got = s.runner("tensorrt")(x).cpu()
    torch.testing.assert_close(got, ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("method", ["percentile", "entropy", "distribution"])
def test_histogram_calibration_takes_a_ragged_last_batch(trained, digits, method):
    """ORT's histogram calibrators stack batches: a smaller last batch (1347 samples in
    batches of 64) used to end in numpy's 'inhomogeneous part' ValueError."""
    calib = [torch.cat([b for b in digits.calibration])[:70][i:i + 32] for i in (0, 32, 64)]
    assert [len(b) for b in calib] == [32, 32, 6]
    s = mo.Session(trained, (digits.example,), calibration_data=calib, progress=False)
    s.export("onnx")
    art = s.apply("onnx.quantize_static", calibrate_method=method)
    assert any("regrouped into 3 batches of 32" in n for n in art.lineage[-1].notes)
    if method == "distribution":  # ORT's method for float8 scales: warned about for int8
        assert any("float8" in n for n in art.lineage[-1].notes)
        return
    x = digits.test[0][0]
    agree = (s.runner("onnxruntime")(x).argmax(1) == trained(x).argmax(1)).float().mean()
    assert agree >= 0.9
