"""Bad input gets a clear, typed error and loses nothing: after every failure the user's model
is bit-identical (state_dict hash), the session history is unchanged, and no file is executed."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import onnx_bytes, state_hash
from onnx import TensorProto, helper, numpy_helper

import modelopt_core as mo
from modelopt_core.artifact import sha256_file
from modelopt_demo.models import SmallCNN


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SmallCNN(width=8).eval()


@pytest.fixture(scope="module")
def onnx_art(model, digits):
    """The model exported once to ONNX (shared by the ONNX-side tests)."""
    s = mo.Session(model, (digits.example,), progress=False)
    return s.export("onnx")


@pytest.fixture
def guard(model):
    """Asserts after the test that the user's model did not change by a single bit."""
    before = state_hash(model)
    yield
    assert state_hash(model) == before, "the user's model was modified"


@pytest.fixture
def session(model, digits, guard):
    return mo.Session(model, (digits.example,), calibration_data=digits.calibration[:2],
                      progress=False)


def _unchanged(s: mo.Session, n: int = 1) -> None:
    assert len(s.history) == n


# ---- names, configs, formats ------------------------------------------------------------

def test_unknown_component_lists_close_names(session):
    with pytest.raises(mo.UnknownComponentError, match="did you mean 'prune.structured'"):
        session.apply("prune.structure")
    with pytest.raises(mo.UnknownComponentError, match="'onnxruntime'"):
        session.runner("onnxrutime")
    with pytest.raises(mo.UnknownComponentError, match="'latency'"):
        session.compare(profilers=["latncy"])
    _unchanged(session)


def test_unknown_config_key_lists_valid_ones(session):
    with pytest.raises(mo.ConfigError) as ei:
        session.apply("prune.structured", raito=0.3)
    msg = str(ei.value)
    assert "prune.structured" in msg and "did you mean 'ratio'" in msg
    assert "Valid keys:" in msg and "importance" in msg
    _unchanged(session)


@pytest.mark.parametrize("kw, expect", [
    ({"ratio": "0.3"}, "'ratio' must be float"),
    ({"ratio": 1.5}, "outside"),
    ({"importance": "random-ish"}, "'importance' must be Literal"),
    ({"round_to": 2.5}, "'round_to' must be"),
])
def test_ill_typed_config(session, kw, expect):
    with pytest.raises(mo.ConfigError, match=expect):
        session.apply("prune.structured", **kw)
    _unchanged(session)


def test_backend_option_typo(session):
    with pytest.raises(mo.ConfigError, match="did you mean 'channels_last'"):
        session.runner("torch", channel_last=True)


def test_optimizer_on_wrong_format(session, onnx_art, digits):
    with pytest.raises(mo.FormatError, match=r"accepts \['onnx'\].*'torch'.*export\('onnx'\)"):
        session.apply("onnx.optimize")
    _unchanged(session)
    s = mo.Session(onnx_art, (digits.example,), progress=False)
    before = onnx_bytes(onnx_art.model)
    with pytest.raises(mo.FormatError, match=r"prune.structured.*'onnx'"):
        s.apply("prune.structured")
    with pytest.raises(mo.FormatError, match="backend 'torch'"):
        s.runner("torch")
    assert onnx_bytes(onnx_art.model) == before


def test_no_export_path(session):
    with pytest.raises(mo.NoExportPathError, match="'torch' to 'nonexistent-format'") as ei:
        session.export("nonexistent-format")
    assert "torch->onnx" in str(ei.value)
    with pytest.raises(mo.FormatError, match="already 'torch'"):
        session.export("torch")
    _unchanged(session)


def test_bad_session_arguments(model, guard):
    with pytest.raises(mo.InputSpecError, match="example_inputs"):
        mo.Session(model, ())
    with pytest.raises(mo.InputSpecError, match="failed on example_inputs"):
        mo.Session(model, (torch.randn(1, 3, 8, 8),))
    with pytest.raises(mo.FormatError, match="torch.nn.Module"):
        mo.Session("model.pt", (torch.randn(1, 1, 8, 8),))
    with pytest.raises(mo.DataError, match="eval_fn"):
        mo.Session(model, (torch.randn(1, 1, 8, 8),), eval_fn=42)


# ---- empty data ---------------------------------------------------------------------------

@pytest.mark.parametrize("data", [[], None])
def test_empty_calibration_onnx_static(onnx_art, digits, data, guard):
    before = onnx_bytes(onnx_art.model)
    s = mo.Session(onnx_art, (digits.example,), calibration_data=data, progress=False)
    with pytest.raises(mo.DataError, match="calibration_data"):
        s.apply("onnx.quantize_static")
    _unchanged(s)
    assert onnx_bytes(onnx_art.model) == before


def test_empty_calibration_torch_static(model, digits, guard):
    s = mo.Session(model, (digits.example,), calibration_data=[], progress=False)
    with pytest.raises(mo.DataError, match="calibration_data is empty"):
        s.apply("quantize.static")
    _unchanged(s)


def test_used_up_calibration_iterator_says_so(model, digits, guard):
    s = mo.Session(model, (digits.example,), calibration_data=iter(digits.calibration[:2]),
                   progress=False)
    s.apply("quantize.static", calibration_batches=2)
    with pytest.raises(mo.DataError, match="one-shot iterator"):
        s.apply("quantize.static")
    assert len(s.history) == 2


# ---- runner inputs --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_runner_wrong_shape_dtype_count(session, onnx_art, backend):
    art = session.original if backend == "torch" else onnx_art
    with session.runner(backend, art) as r:
        ok = r(torch.randn(3, 1, 8, 8))  # symbolic batch dim may vary
        assert ok.shape == (3, 10)
        with pytest.raises(mo.InputSpecError, match=r"shape \(1, 1, 9, 8\)"):
            r(torch.randn(1, 1, 9, 8))
        with pytest.raises(mo.InputSpecError, match="shape"):
            r(torch.randn(1, 8, 8))
        with pytest.raises(mo.InputSpecError, match="dtype torch.float64.*float32"):
            r(torch.randn(1, 1, 8, 8, dtype=torch.float64))
        with pytest.raises(mo.InputSpecError, match="expected 1 input"):
            r(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8))
        with pytest.raises(mo.InputSpecError, match="torch.Tensor"):
            r(np.zeros((1, 1, 8, 8), np.float32))


# ---- hostile files ----------------------------------------------------------------------------

def test_random_bytes_as_onnx(tmp_path):
    p = tmp_path / "random.onnx"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(mo.ArtifactError, match="random.onnx"):
        mo.load_artifact(p)


def test_truncated_onnx_file_and_folder(tmp_path, onnx_art):
    folder = onnx_art.save(tmp_path / "art")
    data = (folder / "model.onnx").read_bytes()
    bare = tmp_path / "cut.onnx"
    bare.write_bytes(data[: len(data) // 2])
    with pytest.raises(mo.ArtifactError, match="cut.onnx"):
        mo.load_artifact(bare)
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(mo.ArtifactError, match="SHA-256 mismatch"):
        mo.load_artifact(folder)
    # even with a manifest re-written to match, the truncated graph is refused
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["model.onnx"]["sha256"] = sha256_file(folder / "model.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(mo.ArtifactError, match="model.onnx"):
        mo.load_artifact(folder)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_path_traversal(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    w = numpy_helper.from_array(np.zeros(4, np.float32), "W")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w])
    folder = tmp_path / "model"
    folder.mkdir()
    p = folder / "evil.onnx"
    onnx.save_model(helper.make_model(g), str(p))
    with pytest.raises(mo.UnsafeArtifactError, match="path traversal"):
        mo.load_artifact(p)


class _Payload:
    """Unpickling this would create the marker file: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_pickle_is_never_executed(tmp_path, model, guard, how):
    marker = tmp_path / "PWNED"
    p = tmp_path / "weights.pt"
    payload = {"features.0.0.weight": _Payload(marker)}
    if how == "torch.save":
        torch.save(payload, p)
    else:
        p.write_bytes(pickle.dumps(payload))
    with pytest.raises(mo.UnsafeArtifactError, match="refused to unpickle"):
        mo.load_artifact(p, model=model)
    assert not marker.exists()
    # control: the payload is live, an unsafe load would have run it
    if how == "pickle":
        pickle.loads(p.read_bytes())
    else:
        torch.load(p, weights_only=False)
    assert marker.exists()


def test_pickle_disguised_inside_artifact_folder(tmp_path, model, guard):
    marker = tmp_path / "PWNED"
    folder = mo.Session(model, (torch.randn(1, 1, 8, 8),), progress=False).original.save(
        tmp_path / "art")
    w = folder / "weights.safetensors"
    torch.save({"x": _Payload(marker)}, w)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["weights.safetensors"]["sha256"] = sha256_file(w)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(mo.ArtifactError, match="safetensors"):
        mo.load_artifact(folder, model=model)
    assert not marker.exists()
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))


# ---- broken and clashing plugins ------------------------------------------------------------

class _EP:
    """A fake entry point (see tests/unit/test_core_plugins.py)."""

    def __init__(self, name, obj=None, error=None, dist="bad-dist"):
        self.name, self._obj, self._error = name, obj, error
        self.dist = type("D", (), {"name": dist, "version": "0.0.1"})()

    def load(self):
        if self._error:
            raise self._error
        return self._obj


def test_broken_and_clashing_plugins_leave_the_rest_working(model, digits, guard):
    import types

    pm = mo.PluginManager()
    pm.load_entry_points([_EP("broken", error=SyntaxError("invalid syntax (plugin.py, line 3)"))])
    assert [f.name for f in pm.failed] == ["broken"]

    class Clash(mo.Optimizer):
        """Claims a built-in name."""

        name = "prune.unstructured"

    mod = types.ModuleType("clash")
    mod.register_optimizers = mo.hookimpl(lambda register: register(Clash))
    pm.load_entry_points([_EP("clash", mod)])  # recorded, naming both distributions
    assert "DuplicateComponentError" in pm.failed[-1].error and "bad-dist" in pm.failed[-1].error
    assert pm.get("optimizer", "prune.unstructured").cls is not Clash  # the built-in stays
    s = mo.Session(model, (digits.example,), plugins=pm, progress=False)
    art = s.apply("prune.unstructured", amount=0.5)
    assert art.lineage[-1].plugin == "prune"
