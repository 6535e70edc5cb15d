"""A Core ML artifact whose ``weight.bin`` was truncated (or damaged) and whose manifest hash was
rewritten to match (issue 23, item 12): loading runs the package validation the exporter runs
and raises an ArtifactError naming the weight file, never a model that loads and fails (or
answers wrongly) later. Core ML predicts only on macOS; the format's load path runs here."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

ct = pytest.importorskip("coremltools")

import modelopt_core as mo
from modelopt_core.artifact import sha256_file
from modelopt_demo.models import SmallCNN

WEIGHTS = "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    art = mo.Session(SmallCNN().eval(), (torch.randn(1, 1, 8, 8),), progress=False).export(
        "coreml")
    return art.save(tmp_path_factory.mktemp("coreml") / "a")


def damaged(saved, tmp_path, change):
    path = tmp_path / "a"
    shutil.copytree(saved, path)
    w = path / WEIGHTS
    w.write_bytes(change(w.read_bytes()))
    m = json.loads((path / "manifest.json").read_text())  # the hash check passes
    m["files"][WEIGHTS] = {"sha256": sha256_file(w), "bytes": w.stat().st_size}
    (path / "manifest.json").write_text(json.dumps(m))
    return path


@pytest.mark.parametrize("cut", ["half", "header", "last_bytes"])
def test_truncated_weights_are_an_error_naming_the_file(saved, tmp_path, cut):
    keep = {"half": lambda n: n // 2, "header": lambda n: 100, "last_bytes": lambda n: n - 10}
    path = damaged(saved, tmp_path, lambda b: b[:keep[cut](len(b))])
    with pytest.raises(mo.ArtifactError) as e:  # loaded without error before
        mo.load_artifact(path)
    msg = str(e.value)
    assert str(path / WEIGHTS) in msg and "truncated" in msg and "re-export" in msg, msg


def test_a_blob_record_overwritten_is_an_error_naming_the_file(saved, tmp_path):
    def zero_first_record(b: bytes) -> bytes:
        return b[:64] + bytes(64) + b[128:]  # the first blob's record (sentinel, size...)

    path = damaged(saved, tmp_path, zero_first_record)
    with pytest.raises(mo.ArtifactError, match="weight.bin: corrupt: op .* reads a blob"):
        mo.load_artifact(path)


def test_intact_package_still_loads(saved):
    back = mo.load_artifact(saved)
    assert back.format == "coreml" and isinstance(back.model, ct.models.MLModel)
