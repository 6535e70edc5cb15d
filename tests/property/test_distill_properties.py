"""Property tests of the KD loss and the feature adapters."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modelopt_distill import FeatureAdapter, kd_loss

logits = st.tuples(st.integers(1, 6), st.integers(2, 8), st.integers(0, 10_000))


@settings(max_examples=40, deadline=None)
@given(logits, st.floats(0.5, 8.0))
def test_soft_kd_is_nonnegative_and_zero_on_self(shape, T):
    b, c, seed = shape
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, c, generator=g) * 3, torch.randn(b, c, generator=g) * 3
    assert float(kd_loss(s, t, None, T, 1.0)) >= -1e-6
    assert abs(float(kd_loss(t, t, None, T, 1.0))) < 1e-5


@settings(max_examples=40, deadline=None)
@given(logits, st.floats(0.5, 8.0), st.floats(-50, 50))
def test_kd_is_invariant_to_shifting_logits(shape, T, shift):
    b, c, seed = shape
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, c, generator=g), torch.randn(b, c, generator=g)
    y = torch.randint(0, c, (b,), generator=g)
    a = kd_loss(s, t, y, T, 0.6)
    z = kd_loss(s + shift, t - shift / 2, y, T, 0.6)
    assert torch.allclose(a, z, atol=1e-3, rtol=1e-3)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12), st.integers(1, 9),
       st.integers(1, 9), st.integers(1, 9), st.integers(1, 9))
def test_adapter_output_always_has_the_teacher_shape(b, cs, ct, hs, ws, ht, wt):
    ad = FeatureAdapter((b, cs, hs, ws), (b, ct, ht, wt), "s", "t")
    out = ad(torch.randn(b, cs, hs, ws))
    assert tuple(out.shape) == (b, ct, ht, wt)
    assert torch.isfinite(out).all()
