"""The production loop closed, over a real socket: ``modelopt serve`` (a subprocess) the FP32
artifact of the digits CNN with traffic capture on, send it traffic from a shifted
distribution (a brighter, higher-contrast sensor: 2x + 3 in the model's standardized units),
stop it, then ``modelopt optimize --calibration-from`` the capture. Its INT8 artifact agrees
with FP32 on fresh traffic of that distribution far more often than the INT8 that
``modelopt optimize --calibration`` makes from the original (training-distribution) data."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import trained_digits_cnn
from serve_helpers import ServeProcess

import modelopt_core as mo
from modelopt_core.captured import MANIFEST, read_captured
from modelopt_core.cli import main

#: the traffic's shift: x -> SCALE * x + SHIFT (standardized units)
SCALE, SHIFT = 2.0, 3.0
#: the INT8 search both runs do: objective size (INT8 is smaller: no timing decides), two
#: trials (the plain export, then static INT8), a wide budget (the test measures agreement)
SEARCH = ["--target", "onnxruntime", "--objective", "size", "--trials", "2",
          "--max-accuracy-drop", "20", "--no-progress"]


def _optimize(capsys: Any, *args: str) -> str:
    """``modelopt optimize ARGS`` (in this process: the CLI's own entry, ``main``)."""
    code = main(["optimize", *args, *SEARCH])
    said = capsys.readouterr()
    assert code == 0, said.out[-3000:] + said.err[-3000:]
    return said.out


def _agreement(path: Path, fp32: mo.ModelArtifact, x: torch.Tensor) -> float:
    """Top-1 agreement (%) of the artifact at ``path`` with FP32 on ``x`` (ONNX Runtime)."""
    with mo.load_runner(mo.load_artifact(path)) as r, mo.load_runner(fp32) as ref:
        return 100.0 * float((r(x).argmax(1) == ref(x).argmax(1)).float().mean())


def _npz(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, input=x.numpy())
    return buf.getvalue()


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    """(folder, the FP32 artifact, the shifted traffic, fresh samples of it, original data)."""
    m, d = trained_digits_cnn(epochs=2)
    tmp = tmp_path_factory.mktemp("loop")
    s = mo.Session(m, (d.example,), progress=False)
    fp32 = s.export("onnx", exporter="torchscript")
    fp32.save(tmp / "fp32")
    s.original.save(tmp / "fp32-torch")  # the weights, for a recipe
    train = torch.cat([b[0] for b in d.train])
    np.savez(tmp / "orig.npz", input=train[:256].numpy())  # the original calibration data
    traffic = torch.cat([b[0] for b in d.test]) * SCALE + SHIFT  # what production sees
    fresh = train[256:1056] * SCALE + SHIFT  # the same distribution, never sent or captured
    return tmp, mo.load_artifact(tmp / "fp32"), traffic, fresh


@pytest.fixture(scope="module")
def captured(production):
    """The capture folder of a ``modelopt serve --capture`` that answered the shifted
    traffic (requests of 1 to 8 rows), and how many samples were sent."""
    import httpx

    tmp, _, traffic, _ = production
    cap = tmp / "capture"
    with ServeProcess(tmp / "fp32", "--capture", str(cap), "--capture-rate", "1",
                      "--capture-max", "300") as srv:
        at = 0
        with httpx.Client(timeout=30) as client:
            for i in range(200):
                x = traffic[at:at + 1 + i % 8]
                if not len(x):
                    break
                at += len(x)
                r = client.post(f"{srv.url}/predict", content=_npz(x),
                                headers={"content-type": "application/x-npz",
                                         "accept": "application/json"})
                assert r.status_code == 200, r.text
        assert srv.stop() == 0, srv.log()  # a clean stop flushes the capture
    return cap, at


def test_recalibrating_on_captured_traffic_beats_the_original_calibration(production,
                                                                          captured, capsys):
    tmp, fp32, traffic, fresh = production
    cap, sent = captured
    manifest = json.loads((cap / MANIFEST).read_text())
    assert manifest["seen"] == sent and manifest["kept"] == min(300, sent)
    assert manifest["outputs"] is False and manifest["input_names"] == ["input"]
    got = read_captured(cap, fp32.inputs)
    assert got.count == min(300, sent)
    sent_rows = {r.tobytes() for r in traffic[:sent].numpy()}
    assert all(r.tobytes() in sent_rows for r in got.arrays["input"])  # the real requests

    out_a = _optimize(capsys, "--model", str(tmp / "fp32"), "--calibration",
                      str(tmp / "orig.npz"), "--out", str(tmp / "orig-int8"))
    out_b = _optimize(capsys, "--model", str(tmp / "fp32"), "--calibration-from", str(cap),
                      "--eval-from", str(cap), "--out", str(tmp / "captured-int8"))
    for out in (out_a, out_b):  # both saved the static INT8 trial as the best
        assert re.search(r"^best: trial \d+: onnx\.quantize_static\(", out, re.MULTILINE), out
    report = (tmp / "captured-int8" / "report.md").read_text()
    held = max(8, got.count // 4)
    for text in (out_b, report):  # how many captured samples served which purpose, and when
        assert f"on {held} captured sample(s) from {cap}" in text
        assert f"calibrated on {got.count - held} captured sample(s) from {cap}" in text
        assert re.search(r"captured \d{4}-\d\d-\d\d \d\d:\d\d:\d\d to .* UTC", text)

    orig_int8 = _agreement(tmp / "orig-int8" / "best", fp32, fresh)
    captured_int8 = _agreement(tmp / "captured-int8" / "best", fp32, fresh)
    print(f"\ntop-1 agreement with FP32 on {len(fresh)} fresh shifted samples: INT8 "
          f"calibrated on the original data {orig_int8:.1f}%, on captured traffic "
          f"{captured_int8:.1f}%")
    assert captured_int8 > orig_int8
    assert captured_int8 - orig_int8 > 20  # not noise: measured 16-28% vs 98%


RECIPE = """
model = "modelopt_demo.models:SmallCNN"
model_kwargs = {width = 8}
weights = "fp32-torch"
example_inputs = [[1, 1, 8, 8]]
data = "modelopt_demo.recipes:digits_data"
[search]
target = "onnxruntime"
objective = "size"
max_accuracy_drop = 20
trials = 1
[search.space]
prune = ["none"]
recovery = ["none"]
graph = ["none"]
precision = ["onnx.quantize_static"]
fixed = {"export.onnx" = {exporter = "torchscript"}}
"""


def test_a_recipe_calibrates_on_the_capture_and_keeps_its_labels(production, captured,
                                                                  capsys):
    """``modelopt optimize recipe.toml --calibration-from DIR``: the recipe's model and
    labelled eval_fn, every captured sample for calibration; the report says so."""
    tmp, fp32, _, fresh = production
    cap, _ = captured
    (tmp / "search.toml").write_text(RECIPE)
    code = main(["optimize", str(tmp / "search.toml"), "--calibration-from", str(cap),
                 "--out", str(tmp / "recipe-out"), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    n = read_captured(cap, fp32.inputs).count
    note = f"accuracy: the recipe's eval_fn; calibrated on {n} captured sample(s) from {cap}"
    assert note in out.out and note in (tmp / "recipe-out" / "report.md").read_text()
    assert _agreement(tmp / "recipe-out" / "best", fp32, fresh) > 90


def test_capture_folders_that_cannot_serve_are_refused_with_what_to_do(production, captured,
                                                                       tmp_path, capsys):
    from modelopt_serve.capture import Capture

    tmp, _, traffic, _ = production
    cap, _ = captured
    base = ["optimize", "--model", str(tmp / "fp32"), "--target", "onnxruntime",
            "--trials", "1", "--out", str(tmp_path / "out"), "--no-progress"]

    def refused(*argv: str) -> str:
        assert main([*base, *argv]) == 1
        return capsys.readouterr().err

    err = refused("--calibration-from", str(tmp))
    assert "DataError" in err and f"--calibration-from {tmp}: not a capture folder" in err
    assert "modelopt serve MODEL --capture" in err
    err = refused("--calibration", str(tmp / "orig.npz"), "--calibration-from", str(cap))
    assert "ConfigError" in err and "give one" in err
    other = Capture(tmp_path / "other", 1.0, 10, ["x"])  # another model's traffic
    other.offer([np.zeros((4, 3), np.float32)])
    other.close()
    err = refused("--calibration-from", str(tmp_path / "other"))
    assert "captured from another model" in err and str(tmp_path / "other") in err
    Capture(tmp_path / "empty", 1.0, 10, ["input"]).close()
    err = refused("--eval-from", str(tmp_path / "empty"), "--calibration",
                  str(tmp / "orig.npz"))
    assert f"--eval-from {tmp_path / 'empty'}: the capture holds no samples yet" in err
    few = Capture(tmp_path / "few", 1.0, 10, ["input"])
    few.offer([traffic[:5]])
    few.close()
    err = refused("--calibration-from", str(tmp_path / "few"))
    assert f"{tmp_path / 'few'}: 5 captured sample(s)" in err and "at least 16" in err
