"""Unit behaviour of the quantization components: quantizer placement, QAT BN folding,
dynamic INT8 layers, bf16, ONNX fp16 conversion and the sensitivity report."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import state_hash
from torch import fx, nn

import modelopt_core as mo
from modelopt_demo.models import MLP, BasicBlock, LSTMClassifier, SmallCNN
from modelopt_quant.dynamic import DynLinear, DynRNN
from modelopt_quant.fake_quant import FakeQuant, QuantConv, SharedQuant
from modelopt_quant.graph import QuantSpec, act_quantizers
from modelopt_quant.prepare import calibrate, prepare
from modelopt_quant.qat import fold_bn_quantized
from modelopt_quant.sensitivity import analyze

CTX = mo.Context(show_progress=False)


class TinyRes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.block = BasicBlock(8, 16, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


def _calibrated(model, x, **kw):
    gm, layers, _ = prepare(model, (x,), QuantSpec(**kw), CTX, "test")
    calibrate(gm, [(x,), (x * 0.5,)], CTX, "test")
    return gm, layers


def test_placement_quantizes_every_conv_linear_input_once_and_keeps_output_float():
    torch.manual_seed(0)
    m = TinyRes().eval()
    x = torch.randn(4, 3, 16, 16)
    gm, layers = _calibrated(m, x)
    assert isinstance(gm, fx.GraphModule)
    assert sorted(layers) == ["block.conv1", "block.conv2", "block.downsample.0", "fc",
                              "stem.0"]
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in gm.modules())  # folded
    nodes = {n.name: n for n in gm.graph.nodes}
    shared = [n for n in gm.graph.nodes if n.op == "call_module"
              and isinstance(gm.get_submodule(n.target), SharedQuant)]
    assert shared, "max-pool output must re-use its input's grid"
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.target in layers:
            src = n.args[0]
            assert src.op == "call_module" and isinstance(
                gm.get_submodule(src.target), (FakeQuant, SharedQuant)), n.target
    add = next(n for n in gm.graph.nodes if n.target in (torch.add, __import__("operator").add))
    assert all(isinstance(gm.get_submodule(a.target), (FakeQuant, SharedQuant))
               for a in add.args)
    out = nodes["output"].args[0]
    assert out.op == "call_module" and out.target == "fc"  # model output stays float
    with torch.no_grad():
        rel = float((gm(x) - m(x)).abs().max() / m(x).abs().max())
    assert 0 < rel < 0.1


def test_qat_bn_folding_is_exact_for_per_channel_weights():
    torch.manual_seed(0)
    m = SmallCNN(width=8)
    m.train()
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        m(x)  # non-trivial BN statistics
    gm, _, _ = prepare(m.eval(), (x,), QuantSpec(), CTX, "test", fold=False)
    calibrate(gm, [(x,)], CTX, "test")
    gm.eval()
    before = gm(x)
    assert fold_bn_quantized(gm) == 4
    assert torch.allclose(gm(x), before, rtol=1e-4, atol=1e-4)


def test_dynamic_int8_linear_and_rnns_match_float():
    torch.manual_seed(0)
    mlp, x = MLP(64, 128, 32, 3).eval(), torch.randn(4, 64)
    s = mo.Session(mlp, (x,), progress=False)
    q = s.apply("quantize.dynamic", keep_if_slower=False)
    assert sum(isinstance(m, DynLinear) for m in q.model.modules()) == 3
    assert any(v.dtype == torch.int8 for v in q.model.state_dict().values())
    r = s.runner("torch")(x)
    assert float((r - mlp(x)).abs().max() / mlp(x).abs().max()) < 0.05
    for cell in ("lstm", "gru"):
        m = LSTMClassifier(16, 32, 5, cell=cell).eval()
        xs = torch.randn(3, 7, 16)
        q = mo.Session(m, (xs,), progress=False).apply("quantize.dynamic",
                                                       keep_if_slower=False, min_features=4)
        assert isinstance(q.model.rnn, DynRNN)
        with torch.no_grad():
            ref_out, ref_h = m.rnn(xs)
            got_out, got_h = copy.deepcopy(q.model.rnn)(xs)
        assert torch.allclose(got_out, ref_out, atol=0.05)
        if cell == "lstm":
            assert torch.allclose(got_h[1], ref_h[1], atol=0.1)


def test_dynamic_keep_if_slower_records_its_decision():
    mlp, x = MLP(64, 128, 32, 3).eval(), torch.randn(4, 64)
    q = mo.Session(mlp, (x,), progress=False).apply("quantize.dynamic")
    notes = " ".join(q.lineage[-1].notes)
    assert "dynamic INT8" in notes
    assert len(q.metadata["quantized_layers"]) + len(q.metadata["float_layers"]) == 3


def test_bf16_runs_through_the_torch_runner():
    torch.manual_seed(0)
    m, x = TinyRes().eval(), torch.randn(2, 3, 16, 16)
    before = state_hash(m)
    s = mo.Session(m, (x,), progress=False)
    b = s.apply("quantize.bf16")
    assert b.props.compute_dtype == "bfloat16"
    assert all(p.dtype == torch.bfloat16 for p in b.model.parameters())
    out = s.runner("torch")(x)
    assert out.dtype == torch.float32
    assert float((out - m(x)).abs().max() / m(x).abs().max()) < 0.05
    assert state_hash(m) == before


@pytest.mark.parametrize("freezing", [True, False])
def test_bf16_on_torch_compile_with_and_without_freezing(freezing):
    torch.manual_seed(0)
    m, x = TinyRes().eval(), torch.randn(2, 3, 16, 16)
    s = mo.Session(m, (x,), progress=False)
    b = s.apply("quantize.bf16")
    before = state_hash(b.model)
    with s.runner("torch") as eager, s.runner("torch.compile", freezing=freezing) as comp:
        ref, got = eager(x), comp(x)
        assert got.dtype == torch.float32
        assert float((got - ref).abs().max() / ref.abs().max()) < 0.05
    # freezing folds the runner's private copy: the artifact keeps its parameters as they were
    assert state_hash(b.model) == before
    assert all(isinstance(p, torch.nn.Parameter) for p in b.model.parameters())


@pytest.mark.parametrize("keep_io", [True, False])
def test_onnx_convert_fp16(keep_io):
    torch.manual_seed(0)
    m, x = SmallCNN(width=8).eval(), torch.randn(2, 1, 8, 8)
    s = mo.Session(m, (x,), progress=False)
    s.export("onnx")
    h = s.apply("onnx.convert_fp16", keep_io_types=keep_io)
    inits = [i.data_type for i in h.model.graph.initializer]
    assert 10 in inits and 1 not in inits  # FLOAT16 weights, no FLOAT left
    r = s.runner("onnxruntime")
    xin = x if keep_io else x.half()
    out = r(xin).float()
    assert np.allclose(out.numpy(), m(x).detach().numpy(), atol=0.05, rtol=0.05)
    if not keep_io:
        with pytest.raises(mo.InputSpecError):
            r(x)


def test_float_layer_keeps_its_int8_neighbours_fused_in_onnxruntime():
    """Keeping one layer float must not drop the output grid of the INT8 layers around it:
    ORT must still fuse every other conv into QLinearConv (and the block's add)."""
    import onnx
    import onnxruntime as ort

    from modelopt_quant.sensitivity import keep_float, producers

    torch.manual_seed(0)
    m, x = TinyRes().eval(), torch.randn(4, 3, 16, 16)
    gm, layers = _calibrated(m, x)
    on = set(layers) - {"block.conv1"}
    assert keep_float(gm, on) == ["block.conv1"]  # it now reads the float tensor
    made_by = producers(gm)
    for q in act_quantizers(gm).values():
        if any(p in on for p in made_by.get(id(q), [])):
            assert q.enabled  # an INT8 layer's output grid stays
    art = mo.ModelArtifact("torch", gm, inputs=(mo.TensorSpec.from_tensor("input", x),),
                           outputs=(mo.TensorSpec.from_tensor("output", gm(x)),),
                           props=mo.ArtifactProps(onnx_exporter="torchscript"))
    s = mo.Session(art, (x,), progress=False)
    o = s.export("onnx", check_numerics=False)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(Path(tempfile.mkdtemp()) / "opt.onnx")
    ort.InferenceSession(o.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    convs = [n for n in on if n != "fc"]
    assert ops.count("QLinearConv") == len(convs), ops  # stem.0, conv2, downsample
    # block.conv1 stays a float Conv: ORT would quantize it (per-tensor) from DQ input
    assert ops.count("Conv") + ops.count("FusedConv") == 1, ops


def test_sensitivity_report_covers_every_layer_most_sensitive_first():
    torch.manual_seed(0)
    m, x = TinyRes().eval(), torch.randn(4, 3, 16, 16)
    gm, layers = _calibrated(m, x)
    rep = analyze(gm, [(x,)])
    assert sorted(rep.most_sensitive()) == sorted(layers)
    dbs = [r["sqnr_db"] for r in rep.rows]
    assert dbs == sorted(dbs)
    assert "| layer |" in rep.to_markdown()
    assert all(q.enabled for q in act_quantizers(gm).values())  # restored afterwards
    assert all(w.weight_quant.enabled for w in gm.modules() if isinstance(w, QuantConv))


def test_output_tail_keeps_a_projection_of_a_softmax_in_float():
    """YOLOv8's DFL: a 1x1 conv with fixed weights 0..15 turns the box-side softmax into
    pixel offsets. It has constant weights, so it looked like a layer and was quantized
    (mAP@0.5:0.95 of a trained YOLOv8n: 92.6 FP32 -> 90.0 INT8); a weighted op reading a
    Softmax (through reshapes) is now part of the float tail, on ONNX and OpenVINO."""
    pytest.importorskip("openvino")
    import torch

    import modelopt_core as mo
    from modelopt_onnx.quantize import output_tail as onnx_tail
    from modelopt_openvino.quantize import output_tail as ov_tail

    class DFLish(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.proj = torch.nn.Conv2d(16, 1, 1, bias=False)
            self.proj.weight.data[:] = torch.arange(16.0).view(1, 16, 1, 1)

        def forward(self, x):
            b = self.body(x).flatten(2)                       # [N, 16, HW]
            dist = b.view(x.shape[0], 16, -1, 1).softmax(1)  # distribution over 16 bins
            return self.proj(dist).flatten(1)

    x = torch.randn(2, 3, 8, 8)
    s = mo.Session(DFLish().eval(), (x,), progress=False)
    onnx_art = s.export("onnx")
    convs = [n.name for n in onnx_art.model.graph.node if n.op_type == "Conv"]
    assert convs[-1] in onnx_tail(onnx_art.model) and convs[0] not in onnx_tail(onnx_art.model)
    ov_art = mo.Session(DFLish().eval(), (x,), progress=False).export("openvino")
    ov_convs = [o.get_friendly_name() for o in ov_art.model.get_ordered_ops()
                if o.get_type_name() == "Convolution"]
    tail = ov_tail(ov_art.model)
    assert ov_convs[-1] in tail and ov_convs[0] not in tail
