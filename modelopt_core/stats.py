"""The latency statistics behind every A/B verdict: ``modelopt compare`` (two artifacts timed
side by side) and a server's live ``GET /variants`` (variants serving real traffic) call the
same functions, so their verdicts mean the same thing.

:func:`bootstrap_ratio_ci` is the ratio of medians B / A with a percentile-bootstrap interval;
:func:`latency_verdict` turns two samples into ``{"ratio_b_over_a", "ci95", "verdict"}`` with
"B faster", "B slower" or "no significant difference" (the interval contains 1);
:func:`quantile_ci` is a distribution-free interval of one sample's percentile (order
statistics), for reporting p50/p99 with their uncertainty. numpy is imported when called.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .errors import DataError

__all__ = ["VERDICTS", "bootstrap_ratio_ci", "latency_verdict", "quantile_ci"]

#: what :func:`latency_verdict` can say
VERDICTS = ("B faster", "B slower", "no significant difference")


def bootstrap_ratio_ci(a: Any, b: Any, *, n: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float, float]:
    """(median(b) / median(a), low, high): the ratio of medians with a percentile bootstrap
    interval at ``level``, resampling ``a`` and ``b`` independently ``n`` times (numpy,
    seeded). The interval is widened to cover the point estimate if resampling put it outside
    (tiny, lumpy samples)."""
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0 or np.any(a <= 0) or np.any(b <= 0) \
            or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise DataError("bootstrap_ratio_ci: needs non-empty samples of finite, positive "
                        "times.")
    point = float(np.median(b) / np.median(a))
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, a.size, (n, a.size))], axis=1)
    mb = np.median(b[rng.integers(0, b.size, (n, b.size))], axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(mb / ma, [alpha, 1 - alpha])
    return point, min(float(lo), point), max(float(hi), point)


def latency_verdict(a: Any, b: Any, *, n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Is B faster than A? ``a`` and ``b`` are per-call (or per-request) times of each side;
    returns ``{"ratio_b_over_a", "ci95": [low, high], "verdict"}`` from
    :func:`bootstrap_ratio_ci` at 95%: "B slower" when the interval lies above 1, "B faster"
    when below, else "no significant difference"."""
    ratio, lo, hi = bootstrap_ratio_ci(a, b, n=n, seed=seed)
    verdict = VERDICTS[1] if lo > 1 else VERDICTS[0] if hi < 1 else VERDICTS[2]
    return {"ratio_b_over_a": ratio, "ci95": [lo, hi], "verdict": verdict}


def quantile_ci(xs: Sequence[float], q: float, level: float = 0.95
                ) -> tuple[float, float, float] | None:
    """(estimate, low, high) of the ``q``-th quantile (0-1) of ``xs``: the nearest-rank
    estimate and the order statistics whose ranks bound it at ``level`` under the binomial
    law of how many values fall below the true quantile (normal approximation, clamped to the
    sample). Distribution-free: no resampling, no shape assumed. None for an empty sample."""
    s = sorted(float(x) for x in xs)
    m = len(s)
    if m == 0:
        return None
    if not 0 < q < 1:
        raise DataError(f"quantile_ci: q={q!r}; expected a quantile strictly between 0 and 1.")
    z = _normal_quantile(0.5 + level / 2)
    half = z * math.sqrt(m * q * (1 - q))
    lo = max(0, math.floor(m * q - half) - 1)
    hi = min(m - 1, math.ceil(m * q + half))
    est = s[max(0, min(m - 1, math.ceil(q * m) - 1))]
    return est, s[lo], s[hi]


def _normal_quantile(p: float) -> float:
    """The standard normal quantile (stdlib ``statistics.NormalDist``)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)
