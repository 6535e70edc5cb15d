"""Model zoo, the serve and Core ML cells: YOLOv8n (160 px), EfficientNet-Lite0 with its real
weights (160 px photo crops) and a small Hugging Face ViT (64 px, seeded random weights).

serve: the ONNX export, saved as an artifact, is served by ``modelopt serve`` in its own
process on a real loopback socket, as an operator starts it; one HTTP ``/predict`` answer
(safetensors in and out) equals the local ONNX Runtime runner's output on the same input.

Core ML (convert): ``s.export("coreml")`` converts the model to an ML Program whose package
validates with coremltools alone (inputs and outputs named and shaped, ops and fp16 weights).
Core ML prediction runs only on macOS: off macOS the export says its numerics are not checked,
and on macOS the prediction is compared with torch. The user's model is untouched by both."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from helpers import state_hash
from zoo_models import efficientnet_lite0, photo_crops, yolo

import modelopt_core as mo

MACOS = sys.platform == "darwin"

zoo = pytest.mark.zoo  # the docs/model-zoo.md cell a test is evidence for (tools/zoo_doc.py)


def _vit() -> tuple[torch.nn.Module, torch.Tensor]:
    """The zoo's small ViT (test_zoo_hf_vision's config), seeded weights of order 1."""
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = tf.ViTForImageClassification(tf.ViTConfig(
        image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=128, num_labels=10)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model, torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _yolov8n() -> tuple[torch.nn.Module, torch.Tensor]:
    return yolo("yolov8n.yaml"), torch.rand(1, 3, 160, 160,
                                            generator=torch.Generator().manual_seed(0))


def _lite0() -> tuple[torch.nn.Module, torch.Tensor]:
    return efficientnet_lite0(), photo_crops(1, 160, seed=7)


BUILD = {"yolov8n": _yolov8n, "efficientnet-lite0": _lite0, "hf-vit": _vit}


@pytest.fixture(scope="module", params=[pytest.param(k, marks=zoo(model=k)) for k in BUILD])
def zoo_model(request):
    """(name, model, one example input), built once per module."""
    model, x = BUILD[request.param]()
    return request.param, model, x


def _torch_out(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The first output tensor of the model on ``x`` (YOLO: decoded boxes and scores; HF:
    logits), computed on a copy: a call fills YOLO's per-shape caches."""
    with torch.no_grad():
        out = copy.deepcopy(model)(x)
    out = out.logits if hasattr(out, "logits") else out
    return out[0] if isinstance(out, tuple | list) else out


@zoo(cell="serve")
def test_served_onnx_answers_as_the_local_runner(zoo_model, tmp_path, record_property):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    from modelopt_serve import codec
    from serve_helpers import ServeProcess

    from modelopt_core.io import flatten_outputs, leaf_names

    name, model, x = zoo_model
    before = state_hash(model)
    s = mo.Session(model, (x,), progress=False)
    s.export("onnx")
    path = s.current.save(tmp_path / name)
    art = mo.load_artifact(path)
    inputs = {art.inputs[0].name: x}
    with mo.load_runner(art, "onnxruntime") as r:
        local = r(x)
    flat, tree = flatten_outputs(local, "local")
    want = dict(zip(leaf_names(tree, len(flat)), flat))
    with ServeProcess(path, "--backend", "onnxruntime") as server:
        resp = httpx.post(f"{server.url}/predict", content=codec.encode_inputs(inputs),
                          headers={"content-type": codec.TENSORS}, timeout=60)
        assert resp.status_code == 200, resp.text
        got = codec.decode_outputs(resp.content, codec.TENSORS)
        assert server.stop() == 0, server.log()
    assert set(got) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-5)
    # and the local runner is the export of the model: the answer is the model's
    torch.testing.assert_close(want[next(iter(want))], _torch_out(model, x), rtol=1e-3,
                               atol=1e-2)
    assert state_hash(model) == before
    record_property("zoo", f"HTTP answer = ORT runner, {len(want)} output(s)")


@zoo(cell="Core ML (convert)")
def test_coreml_converts_and_the_package_validates(zoo_model, record_property):
    pytest.importorskip("coremltools")
    from modelopt_coreml.package import validate_package

    _, model, x = zoo_model
    before = state_hash(model)
    s = mo.Session(model, (x,), progress=False)
    art = s.export("coreml")
    assert state_hash(model) == before, "exporting changed the user's model"
    notes = " ".join(art.lineage[-1].notes)
    summary = validate_package(art.model)
    assert summary["op_count"] > 0
    inp = summary["inputs"][0]
    assert inp["dtype"] == "FLOAT32" and inp["shape"][1:] == list(x.shape[1:]), inp
    assert set(summary["weights"]) >= {"fp16"}, summary["weights"]
    ref = _torch_out(model, x)
    assert summary["outputs"][0]["dtype"] == "FLOAT32", summary["outputs"]
    assert tuple(art.outputs[0].shape[1:]) == tuple(ref.shape[1:]), art.outputs
    if MACOS:
        with s.runner("coreml") as r:
            got = r(x)
        got = got[0] if isinstance(got, tuple | list) else got
        assert (got - ref).abs().max() <= 2e-2 * ref.abs().max() + 1e-3
        record_property("zoo", f"{summary['op_count']} ops, fp16; prediction matches torch")
    else:
        assert "numerics not checked: Core ML prediction runs only on macOS" in notes
        record_property("zoo", f"{summary['op_count']} ops, fp16; prediction: macOS only")
