"""Core ML target (plugin ``modelopt_coreml``): torch -> ML Program with coremltools (from
torch.export; FP16/FP32 compute; INT8 or palettized weights), saved as a ``.mlpackage``
folder in an artifact and validated on Linux without Core ML: the spec loads, inputs and
outputs are named and shaped, the MIL program holds ops and weights of the expected storage
type. Prediction needs macOS: the backend says so elsewhere.

The bar of issue 11: the Core ML package validates on Linux.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import state_hash

ct = pytest.importorskip("coremltools")

from modelopt_coreml.package import check_package_paths, package_files, validate_package

import modelopt_core as mo
from modelopt_demo.models import SmallCNN

MACOS = sys.platform == "darwin"


@pytest.fixture(scope="module")
def cnn():
    """The digits CNN architecture (weights seeded, untrained: Linux cannot predict, and the
    package checks do not depend on what the weights learned)."""
    torch.manual_seed(0)
    return SmallCNN().eval(), torch.randn(1, 1, 8, 8)


@pytest.fixture(scope="module")
def fp16(cnn):
    model, x = cnn
    before = state_hash(model)
    s = mo.Session(model, (x,), progress=False)
    art = s.export("coreml")
    assert state_hash(model) == before, "exporting changed the user's model"
    return s, art


def test_package_validates_on_linux(fp16, tmp_path):
    _, art = fp16
    assert art.format == "coreml" and art.lineage[-1].component == "coreml"
    notes = " ".join(art.lineage[-1].notes)
    assert "from torch.export" in notes and "flexible batch" in notes
    if not MACOS:
        assert "numerics not checked: Core ML prediction runs only on macOS" in notes
    path = art.save(tmp_path / "cnn-coreml")
    pkg = path / "model.mlpackage"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "coreml"
    # every file of the package is listed (and hashed) one by one, nothing else is there
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"manifest.json"} == set(package_files(pkg))
    assert {"model.mlpackage/Manifest.json", "model.mlpackage/Data/com.apple.CoreML/model.mlmodel",
            "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"} <= set(manifest["files"])

    # the spec loads with coremltools alone (no Core ML framework on Linux)
    spec = ct.models.MLModel(str(pkg), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    summary = validate_package(pkg)
    (inp,), (out,) = summary["inputs"], summary["outputs"]
    assert inp["name"] == "input" and inp["dtype"] == "FLOAT32"
    assert inp["shape"][1:] == [1, 8, 8] and inp["shape"][0][0] == 1  # flexible batch
    assert out["name"] == "output" and out["dtype"] == "FLOAT32"  # fp32 I/O, fp16 inside
    assert summary["op_count"] > 0
    assert summary["ops"]["conv"] == 4 and summary["ops"]["linear"] == 2
    assert summary["weights"] == {"fp16": 6}
    assert art.metadata["coreml_weights"] == {"fp16": 6}


def test_reload_and_resave(fp16, tmp_path):
    _, art = fp16
    path = art.save(tmp_path / "a")
    back = mo.load_artifact(path)
    assert back.format == "coreml" and isinstance(back.model, ct.models.MLModel)
    assert back.inputs == art.inputs and back.outputs == art.outputs
    assert back.lineage[-1].component == "load" and back.lineage[-2].component == "coreml"
    assert back.model.get_spec() == art.model.get_spec()  # protobuf equality (maps unordered)
    # the loaded model lives in a private copy: re-saving over its own folder works
    assert not Path(back.model.package_path).is_relative_to(path)
    back.save(path)
    again = mo.load_artifact(path)
    assert validate_package(again.model)["weights"] == {"fp16": 6}


def test_compute_precision_and_weight_compression(cnn):
    model, x = cnn
    s = mo.Session(model, (x,), progress=False)
    cases = [({"compute_precision": "fp32"}, {"fp32": 6}),
             # the 4 layers with >= 2048 weights are compressed, the 2 small ones stay fp16
             ({"compression": "int8"}, {"fp16": 2, "int8": 4}),
             ({"compression": "palettize", "palettize_nbits": 4}, {"fp16": 2, "palettized4": 4}),
             ({"compression": "int8", "compress_min_elements": 1}, {"int8": 6})]
    for kw, weights in cases:
        art = s.export("coreml", **kw)
        assert validate_package(art.model)["weights"] == weights, kw
        s.discard()


def test_fixed_shapes_and_trace_fallback(cnn):
    model, x = cnn
    s = mo.Session(model, (x,), progress=False)
    fixed = s.export("coreml", dynamic_batch=False)
    assert fixed.inputs[0].shape == (1, 1, 8, 8) and fixed.outputs[0].shape == (1, 10)
    assert validate_package(fixed.model)["inputs"][0]["shape"] == [1, 1, 8, 8]
    s.discard()

    class DataDependent(torch.nn.Module):
        """torch.export refuses a branch on tensor values; torch.jit.trace records one."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            y = self.fc(x.flatten(1))
            return y * 2 if y.sum() > 0 else y

    s2 = mo.Session(DataDependent().eval(), (x,), progress=False)
    art = s2.export("coreml")
    notes = " ".join(art.lineage[-1].notes)
    assert "from torch.jit.trace (torch.export conversion failed" in notes
    assert validate_package(art.model)["ops"]["linear"] == 1
    s2.discard()
    with pytest.raises(mo.ExportError, match="torch.export"):
        s2.export("coreml", exporter="torch.export")
    assert len(s2.history) == 1


def test_bad_options_raise_config_error(cnn):
    model, x = cnn
    s = mo.Session(model, (x,), progress=False)
    for kw in ({"palettize_nbits": 5}, {"minimum_deployment_target": "iOS99"},
               {"compression": "int4"}, {"compute_precision": "bf16"}, {"precision": "fp16"}):
        with pytest.raises(mo.ConfigError):
            s.export("coreml", **kw)
    assert len(s.history) == 1


@pytest.mark.skipif(MACOS, reason="on macOS the coreml backend is available")
def test_backend_unavailable_off_macos(fp16):
    s, art = fp16
    cls = s.pm.get("backend", "coreml").cls
    assert cls.availability() == (False, "Core ML prediction runs only on macOS")
    with pytest.raises(mo.BackendUnavailableError, match="Core ML prediction runs only on macOS"):
        s.runner("coreml", artifact=art)
    report = s.compare(backends=["coreml"], profilers=["size"], artifacts=[art])
    (row,) = report.rows
    assert row["backend"] == "coreml" and "runs only on macOS" in row["error"]


@pytest.mark.skipif(not MACOS, reason="Core ML prediction needs macOS")
def test_prediction_matches_torch_on_macos(cnn, fp16, tmp_path):
    model, _ = cnn
    s, art = fp16
    xs = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        ref = model(xs)
    back = mo.load_artifact(art.save(tmp_path / "m"))
    for a in (art, back):
        with s.runner("coreml", artifact=a) as r:
            out = r(xs)
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= 2e-2 * ref.abs().max() + 1e-3


def test_package_path_traversal_refused(fp16, tmp_path):
    _, art = fp16
    pkg = art.save(tmp_path / "t") / "model.mlpackage"
    man = json.loads((pkg / "Manifest.json").read_text())
    check_package_paths(pkg)
    root = man["rootModelIdentifier"]
    man["itemInfoEntries"][root]["path"] = "../../../../etc/passwd"
    (pkg / "Manifest.json").write_text(json.dumps(man))
    with pytest.raises(mo.UnsafeArtifactError, match="outside the package"):
        check_package_paths(pkg)
    # through load_artifact, the changed file already fails its hash
    with pytest.raises(mo.ArtifactError):
        mo.load_artifact(pkg.parent)


def test_plugin_discovery_stays_light():
    code = ("import json, sys\n"
            "import modelopt_core as mo\n"
            "pm = mo.get_plugin_manager()\n"
            "for kind in ('exporter', 'backend', 'format'):\n"
            "    info = pm.get(kind, 'coreml')\n"
            "    info.cls.availability(); info.cls.Config()\n"
            "heavy = ('torch', 'numpy', 'coremltools')\n"
            "print(json.dumps([m for m in heavy if m in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
