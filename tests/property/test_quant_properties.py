"""Numeric invariants of the quantizers (hypothesis)."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from modelopt_quant.fake_quant import FakeQuant, qparams, quant_ranges
from modelopt_quant.observers import OBSERVERS

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


def _qdq(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int,
         axis: int | None = None) -> torch.Tensor:
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zp.reshape(()),
                                                     qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale, zp, axis, qmin, qmax)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(2, 64), elements=finite),
       st.booleans(), st.booleans())
def test_qdq_error_within_half_step_for_in_range_values(values, signed, symmetric):
    x = torch.from_numpy(values)
    if float(x.max() - x.min()) < 1e-3 and float(x.abs().max()) < 1e-3:
        x = torch.cat([x, torch.tensor([1.0])])
    qmin, qmax = quant_ranges(8, signed)
    scale, zp = qparams(x.min(), x.max(), qmin, qmax, symmetric)
    # every calibration value (the integer zero point shifts the grid by at most half a step)
    err = (_qdq(x, scale, zp, qmin, qmax) - x).abs()
    assert float(err.max()) <= float(scale) / 2 * (1 + 1e-4)
    # and every value inside the representable range
    lo = float((qmin - zp.double()) * scale.double())
    hi = float((qmax - zp.double()) * scale.double())
    y = torch.linspace(lo, hi, 1001)
    y = y[(y >= lo) & (y <= hi)]
    err = (_qdq(y, scale, zp, qmin, qmax) - y).abs()
    assert float(err.max()) <= float(scale) / 2 * (1 + 1e-4)


@settings(max_examples=60, deadline=None)
@given(finite, finite, st.booleans(), st.booleans())
def test_zero_is_exactly_representable(a, b, signed, symmetric):
    lo, hi = min(a, b), max(a, b)
    if hi - lo < 1e-3 and max(abs(lo), abs(hi)) < 1e-3:
        hi = lo + 1.0
    qmin, qmax = quant_ranges(8, signed)
    scale, zp = qparams(lo, hi, qmin, qmax, symmetric)
    assert float(scale) > 0 and np.isfinite(float(scale))
    assert qmin <= int(zp) <= qmax
    z = _qdq(torch.zeros(3), scale, zp, qmin, qmax)
    assert torch.equal(z, torch.zeros(3))


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(1, 16)),
              elements=finite))
def test_per_channel_never_worse_than_per_tensor(w):
    w = torch.from_numpy(w)
    if float(w.abs().max()) == 0:
        w = w + 1.0
    fqs = {}
    for axis in (0, None):
        fqs[axis] = FakeQuant(signed=True, symmetric=True, axis=axis)
        fqs[axis].observe_weight(w)
    s_pc, s_pt = fqs[0].scale, float(fqs[None].scale)
    # every (non-zero) channel's step is at most the tensor's step ...
    live = w.abs().amax(1) / 127 >= 1e-12
    assert bool((s_pc[live] <= s_pt * (1 + 1e-6)).all())
    # ... so each channel's worst-case error bound is never worse, and it holds
    err_pc = (fqs[0](w) - w).abs()
    assert bool((err_pc.amax(1) <= s_pc / 2 * (1 + 1e-4)).all())
    assert float(err_pc.max()) <= s_pt / 2 * (1 + 1e-4)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, st.integers(8, 256), elements=finite),
       st.sampled_from(sorted(OBSERVERS)), st.booleans())
def test_observers_give_finite_positive_scales_containing_zero(values, kind, signed):
    x = torch.from_numpy(values)
    if float(x.max() - x.min()) < 1e-3:
        x = x + torch.linspace(0, 1, len(x))
    fq = FakeQuant(signed=signed, observer=kind)
    fq.start_observing()
    fq(x)
    fq.finish_observing()
    s = float(fq.scale)
    assert s > 0 and np.isfinite(s)
    assert fq.qmin <= int(fq.zero_point) <= fq.qmax
    assert torch.equal(fq(torch.zeros(2)), torch.zeros(2))
