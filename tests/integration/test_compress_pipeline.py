"""Compression end to end on the digits CNN: structured prune + fine-tune, weight sharing,
export to ONNX, static INT8; sizes on disk and accuracy through the runners."""

from __future__ import annotations

import torch

import modelopt_core as mo
from helpers import state_hash
from modelopt_demo.data import accuracy_fn


def _size(art: mo.ModelArtifact, folder) -> int:
    path = art.save(folder)
    return sum(p.stat().st_size for p in path.iterdir() if p.name != "manifest.json")


def test_prune_share_export_int8(trained_cnn, digits, tmp_path):
    trained = trained_cnn
    before = state_hash(trained)
    ev = accuracy_fn(digits.test)
    s = mo.Session(trained, (digits.example,), train_data=digits.train,
                   calibration_data=digits.calibration[:4], eval_fn=ev, progress=False)
    base = ev(trained)
    pruned = s.apply("prune.iterative", ratio=0.3, rounds=1, epochs_per_round=2, distill=True,
                     evaluate=False)
    assert pruned.metadata["params"] < pruned.metadata["params_before"]
    shared = s.apply("compress.weight_sharing", n_clusters=16)
    acc_shared = ev(shared.model)
    assert acc_shared >= base - 5
    s.export("onnx", check_numerics=True, atol=1e-3)
    q = s.apply("onnx.quantize_static", calibration_batches=4)
    with s.runner("onnxruntime") as r:
        acc_int8 = ev(r)
    assert acc_int8 >= base - 5
    fp32 = _size(s.original, tmp_path / "fp32")
    assert _size(shared, tmp_path / "shared") * 6 < fp32
    assert _size(q, tmp_path / "int8") * 3 < fp32
    assert state_hash(trained) == before
    for skeleton in (shared.model, type(trained)()):  # the edited model, or the original class
        reloaded = mo.load_artifact(tmp_path / "shared", model=skeleton)
        torch.testing.assert_close(reloaded.model(digits.example), shared.model(digits.example))
