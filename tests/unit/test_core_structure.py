"""Torch artifacts whose layers a step replaced reload into the original class, and the
structure record in a manifest can only ever build standard torch.nn layers."""

from __future__ import annotations

import json

import pytest
import torch

import modelopt_core as mo
from modelopt_core.artifact import sha256_file
from modelopt_demo.models import SmallCNN


@pytest.mark.parametrize("name, cfg", [("compress.low_rank", {"energy": 0.9}),
                                       ("arch.depthwise_separable", {}),
                                       ("prune.structured", {"ratio": 0.5})])
def test_replaced_layers_reload_into_original_class(tmp_path, name, cfg):
    torch.manual_seed(0)
    model = SmallCNN(width=8).eval()
    s = mo.Session(model, (torch.randn(1, 1, 8, 8),), progress=False)
    art = s.apply(name, **cfg)
    assert set(art.model.state_dict()) != set(model.state_dict()) or name == "prune.structured"
    art.save(tmp_path / "a")
    back = mo.load_artifact(tmp_path / "a", model=SmallCNN(width=8))
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(s.runner("torch", back)(x), s.runner("torch", art)(x))


def test_structure_record_cannot_build_arbitrary_types(tmp_path):
    torch.manual_seed(0)
    s = mo.Session(SmallCNN(width=8).eval(), (torch.randn(1, 1, 8, 8),), progress=False)
    s.apply("compress.low_rank", energy=0.9).save(tmp_path / "a")
    meta_path = tmp_path / "a" / "torch_model.json"
    meta = json.loads(meta_path.read_text())
    first = next(k for k, v in meta["structure"].items() if v["type"] == "Sequential")
    meta["structure"][first] = {"type": "system", "args": {"command": "touch pwned"}}
    meta_path.write_text(json.dumps(meta))
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest["files"]["torch_model.json"]["sha256"] = sha256_file(meta_path)
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(mo.ArtifactError, match="cannot be rebuilt"):
        mo.load_artifact(tmp_path / "a", model=SmallCNN(width=8))
    assert not (tmp_path / "pwned").exists()
