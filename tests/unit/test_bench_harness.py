"""The benchmarks' side-by-side timer (``benchmarks/common.py``): blocks of back-to-back calls,
the same count for a candidate every round, the order rotating, ratios paired inside a round."""

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


def test_blocks_rotate_and_keep_their_call_count(common, monkeypatch):
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
    out = common.block_rounds(fns, rounds=4, block_ms=20.0, warmup=1)
    assert {k: len(v) for k, v in out.items()} == {"a": 4, "b": 4, "c": 4}
    assert out == {k: [pytest.approx(ms)] * 4 for k, ms in (("a", 1.0), ("b", 4.0),
                                                           ("c", 50.0))}
    timed = log[3 * 3:]  # after the warm-up (1 call each) and the sizing (2 calls each)
    # a round: per candidate 1 untimed call + its block (20 ms worth, at least 2 calls)
    sizes = {"a": 1 + 20, "b": 1 + 5, "c": 1 + 2}
    starts, i = [], 0
    for _ in range(4):
        round_ = []
        while len(round_) < 3:
            name = timed[i]
            round_.append(name)
            assert timed[i:i + sizes[name]] == [name] * sizes[name]
            i += sizes[name]
        starts.append(round_)
    assert i == len(timed)
    assert starts == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


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
