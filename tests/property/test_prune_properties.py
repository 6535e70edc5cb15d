"""Numeric invariants of the compression components (hypothesis)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import modelopt_core as mo
from modelopt_demo.models import DepthwiseNet, SmallCNN, YoloStyle
from modelopt_prune.low_rank import svd_factors
from modelopt_prune.unstructured import magnitude_mask_
from modelopt_prune.weight_sharing import kmeans_1d

FRACTIONS = st.floats(0.0, 0.99, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(amount=FRACTIONS, n=st.integers(1, 500), seed=st.integers(0, 2**16))
def test_magnitude_mask_zeroes_exactly_round_amount_n(amount, n, seed):
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    w[w == 0] = 1.0
    orig = w.clone()
    k = magnitude_mask_([w], amount)
    assert k == round(amount * n) == int((w == 0).sum())
    kept = orig[w != 0].abs()
    if 0 < k < n:  # the zeroed ones are the smallest
        assert float(orig[w == 0].abs().max()) <= float(kept.min())


@settings(max_examples=10, deadline=None)
@given(amount=FRACTIONS, glob=st.booleans())
def test_session_pruning_counts_per_layer_and_global(amount, glob):
    torch.manual_seed(0)
    m = SmallCNN(width=8).eval()
    a = mo.Session(m, (torch.randn(1, 1, 8, 8),), progress=False).apply(
        "prune.global" if glob else "prune.unstructured", amount=amount)
    ws = [mod.weight for mod in a.model.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    if glob:
        assert sum(int((w == 0).sum()) for w in ws) == round(amount * sum(w.numel() for w in ws))
    else:
        for w in ws:
            assert int((w == 0).sum()) == round(amount * w.numel())


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 24), n=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_svd_error_is_discarded_energy_and_monotone(m, n, seed):
    w = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    errs = []
    for r in range(1, min(m, n) + 1):
        a, b = svd_factors(w, r)
        err = float(torch.linalg.matrix_norm(w - a @ b))
        assert err == pytest.approx(float(s[r:].pow(2).sum().sqrt()), abs=1e-9, rel=1e-7)
        errs.append(err)
    assert all(e1 >= e2 - 1e-9 for e1, e2 in zip(errs, errs[1:]))  # never grows with rank
    assert errs[-1] < 1e-8


@settings(max_examples=20, deadline=None)
@given(k=st.integers(2, 32), n=st.integers(1, 400), seed=st.integers(0, 2**16))
def test_kmeans_codebook_has_at_most_k_values_and_assigns_nearest(k, n, seed):
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    c, labels = kmeans_1d(x, k, iters=10)
    assert len(c) <= k and labels.max() < len(c)
    nearest = (x[:, None] - c[None]).abs().argmin(1)
    assert torch.allclose((x - c[labels]).abs(), (x - c[nearest]).abs())


@settings(max_examples=5, deadline=None)
@given(ratio=st.floats(0.0, 0.8), importance=st.sampled_from(["l1", "l2", "bn_gamma"]),
       scope=st.sampled_from(["local", "global"]), round_to=st.sampled_from([None, 4, 8]))
def test_structured_pruning_keeps_output_shapes(ratio, importance, scope, round_to):
    torch.manual_seed(0)
    for model, x in ((SmallCNN(), torch.randn(2, 1, 8, 8)),
                     (DepthwiseNet(width=8), torch.randn(2, 3, 16, 16))):
        model.eval()
        with torch.no_grad():
            for mod in model.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.weight.uniform_(0.1, 1.0)
            ref = model(x)
        a = mo.Session(model, (x,), progress=False).apply(
            "prune.structured", ratio=ratio, importance=importance, scope=scope,
            round_to=round_to)
        with torch.no_grad():
            out = a.model(x)
        assert out.shape == ref.shape and torch.isfinite(out).all()
        assert a.metadata["params"] <= a.metadata["params_before"]


@settings(max_examples=4, deadline=None)
@given(ratio=st.floats(0.05, 0.8), importance=st.sampled_from(["l1", "l2", "bn_gamma"]),
       scope=st.sampled_from(["local", "global"]))
def test_yolo_pruning_never_produces_an_invalid_graph(ratio, importance, scope):
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = YoloStyle(width=8).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.1, 1.0)
    x = torch.randn(1, 3, 32, 32)
    a = mo.Session(model, (x,), progress=False).apply(
        "prune.structured", ratio=ratio, importance=importance, scope=scope)
    with torch.no_grad():
        ref, got = model(x), a.model(x)
    assert [o.shape for o in ref] == [o.shape for o in got]
    buf = io.BytesIO()
    torch.onnx.export(a.model, (x,), buf, dynamo=False, input_names=["input"], opset_version=17)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"input": x.numpy()})
    for o, t in zip(outs, got):
        np.testing.assert_allclose(o, t.numpy(), rtol=1e-3, atol=1e-4)
