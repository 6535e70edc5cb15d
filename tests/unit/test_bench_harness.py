"""The benchmarks' side-by-side timer (``benchmarks/common.py``): blocks of back-to-back calls,
the same count for a candidate every round, the order shuffled, ratios paired inside a round."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def common():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import common as mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return mod


def test_blocks_are_shuffled_and_keep_their_call_count(common, monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(common.time, "sleep", lambda s: None)
    log: list[str] = []

    def fake(name: str, ms: float):
        def call() -> None:
            log.append(name)
            clock["t"] += ms / 1e3
        return call

    fns = {"a": fake("a", 1.0), "b": fake("b", 4.0), "c": fake("c", 50.0)}
    out = common.block_rounds(fns, rounds=12, block_ms=20.0, warmup=1)
    assert out == {k: [pytest.approx(ms)] * 12 for k, ms in (("a", 1.0), ("b", 4.0),
                                                            ("c", 50.0))}
    timed = log[3 * 3:]  # after the warm-up (1 call each) and the sizing (2 calls each)
    # a round: per candidate 1 untimed call + its block (20 ms worth, at least 2 calls)
    sizes = {"a": 1 + 20, "b": 1 + 5, "c": 1 + 2}
    orders, i = [], 0
    for _ in range(12):
        round_ = []
        while len(round_) < 3:
            name = timed[i]
            round_.append(name)
            assert timed[i:i + sizes[name]] == [name] * sizes[name]
            i += sizes[name]
        assert sorted(round_) == ["a", "b", "c"]  # each candidate once a round
        orders.append(tuple(round_))
    assert i == len(timed)
    # the order changes between rounds: each candidate follows more than one other
    before = {(o[j - 1], o[j]) for o in orders for j in (1, 2)}
    assert all(sum(1 for p, n in before if n == k) >= 2 for k in "abc"), orders


def test_paired_ratios_come_from_the_same_round(common, monkeypatch):
    rounds = iter([{"base": [10.0, 20.0, 10.0], "x": [5.0, 10.0, 5.0]},
                   {"base": [10.0, 10.0, 10.0], "x": [10.0, 10.0, 4.0]}])
    monkeypatch.setattr(common, "block_rounds", lambda fns, **kw: next(rounds))
    out = common.paired_block_ratios({"base": None, "x": None}, ["base"], repeats=2)
    # repeat 1: the base slowed down with x in round 2: the paired ratio stays 2.0
    assert out["base"]["x"] == [1.0, 2.0]
    assert out["base"]["base"] == [1.0, 1.0]
    assert out["p50_ms"] == {"base": [10.0, 10.0], "x": [5.0, 10.0]}


def test_a_slower_call_reads_slower(common):
    fns = {"fast": lambda: time.sleep(0.001), "slow": lambda: time.sleep(0.003)}
    out = common.paired_block_ratios(fns, ["slow"], repeats=1, rounds=3, block_ms=15.0,
                                     warmup=1, pause_s=0.0)
    assert out["slow"]["fast"][0] > 1.5
    assert out["p50_ms"]["slow"][0] > out["p50_ms"]["fast"][0]
