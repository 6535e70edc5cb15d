"""Model zoo: facenet-pytorch's MTCNN nets (PNet, RNet, ONet) with the real weights that ship
in its wheel (``zoo_models.mtcnn``; the package is installed with ``--no-deps`` and its
torchvision-importing detection code is never imported), fed natural photo crops
(``zoo_models.mtcnn_crops``: scikit-learn's two sample photos, resized as MTCNN resizes its
candidate windows, normalized as facenet-pytorch does; the photos hold no faces, so the face
probabilities are mostly low: PNet's windows reach 0.97, RNet's 0.03, ONet's 0.27). ONNX,
OpenVINO and TFLite exports match torch on every output; INT8 OpenVINO (NNCF) keeps the
face/no-face decision and the box offsets.

Measured here (OpenVINO 2026.4, NNCF 3.4): FP32 exports within 2e-6 of torch; INT8 OpenVINO
face/no-face agreement PNet 0.9985 of 16 x 27 x 27 windows, RNet and ONet 16/16.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import state_hash
from zoo_models import mtcnn, mtcnn_crops, small_batch_session

#: net -> (zoo row, input size: PNet runs on any size >= 12, this is one pyramid level)
ROOT = Path(__file__).resolve().parents[2]
NETS = {"pnet": ("MTCNN PNet", 64), "rnet": ("MTCNN RNet", 24), "onet": ("MTCNN ONet", 48)}


@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.zoo(model=NETS[n][0]))
                                        for n in NETS])
def net(request):
    model = mtcnn(request.param)
    x = mtcnn_crops(16, NETS[request.param][1])
    with torch.no_grad():
        ref = model(x)
    return request.param, model, x, ref


def test_mtcnn_loads_without_torchvision():
    """In a fresh interpreter: building the nets imports neither torchvision nor the
    ``facenet_pytorch`` package (whose ``__init__`` does)."""
    code = ("import sys; sys.path.insert(0, 'tests'); from zoo_models import mtcnn; "
            "[mtcnn(n) for n in ('pnet', 'rnet', 'onet')]; "
            "bad = [m for m in ('torchvision', 'facenet_pytorch') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True,
                          text=True, timeout=120, check=False)
    if "Skipped" in proc.stderr and "facenet-pytorch is not installed" in proc.stderr:
        pytest.skip("facenet-pytorch is not installed (pip install --no-deps facenet-pytorch)")
    assert proc.returncode == 0, proc.stderr[-2000:]


def _session(model, x):
    return small_batch_session(model, x)


@pytest.mark.parametrize("target,backend", [
    pytest.param("onnx", "onnxruntime", marks=pytest.mark.zoo(cell="ONNX")),
    pytest.param("openvino", "openvino", marks=pytest.mark.zoo(cell="OpenVINO")),
    pytest.param("tflite", "tflite", marks=pytest.mark.zoo(cell="TFLite"))])
def test_mtcnn_export_matches_torch(net, target, backend, record_property):
    pytest.importorskip({"onnx": "onnxruntime", "openvino": "openvino",
                         "tflite": "litert_torch"}[target])
    _, model, x, ref = net
    before = state_hash(model)
    s = _session(model, x)
    s.export(target)
    with s.runner(backend) as r:
        got = r(x)
    assert len(got) == len(ref)
    for g, e in zip(got, ref):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-4)
    err = max(float((g - e).abs().max()) for g, e in zip(got, ref))
    record_property("zoo", f"max abs error {err:.2g}")
    assert state_hash(model) == before


@pytest.mark.zoo(cell="INT8 OpenVINO")
def test_mtcnn_int8_openvino_keeps_the_decision(net, record_property):
    pytest.importorskip("openvino")
    _, model, x, ref = net
    before = state_hash(model)
    s = _session(model, x)
    s.export("openvino")
    art = s.apply("openvino.quantize")
    assert art.metadata["openvino_fake_quantize"] > 0
    with s.runner("openvino") as r:
        got = r(x)
    prob, prob_ref = got[-1], ref[-1]  # [B, 2(, h, w)]: no-face / face probabilities
    agree = float((prob.argmax(1) == prob_ref.argmax(1)).float().mean())
    prob_err = float((prob - prob_ref).abs().mean())
    box_err = float((got[0] - ref[0]).abs().mean() / ref[0].abs().mean())
    record_property("zoo", f"face/no-face agreement {agree:.4f}, face prob mean abs error "
                           f"{prob_err:.3f}, box offsets mean error {box_err:.1%}")
    assert agree >= 0.98, agree
    assert prob_err <= 0.02, prob_err
    assert box_err <= 0.2, box_err
    assert state_hash(model) == before
