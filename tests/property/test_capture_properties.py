"""Invariants of traffic capture (hypothesis): for any traffic, sampling rate, reservoir size,
flush points and restarts, the folder holds exactly ``min(max_samples, eligible)`` distinct
offered samples, the manifest's counters add up across restarts and its shards are the files
on disk; and the reservoir is uniform over everything offered, across a restart too."""

from __future__ import annotations

import json
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
from hypothesis import HealthCheck, given, settings
from modelopt_serve.capture import Capture

from modelopt_core.captured import MANIFEST, read_captured
from modelopt_core.samples import read_samples


def _batch(start: int, rows: int, same: bool = False) -> list[np.ndarray]:
    """Two inputs whose rows carry the sample's number (so every sample is recognisable), or,
    ``same``, equal requests (a health probe's) whose shards hold equal arrays."""
    ids = np.zeros(rows, np.int64) if same else np.arange(start, start + rows)
    return [np.repeat(ids[:, None], 3, 1).astype(np.float32), ids.astype(np.int64)]


def _on_disk(folder: Path, same: bool) -> tuple[dict, np.ndarray]:
    m = json.loads((folder / MANIFEST).read_text())
    if not m["shards"]:
        return m, np.zeros(0, np.int64)
    got = read_captured(folder, None)
    if same:
        return m, np.arange(got.count)
    assert np.array_equal(got.arrays["x"][:, 0].astype(np.int64), got.arrays["n"])
    listed = {s["file"] for s in m["shards"]}
    assert {f.name for f in folder.glob("shard-*.npz")} == listed  # nothing stale, nothing lost
    assert not [f for f in folder.iterdir() if f.name.endswith(".part")]
    return m, got.arrays["n"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(st.lists(st.integers(1, 9), min_size=0, max_size=12), min_size=1,
                     max_size=3),
       cap=st.integers(1, 30), rate=st.sampled_from([1.0, 0.5, 0.2]),
       shard=st.integers(1, 16), seed=st.integers(0, 1000), same=st.booleans())
def test_reservoir_bounded_exact_and_restartable(tmp_path_factory, runs, cap, rate, shard, seed,
                                                 same):
    folder = tmp_path_factory.mktemp("cap")
    offered = 0
    for batches in runs:  # each run: a server started on the same folder, then stopped
        c = Capture(folder, rate, cap, ["x", "n"], seed=seed, shard_size=shard, flush_s=60)
        assert c.seen == offered  # a restart continues the counters
        for k, rows in enumerate(batches):
            c.offer(_batch(offered, rows, same))
            offered += rows
            if k % 4 == 3:
                c.flush()  # as the writer thread does, mid-traffic
        c.close()
        assert c.error is None
        m, kept = _on_disk(folder, same)
        assert m["seen"] == offered and m["eligible"] <= offered
        assert m["kept"] == len(kept) == min(cap, m["eligible"])
        assert len(set(kept.tolist())) == len(kept) and (kept < offered).all()
        assert sum(s["count"] for s in m["shards"]) == m["kept"]
        if rate == 1.0:
            assert m["eligible"] == offered
    if len(kept):  # the folder is --calibration data as it is
        arrays, _ = read_samples(folder, None)
        assert len(arrays["n"]) == len(kept)
        assert same or sorted(arrays["n"].tolist()) == sorted(kept.tolist())


def _inclusion(tmp: Path, seeds: int, total: int, cap: int, restart_at: int | None,
               rate: float = 1.0) -> np.ndarray:
    """How often each of ``total`` samples (offered in batches of 5) ends in the reservoir."""
    hits = np.zeros(total)
    for seed in range(seeds):
        folder = tmp / f"s{seed}"
        c = Capture(folder, rate, cap, ["x", "n"], seed=seed, shard_size=64, flush_s=60)
        for start in range(0, total, 5):
            if start == restart_at:
                c.close()
                c = Capture(folder, rate, cap, ["x", "n"], seed=seed, shard_size=64,
                            flush_s=60)
            c.offer(_batch(start, 5))
        c.close()
        hits[read_captured(folder, None).arrays["n"]] += 1
    return hits


def _chi2_uniform(hits: np.ndarray, bins: int) -> float:
    counts = hits.reshape(bins, -1).sum(1)
    expected = counts.sum() / bins
    return float(((counts - expected) ** 2 / expected).sum())


def test_reservoir_uniform_across_a_restart(tmp_path):
    """Every sample, early or late, before or after a restart, is kept with the same
    probability cap/total: chi-square over 10 bins of arrival order below the 99.9% quantile
    of chi2(9) (27.88); seeds fixed, so the test is deterministic."""
    total, cap, seeds = 200, 20, 150
    for restart in (None, 100):
        hits = _inclusion(tmp_path / f"r{restart}", seeds, total, cap, restart)
        assert hits.sum() == seeds * cap
        chi2 = _chi2_uniform(hits, 10)
        assert chi2 < 27.88, (restart, chi2, hits.reshape(10, -1).sum(1))
        first, last = hits[:total // 2].sum(), hits[total // 2:].sum()
        assert abs(first - last) < 0.15 * (first + last), (first, last)


def test_rate_thins_uniformly(tmp_path):
    """At rate 0.25 a quarter of the samples are eligible (binomial, 4 sigma) and the kept ones
    are still spread over the whole stream."""
    total, cap, seeds = 400, 20, 40
    hits = _inclusion(tmp_path, seeds, total, cap, None, rate=0.25)
    eligible = [json.loads((tmp_path / f"s{s}" / MANIFEST).read_text())["eligible"]
                for s in range(seeds)]
    n = seeds * total
    assert abs(sum(eligible) - 0.25 * n) < 4 * (n * 0.25 * 0.75) ** 0.5
    assert _chi2_uniform(hits, 10) < 27.88
