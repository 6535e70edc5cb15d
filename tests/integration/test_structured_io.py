"""Models as users have them: keyword inputs, dict / ModelOutput / nested outputs, dynamic axes.

The runner on every backend takes the inputs the model takes and returns the structure the
model returns; ONNX inputs and outputs are named after the keys.
"""

from __future__ import annotations

import pytest
import torch

import modelopt_core as mo
from helpers import state_hash


class DictNet(torch.nn.Module):
    """Keyword inputs (``image``, ``mask``), a nested dict output with a tuple inside."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 5)

    def forward(self, image, mask):
        f = torch.relu(self.conv(image)) * mask
        pooled = f.mean(dim=(2, 3))
        return {"logits": self.head(pooled), "aux": (pooled, f), "unused": None}


def _dict_inputs(b=2, h=6, w=6):
    return {"image": torch.randn(b, 3, h, w), "mask": torch.ones(b, 1, h, w)}


def _assert_same_structure(got, ref, rtol=1e-4, atol=1e-5):
    assert type(got) is type(ref)
    if isinstance(ref, torch.Tensor):
        torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)
    elif isinstance(ref, dict):
        assert list(got) == [k for k in ref if ref[k] is not None]
        for k in got:
            _assert_same_structure(got[k], ref[k], rtol, atol)
    else:
        assert len(got) == len(ref)
        for g, r in zip(got, ref):
            _assert_same_structure(g, r, rtol, atol)


def test_dict_model_same_structure_on_torch_and_onnxruntime(tmp_path):
    torch.manual_seed(0)
    net = DictNet().eval()
    before = state_hash(net)
    s = mo.Session(net, _dict_inputs(), progress=False)
    assert [i.name for i in s.original.inputs] == ["image", "mask"]
    assert [o.name for o in s.original.outputs] == ["logits", "aux.0", "aux.1"]
    assert s.original.model.module is net  # a positional view around the user's object
    x = _dict_inputs(3)
    with torch.no_grad():
        ref = net(**x)
    ref.pop("unused")
    with s.runner("torch") as r:
        _assert_same_structure(r(**x), ref)          # keyword
        _assert_same_structure(r(x), ref)            # one dict
        _assert_same_structure(r(x["image"], x["mask"]), ref)  # positional, dict order
    onnx_art = s.export("onnx")
    assert [i.name for i in onnx_art.model.graph.input] == ["image", "mask"]
    assert [o.name for o in onnx_art.model.graph.output] == ["logits", "aux.0", "aux.1"]
    with s.runner("onnxruntime") as r:
        _assert_same_structure(r(**x), ref)
    # the structure survives save/load, for ONNX and for torch (into the user's class)
    loaded = mo.load_artifact(onnx_art.save(tmp_path / "onnx"))
    with s.runner("onnxruntime", artifact=loaded) as r:
        _assert_same_structure(r(**x), ref)
    s.original.save(tmp_path / "torch")
    back = mo.load_artifact(tmp_path / "torch", model=DictNet())
    with s.runner("torch", artifact=back) as r:
        _assert_same_structure(r(**x), ref, rtol=0, atol=0)
    assert state_hash(net) == before


def test_runner_input_mistakes_are_typed():
    s = mo.Session(DictNet().eval(), _dict_inputs(), progress=False)
    r = s.runner("torch")
    x = _dict_inputs()
    with pytest.raises(mo.InputSpecError, match="missing \\['mask'\\]"):
        r(image=x["image"])
    with pytest.raises(mo.InputSpecError, match="unknown \\['masks'\\]"):
        r(image=x["image"], masks=x["mask"])
    with pytest.raises(mo.InputSpecError, match="not both"):
        r(x["image"], mask=x["mask"])
    with pytest.raises(mo.InputSpecError, match="dim 'batch' is 3"):
        r(image=x["image"], mask=torch.ones(3, 1, 6, 6))


def test_model_returning_non_tensors_is_refused():
    class Bad(torch.nn.Module):
        def forward(self, x):
            return {"y": x, "n": 3}

    with pytest.raises(mo.FormatError, match="n: a int is not a tensor"):
        mo.Session(Bad(), (torch.randn(1, 2),))


def test_dynamic_axes_beyond_batch_reach_onnx_and_input_checks():
    torch.manual_seed(0)
    net = DictNet().eval()
    axes = {"image": {2: "height", 3: "width"}, "mask": {2: "height", 3: "width"}}
    s = mo.Session(net, _dict_inputs(), dynamic_axes=axes, progress=False)
    assert s.original.inputs[0].shape == ("batch", 3, "height", "width")
    assert s.original.outputs[2].shape == ("batch", 4, "height", "width")
    assert s.original.outputs[0].shape == ("batch", 5)
    art = s.export("onnx")
    dims = [d.dim_param or d.dim_value for d in art.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) and d for d in (dims[0], dims[2], dims[3]))
    x = _dict_inputs(1, 9, 13)
    with torch.no_grad():
        ref = net(**x)
    with s.runner("onnxruntime") as r:
        out = r(**x)
        torch.testing.assert_close(out["aux"][1], ref["aux"][1], rtol=1e-4, atol=1e-5)
        with pytest.raises(mo.InputSpecError, match="'height' is 8, but 9 in input 'image'"):
            r(image=x["image"], mask=torch.ones(1, 1, 8, 13))
    with pytest.raises(mo.InputSpecError, match="unknown input"):
        mo.Session(net, _dict_inputs(), dynamic_axes={"img": {2: "h"}})
    with pytest.raises(mo.InputSpecError, match="dim indices"):
        mo.Session(net, _dict_inputs(), dynamic_axes={"image": {7: "h"}})


def test_export_with_static_batch():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    s = mo.Session(net, (torch.randn(2, 4),), progress=False)
    art = s.export("onnx", dynamic_batch=False)
    assert art.inputs[0].shape == (2, 4) and art.outputs[0].shape == (2, 3)
    assert art.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    x = torch.randn(2, 4)
    with s.runner("onnxruntime") as r:
        torch.testing.assert_close(r(x), net(x), rtol=1e-4, atol=1e-5)
        with pytest.raises(mo.InputSpecError, match="does not match"):
            r(torch.randn(3, 4))


def test_failed_chained_export_leaves_history_unchanged():
    net = torch.nn.Linear(4, 3).eval()
    s = mo.Session(net, (torch.randn(2, 4),), progress=False)
    with pytest.raises(mo.ConfigError, match="bad_option"):
        s.export("tensorrt", bad_option=1)
    assert len(s.history) == 1

    class Broken(mo.Exporter):
        """Fails while running (after the onnx link has run)."""

        name, source, target = "broken", "onnx", "broken"

        def export(self, artifact, ctx):
            raise mo.ExportError("broken: boom")

    class Plugin:
        @mo.hookimpl
        def register_exporters(self, register):
            register(Broken)

    pm = mo.PluginManager()
    pm.register_plugin(Plugin(), name="broken-plugin")
    s = mo.Session(net, (torch.randn(2, 4),), plugins=pm, progress=False)
    with pytest.raises(mo.ExportError, match="boom"):
        s.export("broken")
    assert len(s.history) == 1 and s.current.format == "torch"


transformers = pytest.importorskip("transformers")


def test_bert_like_model_through_ort_dynamic_int8():
    """A transformers BERT built from a small config (random weights, no download): dict in,
    ModelOutput out, export -> onnx.quantize_dynamic -> onnxruntime, variable sequence length."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)
    bert = BertModel(cfg).eval()

    def batch(b, n):
        return {"input_ids": torch.randint(0, 120, (b, n)),
                "attention_mask": torch.ones(b, n, dtype=torch.long),
                "token_type_ids": torch.zeros(b, n, dtype=torch.long)}

    ex = batch(2, 16)
    s = mo.Session(bert, ex, dynamic_axes={k: {1: "sequence"} for k in ex}, progress=False)
    assert s.original.outputs[0].shape == ("batch", "sequence", 64)
    s.export("onnx")
    q = s.apply("onnx.quantize_dynamic")
    assert any(n.op_type == "MatMulInteger" for n in q.model.graph.node)  # really INT8
    x = batch(3, 11)
    with torch.no_grad():
        ref = bert(**x)
    for backend, art in (("torch", s.original), ("onnxruntime", q)):
        with s.runner(backend, artifact=art) as r:
            out = r(**x)
        assert type(out) is type(ref) and list(out.keys()) == list(ref.keys())
        for k in ref.keys():
            cos = torch.nn.functional.cosine_similarity(out[k].flatten(), ref[k].flatten(), dim=0)
            assert cos >= 0.99, (backend, k, float(cos))
        assert out.last_hidden_state.shape == (3, 11, 64)


class FeatsHead(torch.nn.Module):
    """A detector-like module: decoded scores plus the feature maps it also returns (as
    Ultralytics' Detect returns 'feats' beside its boxes); training mode returns the raw
    maps only."""

    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        f = self.c(x)
        if self.training:
            return [f]
        return f.mean((2, 3)).sigmoid(), {"feats": [f, f * 2]}


def test_session_outputs_keeps_only_the_deployed_outputs(tmp_path):
    """Session(outputs=...) deploys the outputs a user consumes: every artifact and runner
    has just those (an IR without the extra feature maps runs faster), a save/load round trip
    keeps the selection, training still sees the whole training-mode output, and the user's
    module is untouched."""
    torch.manual_seed(0)
    model = FeatsHead().eval()
    x = torch.randn(2, 3, 8, 8)
    s = mo.Session(model, (x,), progress=False, outputs=["output_0"])
    assert [o.name for o in s.original.outputs] == ["output_0"]
    with torch.no_grad():
        ref = model(x)[0]
    for target, backend in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        s.export(target)
        assert len(s.current.outputs) == 1
        with s.runner(backend) as r:
            torch.testing.assert_close(r(x), ref, rtol=1e-4, atol=1e-5)
    back = mo.load_artifact(s.original.save(tmp_path / "torch"), model=FeatsHead().eval())
    back.model.module.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(back.model(x)[0], ref)
        assert len(back.model(x)) == 1
        assert isinstance(s.original.model.train()(x)[0], torch.Tensor)  # the raw map
    s.original.model.eval()
    assert model.training is False and isinstance(model(x), tuple)
    two = mo.Session(model, (x,), progress=False, outputs=[0, "output_1.feats.1"])
    with two.runner("torch") as r:
        a, b = r(x)
    assert a.shape == (2, 4) and b.shape == (2, 4, 6, 6)
    for bad, match in (([5], "does not return"), (["boxes"], "does not return"),
                       ([0, "output_0"], "twice"), ("output_0", "non-empty list")):
        with pytest.raises(mo.InputSpecError, match=match):
            mo.Session(model, (x,), progress=False, outputs=bad)
