"""The detection workload end to end on tiny settings: the detectors export to ONNX, OpenVINO
and TFLite with all three raw head outputs within tolerance of torch; the mAP eval_fn runs on
torch, ONNX Runtime and OpenVINO runners; slimming + feature KD + INT8 run through the Session
on the detector; ``modelopt demo --task detection`` writes its reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import state_hash

pytest.importorskip("pycocotools")

import modelopt_core as mo
from modelopt_demo.detection import (
    MobileDetector,
    YoloDetector,
    detection_eval_fn,
    load_detection_data,
    train_detector,
)
from modelopt_demo.detection.pipeline import detection_session


@pytest.fixture(scope="module")
def data():
    return load_detection_data(n_train=48, n_val=8, n_test=12, size=32)


@pytest.fixture(scope="module")
def trained(data):
    """A width-4 YoloDetector after one epoch (behaviour, not quality)."""
    torch.manual_seed(0)
    m = YoloDetector(width=4)
    train_detector(m, data, epochs=1, batch_size=16, sparsity=1e-4)
    return m


def _heads_close(runner, model, x, atol):
    with torch.no_grad():
        ref = model(x)
    got = runner(x)
    assert isinstance(got, (tuple, list)) and len(got) == 3
    for g, r in zip(got, ref):
        torch.testing.assert_close(torch.as_tensor(g), r, rtol=1e-3, atol=atol)


def _threads_match_sequential(runner, xs):
    """The seed's multi-threaded pattern, ThreadPoolExecutor(4).map(runner, images): every
    head of every answer equals the sequential answer for that image."""
    from concurrent.futures import ThreadPoolExecutor

    expected = [runner(x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(runner, xs))
    for i, (g, e) in enumerate(zip(got, expected)):
        for h, (gh, eh) in enumerate(zip(g, e)):
            torch.testing.assert_close(gh, eh, rtol=1e-5, atol=1e-5,
                                       msg=lambda m, i=i, h=h: f"image {i} head {h}: {m}")


@pytest.mark.parametrize("variant,target,backend", [
    (YoloDetector, "onnx", "onnxruntime"), (YoloDetector, "openvino", "openvino"),
    (YoloDetector, "tflite", "tflite"), (MobileDetector, "tflite", "tflite")])
def test_exports_keep_all_three_heads(variant, target, backend, data):
    if target == "tflite":
        pytest.importorskip("litert_torch")
    if target == "openvino":
        pytest.importorskip("openvino")
    torch.manual_seed(0)
    model = variant(width=4).eval()
    before = state_hash(model)
    s = mo.Session(model, (data.example,), progress=False)
    s.export(target)
    with s.runner(backend) as r:
        _heads_close(r, model, data.example, atol=1e-4)
        g = torch.Generator().manual_seed(0)
        _threads_match_sequential(r, [torch.rand(data.example.shape, generator=g)
                                      for _ in range(16)])
    assert state_hash(model) == before


def test_eval_fn_on_torch_and_onnxruntime(trained, data):
    ev = detection_eval_fn(data.test)
    s = mo.Session(trained, (data.example,), eval_fn=ev, progress=False)
    base = ev(trained)
    assert 0.0 <= base <= 100.0
    with s.runner("torch") as r:
        assert ev(r) == pytest.approx(base)
    s.export("onnx")
    with s.runner("onnxruntime") as r:
        assert ev(r) == pytest.approx(base, abs=1e-6)


def test_slim_kd_int8_pipeline_on_the_detector(trained, data):
    pytest.importorskip("torch_pruning")
    before = state_hash(trained)
    s = detection_session(trained, data, batch_size=16, calib_batches=2)
    slim = s.apply("prune.slimming", ratio=0.5, epochs=1, sparsity=0.0, lr=1e-4)
    assert slim.metadata["params"] < 0.7 * slim.metadata["params_before"]
    kd = s.apply("distill.features", epochs=1, lr=1e-3)
    assert any("head4" in n for n in kd.lineage[-1].notes)  # heads are distilled
    outs = kd.model(data.example)
    assert [o.shape for o in outs] == [o.shape for o in trained(data.example)]
    s.export("onnx")
    q = s.apply("onnx.quantize_static", per_channel=True)
    with s.runner("onnxruntime", q) as r:
        heads = r(data.example)
        assert len(heads) == 3 and all(torch.isfinite(torch.as_tensor(h)).all() for h in heads)
        assert 0.0 <= s.eval_fn(r) <= 100.0
    assert state_hash(trained) == before


def test_cli_demo_detection_tiny(tmp_path):
    env = dict(os.environ, MODELOPT_DETECT_SIZE="tiny")
    out = tmp_path / "det"
    proc = subprocess.run([sys.executable, "-m", "modelopt_core", "demo", "--task",
                           "detection", "--epochs", "1", "--out", str(out), "--no-progress"],
                          check=False, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "report.json").read_text())["rows"]
    steps = [r["step"].split(":", 1)[-1] for r in rows]
    # one Session's lineage: slim -> KD (+ the detection loss) -> OpenVINO -> INT8
    assert steps[:5] == ["original", "prune.slimming", "distill.features", "openvino",
                         "openvino.quantize"], steps
    assert (out / "report.md").exists() and (out / "final-artifact").is_dir()
    assert "mAP@0.5" in proc.stdout


@pytest.mark.parametrize("name", ["detect-mobile.toml", "detect-server.toml"])
def test_detection_recipes_validate(name, capsys):
    from pathlib import Path

    from modelopt_core.cli import main

    import modelopt_core as mo

    recipe = Path(__file__).resolve().parents[2] / "docs" / "recipes" / name
    runnable = not mo.recipe.unavailable_here(mo.recipe.plan_recipe(recipe))
    # exit 1: valid, but a component it uses (TensorRT without a GPU) is not available here
    assert main(["run", str(recipe), "--dry-run"]) == (0 if runnable else 1)
    out = capsys.readouterr().out
    assert ("recipe OK" if runnable else "recipe valid but not runnable here") in out
    assert "modelopt_demo.detection.recipes:trained_detector" in out
    if name == "detect-server.toml":
        assert "tensorrt" in out and "'fp16': True" in out
