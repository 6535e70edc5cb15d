"""Invariants of the serving layer (hypothesis): batching round trips to per-request results
for any batch composition; the result cache never exceeds its bounds."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from modelopt_serve import DynamicBatcher, ResultCache
from modelopt_serve.batching import concat_rows, pad_rows, split_rows, target_rows

import modelopt_core as mo


@pytest.fixture(scope="module")
def runner():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    s = mo.Session(model.eval(), (torch.randn(1, 5),), progress=False)
    with s.runner("torch") as r:
        yield r


def _requests(seed: int, rows: list[int]) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(n, 5, generator=g)] for n in rows]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.integers(1, 4), min_size=1, max_size=8),
       preferred=st.lists(st.integers(1, 40), max_size=3), seed=st.integers(0, 2**16))
def test_concat_pad_split_equals_per_request_results(runner, rows, preferred, seed):
    reqs = _requests(seed, rows)
    total = sum(rows)
    target = target_rows(total, None, sorted(set(preferred)))
    assert target >= total and (target == total or target in preferred)
    batch = pad_rows(concat_rows(reqs), target)
    assert batch[0].shape[0] == target
    assert torch.equal(batch[0][total:], reqs[-1][0][-1:].expand(target - total, 5))
    parts = split_rows(runner._run(batch), rows, target)
    assert parts is not None and len(parts) == len(reqs)
    for req, part in zip(reqs, parts):
        torch.testing.assert_close(part[0], runner(*req), rtol=1e-5, atol=1e-6)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.integers(1, 3), min_size=1, max_size=12),
       max_batch=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_batcher_results_equal_per_request_results(runner, rows, max_batch, seed):
    reqs = _requests(seed, rows)
    with DynamicBatcher(runner, max_batch_size=max_batch, max_delay_ms=2) as b:
        futs = [b.submit(*r) for r in reqs]
        got = [f.result(timeout=30) for f in futs]
        stats = b.stats()
    for req, out in zip(reqs, got):
        torch.testing.assert_close(out, runner(*req), rtol=1e-5, atol=1e-6)
    assert stats["rows"] == sum(rows) and stats["errors"] == {}
    # a batch holds more than max_batch rows only when one request alone is bigger
    assert all(n <= max(max_batch, max(rows)) for n in stats["batch_sizes"])


_ops = st.lists(st.tuples(st.sampled_from(["put", "get"]), st.integers(0, 15),
                          st.integers(0, 40)), max_size=120)


@settings(max_examples=80, deadline=None)
@given(ops=_ops, max_entries=st.integers(1, 8), max_bytes=st.integers(4, 200),
       ttl=st.sampled_from([None, 60.0]))
def test_cache_bounds_hold_under_any_sequence(ops, max_entries, max_bytes, ttl):
    c = ResultCache(max_entries=max_entries, max_bytes=max_bytes, ttl_s=ttl)
    stored: dict[int, float] = {}
    for op, key, size in ops:
        if op == "put":
            c.put(str(key), [torch.full((size,), float(key))])
            stored[key] = float(key)
        else:
            got = c.get(str(key))
            if got is not None:  # a hit is always the value put last under that key
                assert key in stored and bool((got[0] == stored[key]).all())
        s = c.stats()
        assert s["entries"] <= max_entries and s["bytes"] <= max_bytes
        assert s["entries"] == len(c)
    s = c.stats()
    assert s["hits"] + s["misses"] == sum(1 for op, _, _ in ops if op == "get")
