"""modelopt_core.stats: the A/B statistic shared by ``modelopt compare`` and a server's live
``GET /variants`` verdict, and the order-statistic interval of a percentile."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import modelopt_core as mo
from modelopt_core.stats import VERDICTS, quantile_ci


def test_latency_verdict_reads_the_interval():
    rng = np.random.default_rng(0)
    a = rng.lognormal(0.0, 0.3, 300)
    assert mo.latency_verdict(a, a * 3)["verdict"] == "B slower"
    fast = mo.latency_verdict(a, a / 3)
    assert fast["verdict"] == "B faster" and fast["ci95"][1] < 1
    same = mo.latency_verdict(a, a.copy())
    assert same["verdict"] == "no significant difference" and same["ratio_b_over_a"] == 1.0
    assert set(VERDICTS) == {"B faster", "B slower", "no significant difference"}
    with pytest.raises(mo.DataError, match="positive"):
        mo.latency_verdict([1.0, 0.0], [1.0])


def test_quantile_interval_covers_the_true_quantile_about_95_in_100():
    rng = np.random.default_rng(1)
    true_p50, true_p99 = 1.0, float(np.exp(0.5 * 2.326))  # lognormal(0, 0.5)
    hits = {0.5: 0, 0.99: 0}
    for _ in range(400):
        xs = rng.lognormal(0.0, 0.5, 500)
        for q, truth in ((0.5, true_p50), (0.99, true_p99)):
            _, lo, hi = quantile_ci(xs, q)
            hits[q] += lo <= truth <= hi
    assert 0.92 <= hits[0.5] / 400 <= 0.99, hits
    assert 0.90 <= hits[0.99] / 400 <= 0.995, hits


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 1e4), min_size=1, max_size=300),
       st.sampled_from([0.5, 0.9, 0.99]))
def test_quantile_interval_is_ordered_and_from_the_sample(xs, q):
    est, lo, hi = quantile_ci(xs, q)
    assert lo <= est <= hi and {est, lo, hi} <= set(xs)


def test_quantile_interval_edges():
    assert quantile_ci([], 0.5) is None
    with pytest.raises(mo.DataError, match="strictly between 0 and 1"):
        quantile_ci([1.0], 1.0)
