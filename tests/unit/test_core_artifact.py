"""Artifacts on disk: save/load round trips (torch with a skeleton, onnx, bytes), atomic save
(temp folder + rename in the same parent), and SHA-256 verification of every manifest entry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import onnx_bytes, state_hash
from onnx import TensorProto, helper, numpy_helper

import modelopt_core as mo
from modelopt_core import artifact as artifact_mod
from modelopt_demo.models import SmallCNN


def tiny_onnx() -> onnx.ModelProto:
    """y = relu(x @ W + b) with x: (batch, 4) -> (batch, 3)."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "W")
    b = numpy_helper.from_array(np.array([0.1, -0.2, 0.3], dtype=np.float32), "b")
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


@pytest.fixture
def torch_art():
    torch.manual_seed(0)
    s = mo.Session(SmallCNN(width=4).eval(), (torch.randn(1, 1, 8, 8),), progress=False)
    return s.original


def test_torch_round_trip_needs_skeleton(tmp_path, torch_art):
    path = torch_art.save(tmp_path / "cnn")
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "torch_model.json",
                                                      "weights.safetensors"]
    with pytest.raises(mo.ArtifactError, match="SmallCNN"):
        mo.load_artifact(path)
    skeleton = SmallCNN(width=4)
    skel_hash = state_hash(skeleton)
    back = mo.load_artifact(path, model=skeleton)
    assert state_hash(back.model) == state_hash(torch_art.model)
    assert state_hash(skeleton) == skel_hash  # the skeleton is copied, never filled in
    assert back.inputs == torch_art.inputs and back.outputs == torch_art.outputs
    assert [s.component for s in back.lineage] == ["original", "load"]
    assert back.metadata == torch_art.metadata and back.path == str(path)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(back.model.eval()(x), torch_art.model(x), rtol=0, atol=0)


def test_wrong_skeleton_is_refused(tmp_path, torch_art):
    path = torch_art.save(tmp_path / "cnn")
    with pytest.raises(mo.ArtifactError, match="do not fit"):
        mo.load_artifact(path, model=torch.nn.Linear(3, 2))


def test_onnx_round_trip(tmp_path):
    m = tiny_onnx()
    art = mo.ModelArtifact("onnx", m, (mo.TensorSpec("x", ("batch", 4)),),
                           lineage=(mo.Step("original", "source"),), metadata={"k": [1, 2]})
    path = art.save(tmp_path / "tiny")
    back = mo.load_artifact(path)
    assert back.format == "onnx" and onnx_bytes(back.model) == onnx_bytes(m)
    assert back.inputs == art.inputs and back.metadata == {"k": [1, 2]}
    bare = mo.load_artifact(path / "model.onnx")  # a bare .onnx file loads too
    assert onnx_bytes(bare.model) == onnx_bytes(m)


def test_bytes_round_trip_and_unsaveable(tmp_path):
    art = mo.ModelArtifact("tensorrt", b"\x00engine\xff", lineage=(mo.Step("x", "export"),))
    back = mo.load_artifact(art.save(tmp_path / "eng"))
    assert back.model == b"\x00engine\xff" and back.format == "tensorrt"
    with pytest.raises(mo.ArtifactError, match="no installed plugin saves or loads format .weird."):
        mo.ModelArtifact("weird", object()).save(tmp_path / "weird")
    assert not (tmp_path / "weird").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["eng"]  # no temp folder left behind


def test_manifest_records_sha256_of_every_file(tmp_path, torch_art):
    path = torch_art.save(tmp_path / "cnn")
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"weights.safetensors", "torch_model.json"}
    for name, info in manifest["files"].items():
        assert info["sha256"] == artifact_mod.sha256_file(path / name)
        assert info["bytes"] == (path / name).stat().st_size


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_tampered_file_is_detected(tmp_path, torch_art, damage):
    path = torch_art.save(tmp_path / "cnn")
    f = path / "weights.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(bytes(data[:-7]))
    else:
        f.unlink()
    with pytest.raises(mo.ArtifactError, match="SHA-256 mismatch|missing"):
        mo.load_artifact(path, model=SmallCNN(width=4))


def test_manifest_pointing_outside_is_unsafe(tmp_path, torch_art):
    path = torch_art.save(tmp_path / "cnn")
    (tmp_path / "secret.txt").write_text("x")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../secret.txt"] = {"sha256": "0" * 64, "bytes": 1}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(mo.UnsafeArtifactError, match="outside"):
        mo.load_artifact(path, model=SmallCNN(width=4))


def test_corrupt_manifest(tmp_path, torch_art):
    path = torch_art.save(tmp_path / "cnn")
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(mo.ArtifactError, match="manifest is not valid"):
        mo.load_artifact(path, model=SmallCNN(width=4))
    with pytest.raises(mo.ArtifactError, match="no such file"):
        mo.load_artifact(tmp_path / "nope")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_failed_save_keeps_old_artifact_and_leaves_no_temp(tmp_path, torch_art, monkeypatch):
    path = torch_art.save(tmp_path / "cnn")
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def half_write(art, folder, **kw):
        (folder / "weights.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(artifact_mod, "_write_model", half_write)
    with pytest.raises(OSError, match="disk full"):
        torch_art.save(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert _leftovers(tmp_path) == []
    mo.load_artifact(path, model=SmallCNN(width=4))  # still valid


def test_failed_rename_restores_old_artifact(tmp_path, torch_art, monkeypatch):
    path = torch_art.save(tmp_path / "cnn")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append((Path(src), Path(dst)))
        if len(calls) == 2:  # the new folder's rename into place fails
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(artifact_mod.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="rename failed"):
        torch_art.save(path)
    monkeypatch.undo()
    assert all(s.parent == d.parent == tmp_path for s, d in calls)  # same folder: atomic rename
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces_atomically_in_same_folder(tmp_path, torch_art, monkeypatch):
    path = torch_art.save(tmp_path / "cnn")
    real_replace, calls = os.replace, []
    monkeypatch.setattr(artifact_mod.os, "replace",
                        lambda s, d: (calls.append((Path(s), Path(d))), real_replace(s, d))[1])
    new = torch_art.evolve(step=mo.Step("again", "optimize"))
    new.save(path)
    assert calls and all(s.parent == tmp_path for s, _ in calls)
    assert calls[-1][1] == path.resolve()
    back = mo.load_artifact(path, model=SmallCNN(width=4))
    assert [s.component for s in back.lineage] == ["original", "again", "load"]
    assert _leftovers(tmp_path) == []


def test_saved_files_get_the_usual_mode(tmp_path):
    """Files follow the umask like any file a user writes (0644 under umask 022), not the 0600
    that private temp files get."""
    import stat

    old = os.umask(0o022)
    try:
        s = mo.Session(torch.nn.Linear(4, 2), (torch.randn(1, 4),), progress=False)
        path = s.current.save(tmp_path / "a")
        s.compare(profilers=["size"]).to_markdown(tmp_path / "r.md")
    finally:
        os.umask(old)
    for f in [*path.iterdir(), tmp_path / "r.md"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    assert stat.S_IMODE(path.stat().st_mode) == 0o755


def test_typed_props_round_trip_and_read_legacy_metadata(tmp_path):
    import json

    art = mo.ModelArtifact("onnx", tiny_onnx(), props=mo.ArtifactProps(
        compute_dtype="bfloat16", check_rtol=0.1))
    nxt = art.evolve(step=mo.Step("x", "optimizer"), props={"simulated": "int8"})
    assert nxt.props == mo.ArtifactProps(compute_dtype="bfloat16", check_rtol=0.1,
                                         simulated="int8")  # partial update, rest carried
    path = nxt.save(tmp_path / "a")
    assert mo.load_artifact(path).props == nxt.props
    # a manifest written before props existed kept these facts in metadata
    m = json.loads((path / "manifest.json").read_text())
    del m["props"]
    m["metadata"].update(torch_compute_dtype="float16", onnx_exporter="torchscript")
    (path / "manifest.json").write_text(json.dumps(m))
    old = mo.load_artifact(path).props
    assert (old.compute_dtype, old.onnx_exporter) == ("float16", "torchscript")
    m["props"] = {"check_atol": "big"}
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(mo.ArtifactError, match="props.check_atol"):
        mo.load_artifact(path)
