"""Quantizer modules built on the core aten ops ``torch.fake_quantize_per_tensor_affine`` and
``torch.fake_quantize_per_channel_affine`` (differentiable with a straight-through estimator;
both ONNX exporters turn them into standard QuantizeLinear/DequantizeLinear pairs).

- :class:`FakeQuant`: one activation or weight quantizer (per-tensor or per-channel, signed or
  unsigned, symmetric or affine). It observes while ``observing`` is on, quantizes while
  ``enabled`` is on, and optionally learns its scale (LSQ, Esser et al. 2020).
- :class:`SharedQuant`: re-applies another quantizer's grid without observing (after
  grid-preserving ops such as max-pool, flatten, nearest upsampling), so ONNX Runtime sees
  equal scales around them and drops the Q/DQ pair.
- :class:`QuantConv` / :class:`QuantLinear`: a Conv/Linear whose weight goes through a
  per-channel (or per-tensor) quantizer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import modelopt_core as mo

from .observers import Observer, make_observer

__all__ = ["FakeQuant", "SharedQuant", "QuantConv", "QuantLinear", "qparams", "quant_ranges"]


def quant_ranges(bits: int, signed: bool) -> tuple[int, int]:
    """Integer grid of ``bits`` (8 only for ONNX export) signed or unsigned."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def qparams(lo: Any, hi: Any, qmin: int, qmax: int, symmetric: bool,
            who: str = "", weight: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) mapping ``[lo, hi]`` (tensors or floats) onto
    ``[qmin, qmax]``. The range is widened to contain 0 so 0 is exactly representable.
    A degenerate activation range raises :class:`DataError` (never a zero or infinite
    scale); all-zero (or denormal) weights or weight channels get scale 1 (0 stays exact)."""
    lo = torch.as_tensor(lo, dtype=torch.float64).clamp(max=0)
    hi = torch.as_tensor(hi, dtype=torch.float64).clamp(min=0)
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise mo.NumericalError(f"{who}: non-finite range [{lo}, {hi}]; the layer has NaN/Inf.")
    if symmetric:
        amax = torch.maximum(-lo, hi)
        if qmin < 0:  # narrow signed grid [-127, 127]: -128 unused, zero point 0
            scale, zp = amax / qmax, torch.zeros_like(amax)
        else:  # unsigned symmetric: zero point mid-grid (128 for uint8)
            scale = amax / ((qmax - qmin) // 2)
            zp = torch.full_like(amax, float((qmin + qmax + 1) // 2))
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = None
    degenerate = scale < 1e-12  # also tiny: 1/scale must stay finite in float32 kernels
    if bool(degenerate.any()):
        if scale.dim() == 0 and not weight:
            raise mo.DataError(
                f"{who}: the calibration range is [{float(lo):g}, {float(hi):g}] (constant): a "
                "scale cannot be computed. Give varied calibration data that exercises the model.")
        scale = torch.where(degenerate, torch.ones_like(scale), scale)
    s32 = scale.float()  # round the scale up in float32 so the grid still covers [lo, hi]
    s32 = torch.where(s32.double() < scale, torch.nextafter(s32, torch.full_like(s32, 1e30)),
                      s32)
    if zp is None:
        zp = (qmin - torch.round(lo / s32.double())).clamp(qmin, qmax)
    return s32, zp.to(torch.int32)


class FakeQuant(nn.Module):
    """Simulated quantization of a tensor (activations: per-tensor; weights: per-channel).

    Args:
        bits/signed/symmetric: the integer grid (int8 symmetric for weights, uint8 affine for
            activations by default).
        axis: channel axis for per-channel quantization, ``None`` for per-tensor.
        observer: ``minmax``, ``percentile``, ``mse`` or ``entropy``.
        who: the layer name used in error messages.
    """

    def __init__(self, *, bits: int = 8, signed: bool = False, symmetric: bool = False,
                 axis: int | None = None, observer: str = "minmax", percentile: float = 99.99,
                 who: str = "") -> None:
        super().__init__()
        self.qmin, self.qmax = quant_ranges(bits, signed)
        self.symmetric, self.axis, self.who = symmetric, axis, who
        self.observer_kind, self.percentile = observer, percentile
        self.observer: Observer | None = None
        self.observing = False
        self.enabled = True
        self.learnable = False
        self.ema: float | None = None  # QAT: track the range with this momentum while training
        self._range: tuple[float, float] | None = None
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))
        self.calibrated = False  # a Python flag: exporters must not see data-dependent branches

    # ---- calibration ---------------------------------------------------------------------

    def start_observing(self) -> None:
        """Reset the observer and collect statistics on the next forward calls."""
        self.observer = make_observer(self.observer_kind, self.who, self.percentile)
        self.observing = True

    def finish_observing(self) -> None:
        """Turn the observed range into scale / zero point and stop observing."""
        obs, self.observing = self.observer, False
        if obs is None:
            return
        lo, hi = obs.range(self.qmin < 0, self.symmetric, self.qmin, self.qmax)
        self.set_range(lo, hi)
        self.observer = None

    def set_range(self, lo: Any, hi: Any, weight: bool = False) -> None:
        """Set scale / zero point from a real range (per-channel: tensors)."""
        scale, zp = qparams(lo, hi, self.qmin, self.qmax, self.symmetric, self.who, weight)
        if self.axis is None:
            self._range = (float(lo), float(hi))
        self._store(scale, zp)

    def observe_weight(self, w: torch.Tensor) -> None:
        """Calibrate directly from a weight tensor (min-max, per channel along ``axis``)."""
        w = w.detach().float()
        if not bool(torch.isfinite(w).all()):
            raise mo.NumericalError(f"{self.who}: the weight holds NaN or Inf; fix or retrain "
                                    "the layer before quantizing.")
        if self.axis is None:
            self.set_range(w.min(), w.max(), weight=True)
        else:
            flat = w.transpose(0, self.axis).reshape(w.shape[self.axis], -1)
            self.set_range(flat.min(1).values, flat.max(1).values, weight=True)

    def _store(self, scale: torch.Tensor, zp: torch.Tensor) -> None:
        if isinstance(self.scale, nn.Parameter):
            self.scale.data = scale.to(self.scale.device)
        else:
            self.scale = scale.to(self.scale.device)
        self.zero_point = zp.to(self.scale.device)
        self.calibrated = True

    def make_learnable(self) -> None:
        """LSQ: make the scale a trainable parameter (gradient scaled as in the paper)."""
        self.scale = nn.Parameter(self.scale.detach().clone())
        self.learnable = True

    # ---- forward -------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing and self.observer is not None:
            self.observer.update(x)
            return x
        if not self.enabled or not self.calibrated:
            return x
        if self.ema and self.training and self._range is not None and not self.learnable:
            lo, hi = self._range
            m = self.ema
            with torch.no_grad():
                self.set_range((1 - m) * lo + m * float(x.min()), (1 - m) * hi + m * float(x.max()))
        return self.quantize(x)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize ``x`` with the current scale / zero point."""
        if self.learnable and self.training and torch.is_grad_enabled():
            return self._lsq(x)
        scale = self.scale.detach()
        if not torch.onnx.is_in_onnx_export():  # stored scales are already > 0
            scale = scale.clamp_min(1e-12)
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(
                x, scale, self.zero_point, self.qmin, self.qmax)
        return torch.fake_quantize_per_channel_affine(
            x, scale, self.zero_point, self.axis, self.qmin, self.qmax)

    def _lsq(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel() if self.axis is None else x.numel() // x.shape[self.axis]
        g = 1.0 / math.sqrt(max(n, 1) * self.qmax)
        s = self.scale.abs().clamp_min(1e-8)
        s = (s - s * g).detach() + s * g  # value s, gradient scaled by g
        z = self.zero_point.float()
        if self.axis is not None:
            shape = [1] * x.dim()
            shape[self.axis] = -1
            s, z = s.reshape(shape), z.reshape(shape)
        v = x / s + z
        v = (v.round() - v).detach() + v  # straight-through rounding
        return (v.clamp(self.qmin, self.qmax) - z) * s

    def extra_repr(self) -> str:
        kind = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"
        return (f"{kind}, [{self.qmin}, {self.qmax}], symmetric={self.symmetric}, "
                f"observer={self.observer_kind}, enabled={self.enabled}")


class SharedQuant(nn.Module):
    """Apply ``base``'s grid again (after a grid-preserving op) without observing."""

    def __init__(self, base: FakeQuant) -> None:
        super().__init__()
        self.base = [base]  # a list: not a submodule, so parameters are not duplicated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base[0]
        if b.observing or not b.enabled or not b.calibrated:
            return x
        return b.quantize(x)


class _QuantWeighted(nn.Module):
    """Common part of QuantConv / QuantLinear: the float layer plus a weight quantizer."""

    def __init__(self, layer: nn.Module, per_channel: bool, who: str) -> None:
        super().__init__()
        self.layer = layer
        self.weight_quant = FakeQuant(signed=True, symmetric=True,
                                      axis=0 if per_channel else None, who=who)
        self.weight_quant.observe_weight(layer.weight)
        self.dynamic_weight_range = False  # QAT: recompute the weight range every step

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.layer.bias

    def qweight(self) -> torch.Tensor:
        if self.dynamic_weight_range and self.training:
            self.weight_quant.observe_weight(self.layer.weight)
        wq = self.weight_quant
        if torch.onnx.is_in_onnx_export() and wq.enabled and wq.calibrated:
            return _export_int8_weight(self.layer.weight, wq)
        return wq(self.layer.weight)


class _WeightDQ(torch.autograd.Function):
    """INT8 weight -> float; exported as one DequantizeLinear on an INT8 initializer."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor,
                axis: int | None) -> torch.Tensor:
        shape = [1] * q.dim()
        if axis is not None:
            shape[axis] = -1
        return (q.float() - zp.float().reshape(shape)) * scale.reshape(shape)

    @staticmethod
    def symbolic(g: Any, q: Any, scale: Any, zp: Any, axis: int | None) -> Any:
        if axis is None:
            return g.op("DequantizeLinear", q, scale, zp)
        return g.op("DequantizeLinear", q, scale, zp, axis_i=axis)


def _export_int8_weight(w: torch.Tensor, wq: FakeQuant) -> torch.Tensor:
    """The ONNX form of a quantized weight: an INT8 constant and one DequantizeLinear, so the
    file holds INT8 weights (4x smaller than float + QuantizeLinear)."""
    shape = [1] * w.dim()
    if wq.axis is not None:
        shape[wq.axis] = -1
    scale = wq.scale.detach()
    zp = torch.from_numpy(wq.zero_point.cpu().numpy().astype("int8" if wq.qmin < 0 else "uint8"))
    with torch.no_grad():
        q = torch.clamp(torch.round(w / scale.reshape(shape)) + zp.float().reshape(shape),
                        wq.qmin, wq.qmax).to(zp.dtype)
    # through numpy, so the exporter records a constant INT8 tensor, not the float ops
    q = torch.from_numpy(q.detach().cpu().numpy().copy())
    if wq.axis is None:
        scale, zp = scale.reshape(()), zp.reshape(())
    return _WeightDQ.apply(q, scale, zp, wq.axis)


class QuantConv(_QuantWeighted):
    """A Conv1d/2d/3d whose weight is fake-quantized (per-channel symmetric INT8 default)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer._conv_forward(x, self.qweight(), self.layer.bias)


class QuantLinear(_QuantWeighted):
    """A Linear whose weight is fake-quantized (per-channel symmetric INT8 default)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.qweight(), self.layer.bias)
