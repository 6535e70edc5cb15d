"""LiteRT / TensorFlow Lite target (plugin ``modelopt_tflite``): torch -> .tflite with
litert-torch (FP32, FP16 weights, full-integer INT8 calibrated on the session's data,
dynamic-range INT8), run by ai-edge-litert's Interpreter behind the Runner contract, saved and
reloaded as an artifact, measured by ``Session.compare``.

The bar of issue 11: TFLite INT8 of the digits CNN loses <= 1 accuracy point.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import state_hash

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

import modelopt_core as mo
from modelopt_demo.data import accuracy_fn
from modelopt_demo.demo import train_demo_model


@pytest.fixture(scope="module")
def trained():
    """The digits CNN trained for 3 epochs, its data and its torch test accuracy."""
    model, data = train_demo_model(epochs=3, progress=False)
    return model, data, accuracy_fn(data.test)(model)


def session(model, data, **kw):
    return mo.Session(model, (data.example,), calibration_data=data.calibration,
                      eval_fn=accuracy_fn(data.test), progress=False, **kw)


@pytest.fixture(scope="module")
def exported(trained):
    """One session holding the FP32, FP16 and INT8 exports (each from the torch original)."""
    model, data, _ = trained
    before = state_hash(model)
    s = session(model, data)
    arts = {}
    for q in ("none", "fp16", "int8"):
        arts[q] = s.export("tflite", quantization=q)
        s.discard()  # the next export starts from the torch original again
    assert state_hash(model) == before, "exporting changed the user's model"
    return s, arts


def _ops_and_dtypes(flat: bytes) -> tuple[set[str], set[str]]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=flat)
    ops = {o["op_name"] for o in it._get_ops_details()}
    dtypes = {t["dtype"].__name__ for t in it.get_tensor_details()}
    return ops, dtypes


def test_int8_loses_at_most_one_point_and_fp32_fp16_match_torch(trained, exported):
    _, data, base = trained
    s, arts = exported
    acc = {}
    for q, art in arts.items():
        assert art.format == "tflite" and art.model[4:8] == b"TFL3"
        assert art.lineage[-1].component == "tflite" and len(art.lineage) == 2
        assert any("numerics vs torch" in n for n in art.lineage[-1].notes)
        with s.runner("tflite", artifact=art) as r:
            acc[q] = accuracy_fn(data.test)(r)
    print(f"digits CNN test accuracy: torch {base:.2f}, tflite fp32 {acc['none']:.2f}, "
          f"fp16 {acc['fp16']:.2f}, int8 {acc['int8']:.2f}")
    assert abs(acc["none"] - base) <= 0.25
    assert abs(acc["fp16"] - base) <= 0.5
    assert acc["int8"] >= base - 1.0, "the bar: TFLite INT8 loses <= 1 accuracy point"
    # what the files are: fp16 halves the weights, int8 quarters them and computes in int8
    size = {q: len(a.model) for q, a in arts.items()}
    assert size["fp16"] < 0.6 * size["none"] and size["int8"] < 0.35 * size["none"]
    ops, dtypes = _ops_and_dtypes(arts["fp16"].model)
    assert "DEQUANTIZE" in ops and "float16" in dtypes
    ops, dtypes = _ops_and_dtypes(arts["int8"].model)
    assert {"CONV_2D", "FULLY_CONNECTED"} <= ops and "int8" in dtypes
    assert "DEQUANTIZE" not in ops and "float16" not in dtypes
    assert arts["int8"].metadata["tflite_quantization"] == "int8"
    assert "PT2E" in " ".join(arts["int8"].lineage[-1].notes)


def test_int8_variants_dynamic_range_and_ai_edge_quantizer(trained):
    model, data, base = trained
    s = session(model, data)
    for kw in ({"quantization": "int8_dynamic"},
               {"quantization": "int8", "int8_method": "ai_edge_quantizer",
                "calibration_batches": 4}):
        art = s.export("tflite", **kw)
        with s.runner("tflite") as r:
            assert accuracy_fn(data.test)(r) >= base - 1.0, kw
        _, dtypes = _ops_and_dtypes(art.model)
        assert "int8" in dtypes
        s.discard()


def test_runner_batches_fixed_and_dynamic(exported, trained):
    model, data, _ = trained
    s, arts = exported
    art = arts["none"]
    assert art.metadata["tflite_batch"] == 1  # litert-torch 0.10: Linear needs a fixed batch
    x = data.test[0][0]
    with torch.no_grad():
        ref = model(x)
    with s.runner("tflite", artifact=art, num_threads=1) as r:
        for n in (1, 5, 64):  # 5 and 64 rows run as chunks of the model's batch
            torch.testing.assert_close(r(x[:n]), ref[:n], rtol=1e-4, atol=1e-4)
        with pytest.raises(mo.InputSpecError):
            r(torch.zeros(2, 1, 9, 9))
        with pytest.raises(mo.InputSpecError):
            r(x[:2].double())
    with s.runner("tflite", artifact=art, split_batch=False) as r:
        r(x[:1])
        with pytest.raises(mo.InputSpecError, match="fixed batch of 1"):
            r(x[:5])
    r = s.runner("tflite", artifact=art)
    r.close()
    with pytest.raises(mo.RunnerClosedError):
        r(x[:1])

    # a fully convolutional model converts with a symbolic batch: the runner resizes
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 2, 3, padding=1)).eval()
    sc = mo.Session(conv, (x[:1],), progress=False)
    dyn = sc.export("tflite", dynamic_batch=True)
    assert dyn.metadata["tflite_batch"] == "dynamic"
    with sc.runner("tflite") as r:
        assert r.program.fixed_batch is None
        for n in (3, 7, 1):
            with torch.no_grad():
                torch.testing.assert_close(r(x[:n]), conv(x[:n]), rtol=1e-4, atol=1e-4)


def test_save_load_round_trip(exported, trained, tmp_path):
    _, data, _ = trained
    s, arts = exported
    art = arts["int8"]
    path = art.save(tmp_path / "digits-int8")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "tflite" and set(manifest["files"]) == {"model.tflite"}
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.tflite"]
    back = mo.load_artifact(path)
    assert back.format == "tflite" and back.model == art.model
    assert back.inputs == art.inputs and back.outputs == art.outputs
    assert [st.component for st in back.lineage][1:] == ["tflite", "load"]
    x = data.test[1][0]
    with s.runner("tflite", artifact=art) as r1, s.runner("tflite", artifact=back) as r2:
        torch.testing.assert_close(r1(x), r2(x), rtol=0, atol=0)
    # a bare .tflite file loads too; a file that is no flatbuffer is refused
    (tmp_path / "m.tflite").write_bytes(art.model)
    assert mo.load_artifact(tmp_path / "m.tflite").model == art.model
    (tmp_path / "bad.tflite").write_bytes(b"\x00" * 64)
    with pytest.raises(mo.ArtifactError, match="not a TFLite flatbuffer"):
        mo.load_artifact(tmp_path / "bad.tflite")


def test_bad_options_raise_config_error_and_keep_history(trained, exported):
    model, data, _ = trained
    s = session(model, data)
    with pytest.raises(mo.ConfigError):
        s.export("tflite", quantization="int4")
    with pytest.raises(mo.ConfigError, match="quantization"):
        s.export("tflite", quantisation="int8")
    with pytest.raises(mo.ConfigError):
        s.export("tflite", calibration_batches=0)
    assert len(s.history) == 1
    with pytest.raises(mo.ConfigError):
        s.runner("tflite", artifact=exported[1]["none"], num_threads=0)
    # INT8 needs calibration data: a DataError naming it, the history unchanged
    bare = mo.Session(model, (data.example,), progress=False)
    with pytest.raises(mo.DataError, match="calibration_data"):
        bare.export("tflite", quantization="int8")
    assert len(bare.history) == 1


def test_compare_measures_tflite_artifacts(exported):
    s, arts = exported
    report = s.compare(backends=["torch", "tflite"], profilers=["accuracy", "size"],
                       artifacts=[s.history[0], arts["none"], arts["int8"]])
    rows = [(r["format"], r["backend"]) for r in report.rows]
    assert rows == [("torch", "torch"), ("tflite", "tflite"), ("tflite", "tflite")]
    for r in report.rows:
        assert "error" not in r and r["accuracy"] > 90
    assert report.rows[2]["size_bytes"] < report.rows[1]["size_bytes"]


def test_plugin_discovery_stays_light():
    """Listing the tflite components and their availability imports none of their
    libraries (litert-torch pulls TensorFlow's converter, JAX and torchao)."""
    code = ("import json, sys\n"
            "import modelopt_core as mo\n"
            "pm = mo.get_plugin_manager()\n"
            "for kind in ('exporter', 'backend', 'format'):\n"
            "    info = pm.get(kind, 'tflite')\n"
            "    info.cls.availability(); info.cls.Config()\n"
            "heavy = ('torch', 'numpy', 'litert_torch', 'ai_edge_litert', 'ai_edge_quantizer',\n"
            "         'tensorflow', 'jax', 'torchao')\n"
            "print(json.dumps([m for m in heavy if m in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
