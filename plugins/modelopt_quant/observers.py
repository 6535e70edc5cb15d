"""Range observers for calibration: min-max, percentile, MSE and entropy (KL divergence).

An observer sees activation batches (``update``) and returns the real range ``(lo, hi)`` to map
onto the integer grid (``range``). Min-max keeps running extrema only. The others also keep a
bounded random subsample of the values (at most ``max_samples``), from which they build a
2048-bin histogram at the end:

- ``percentile``: clip at the given percentile (of ``|x|`` for symmetric grids);
- ``mse``: the clipping range minimising the expected squared quantization error (rounding
  noise inside the range + clipping error outside it), searched over the histogram;
- ``entropy``: TensorRT's KL-divergence calibration: the threshold whose quantized
  distribution diverges least from the float one.
"""

from __future__ import annotations

import math
from typing import Any

import modelopt_core as mo

__all__ = ["Observer", "MinMaxObserver", "PercentileObserver", "MSEObserver",
           "EntropyObserver", "make_observer", "OBSERVERS"]

BINS = 2048


class Observer:
    """Min-max observer (the base): running min and max over every batch seen."""

    kind = "minmax"

    def __init__(self, who: str = "", max_samples: int = 1 << 20, seed: int = 0) -> None:
        self.who = who
        self.lo = math.inf
        self.hi = -math.inf
        self.count = 0
        self.max_samples = max_samples
        self.seed = seed

    def update(self, x: Any) -> None:
        """Record one batch; :class:`NumericalError` (naming the layer) on NaN/Inf."""
        import torch

        x = x.detach().float()
        if x.numel() == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise mo.NumericalError(
                f"{self.who}: NaN or Inf in the activations during calibration; check the model "
                "weights and the calibration data feeding this layer.")
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self.count += x.numel()
        self._collect(x, torch)

    def _collect(self, x: Any, torch: Any) -> None:
        """Min-max needs nothing beyond the extrema."""

    def range(self, signed: bool, symmetric: bool, qmin: int, qmax: int) -> tuple[float, float]:
        """The calibrated (lo, hi) range, always containing 0."""
        self._check()
        return min(self.lo, 0.0), max(self.hi, 0.0)

    def _check(self) -> None:
        if self.count == 0:
            raise mo.DataError(f"{self.who}: saw no calibration data (the layer never ran on "
                               "the calibration batches); give calibration inputs that reach it.")


class _SampleObserver(Observer):
    """Keeps a bounded random subsample of the values for histogram-based methods."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.samples: list[Any] = []
        self.kept = 0

    def _collect(self, x: Any, torch: Any) -> None:
        flat = x.reshape(-1)
        per_batch = max(self.max_samples // 16, 1)
        if flat.numel() > per_batch:
            g = torch.Generator().manual_seed(self.seed + len(self.samples))
            flat = flat[torch.randint(0, flat.numel(), (per_batch,), generator=g)]
        self.samples.append(flat.clone())
        self.kept += flat.numel()
        while self.kept > self.max_samples and len(self.samples) > 1:  # drop oldest halves
            self.samples = [s[::2] for s in self.samples]
            self.kept = sum(s.numel() for s in self.samples)

    def _values(self) -> Any:
        import torch

        return torch.cat(self.samples)

    def _hist(self, values: Any, lo: float, hi: float) -> tuple[Any, Any]:
        import torch

        hist = torch.histc(values, bins=BINS, min=lo, max=hi).double()
        edges = torch.linspace(lo, hi, BINS + 1, dtype=torch.float64)
        return hist, (edges[:-1] + edges[1:]) / 2


class PercentileObserver(_SampleObserver):
    """Clip the range at a percentile of the observed values (default 99.99)."""

    kind = "percentile"

    def __init__(self, *a: Any, percentile: float = 99.99, **k: Any) -> None:
        super().__init__(*a, **k)
        self.percentile = percentile

    def range(self, signed: bool, symmetric: bool, qmin: int, qmax: int) -> tuple[float, float]:
        import torch

        self._check()
        v = self._values()
        q = self.percentile / 100.0
        if v.numel() > 16_000_000:
            v = v[:: math.ceil(v.numel() / 16_000_000)]
        if symmetric:
            t = float(torch.quantile(v.abs(), q))
            return -t if self.lo < 0 else 0.0, t
        lo = float(torch.quantile(v, 1 - q)) if self.lo < 0 else 0.0
        return min(lo, 0.0), max(float(torch.quantile(v, q)), 0.0)


#: the min-max observer is the base class itself
MinMaxObserver = Observer


def _sym_or_pos(obs: Observer, symmetric: bool) -> bool:
    """Search a one-sided threshold on |x| (symmetric grid or non-negative data)."""
    return symmetric or obs.lo >= 0


class MSEObserver(_SampleObserver):
    """The clipping range with the least expected quantization MSE over the histogram."""

    kind = "mse"

    def range(self, signed: bool, symmetric: bool, qmin: int, qmax: int) -> tuple[float, float]:
        import torch

        self._check()
        v = self._values()
        one_sided = _sym_or_pos(self, symmetric)
        vals = v.abs() if one_sided else v
        lo0, hi0 = (0.0, max(abs(self.lo), abs(self.hi))) if one_sided else (self.lo, self.hi)
        if hi0 - lo0 <= 0:
            return min(self.lo, 0.0), max(self.hi, 0.0)
        hist, centers = self._hist(vals, lo0, hi0)
        levels = qmax - qmin
        best, best_err = (lo0, hi0), math.inf
        for frac in torch.linspace(0.2, 1.0, 81).tolist():
            lo, hi = (lo0 * frac, hi0 * frac)
            if one_sided and symmetric and self.lo < 0:
                step = 2 * hi / levels
            else:
                step = (hi - min(lo, 0.0)) / levels
            clipped = centers.clamp(min(lo, 0.0) if not one_sided else 0.0, hi)
            err = (hist * ((centers - clipped) ** 2 + step ** 2 / 12)).sum().item()
            if err < best_err:
                best, best_err = (lo, hi), err
        lo, hi = best
        if one_sided:
            return (-hi if self.lo < 0 else 0.0), hi
        return min(lo, 0.0), max(hi, 0.0)


class EntropyObserver(_SampleObserver):
    """TensorRT-style KL-divergence calibration on the histogram of |x|."""

    kind = "entropy"

    def range(self, signed: bool, symmetric: bool, qmin: int, qmax: int) -> tuple[float, float]:
        import torch

        self._check()
        amax = max(abs(self.lo), abs(self.hi))
        if amax <= 0:
            return 0.0, 0.0
        hist, _ = self._hist(self._values().abs(), 0.0, amax)
        one_sided_pos = self.lo >= 0
        nq = (qmax - qmin + 1) if one_sided_pos else (qmax - qmin + 1) // 2
        best_i, best_kl = BINS, math.inf
        total = hist.sum()
        for i in range(max(nq, 128), BINS + 1, 16):
            p = hist[:i].clone()
            p[i - 1] += hist[i:].sum()
            # merge the i reference bins into nq quantized bins, spread back over non-empty bins
            idx = torch.div(torch.arange(i) * nq, i, rounding_mode="floor")
            nz = (hist[:i] > 0).double()
            qsum = torch.zeros(nq, dtype=torch.float64).index_add_(0, idx, hist[:i])
            qcnt = torch.zeros(nq, dtype=torch.float64).index_add_(0, idx, nz)
            q = torch.where(nz > 0, (qsum / qcnt.clamp_min(1))[idx], torch.zeros_like(p))
            ps, qs = p / total, q / q.sum().clamp_min(1e-12)
            mask = ps > 0
            kl = float((ps[mask] * torch.log(ps[mask] / qs[mask].clamp_min(1e-12))).sum())
            if kl < best_kl:
                best_i, best_kl = i, kl
        t = amax * best_i / BINS
        if one_sided_pos:
            return 0.0, t
        if symmetric:
            return -t, t
        return max(self.lo, -t), min(self.hi, t)


OBSERVERS = {"minmax": Observer, "percentile": PercentileObserver, "mse": MSEObserver,
             "entropy": EntropyObserver}


def make_observer(kind: str, who: str, percentile: float = 99.99) -> Observer:
    """Build an observer by name (``minmax``, ``percentile``, ``mse``, ``entropy``)."""
    if kind not in OBSERVERS:
        raise mo.ConfigError(f"unknown observer {kind!r}; choose one of {sorted(OBSERVERS)}.")
    if kind == "percentile":
        return PercentileObserver(who, percentile=percentile)
    return OBSERVERS[kind](who)
