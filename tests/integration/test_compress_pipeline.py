"""Compression end to end on the digits CNN: structured prune + fine-tune, weight sharing,
export to ONNX, static INT8; sizes on disk and accuracy through the runners."""

from __future__ import annotations

import hashlib

import pytest
import torch

import modelopt_core as mo
from modelopt_demo.data import accuracy_fn, load_digits_data
from modelopt_demo.models import SmallCNN


def _hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def digits():
    return load_digits_data()


@pytest.fixture(scope="module")
def trained(digits):
    from modelopt_core.training import TrainConfig, fit

    torch.manual_seed(0)
    m = SmallCNN(width=16)
    fit(m, digits.train, config=TrainConfig(epochs=4, lr=3e-3),
        ctx=mo.Context(show_progress=False))
    return m.eval()


def _size(art: mo.ModelArtifact, folder) -> int:
    path = art.save(folder)
    return sum(p.stat().st_size for p in path.iterdir() if p.name != "manifest.json")


def test_prune_share_export_int8(trained, digits, tmp_path):
    before = _hash(trained)
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
    assert _hash(trained) == before
    reloaded = mo.load_artifact(tmp_path / "shared", model=shared.model)
    torch.testing.assert_close(reloaded.model(digits.example), shared.model(digits.example))
