"""ResultCache: content keys, LRU by entries and by bytes, TTL, counters; artifact
fingerprints that tell models apart and survive a save and reload."""

from __future__ import annotations

import sys
import time

import pytest
import torch
from modelopt_serve import ResultCache, ServeError, artifact_fingerprint
from modelopt_serve.cache import hasher

import modelopt_core as mo


def _t(n: int, fill: float = 1.0) -> torch.Tensor:
    return torch.full((n,), fill, dtype=torch.float32)  # 4 * n bytes


def test_key_covers_bytes_dtype_shape_and_fingerprint():
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    k = ResultCache.key("fp", [x])
    assert k == ResultCache.key("fp", [x.clone()])  # content, not identity
    assert k == ResultCache.key("fp", [x.t().contiguous().t()])  # layout does not matter
    assert k != ResultCache.key("fp2", [x])
    assert k != ResultCache.key("fp", [x.reshape(3, 2)])  # same bytes, other shape
    assert k != ResultCache.key("fp", [x.view(torch.int32)])  # same bytes, other dtype
    y = x.clone()
    y[1, 2] += 1e-6
    assert k != ResultCache.key("fp", [y])
    assert ResultCache.key("fp", [x.bfloat16()]) != ResultCache.key("fp", [x.half()])
    assert k != ResultCache.key("fp", [x, x])


def test_blake2b_fallback_without_xxhash(monkeypatch):
    x = torch.randn(3, 4)
    with_xx = ResultCache.key("fp", [x])
    monkeypatch.setitem(sys.modules, "xxhash", None)  # as if the package were not installed
    assert type(hasher()).__name__ == "blake2b"
    k = ResultCache.key("fp", [x])
    assert len(k) == 32 and k == ResultCache.key("fp", [x.clone()]) and k != with_xx


def test_lru_by_entries_counts_hits_misses_evictions():
    c = ResultCache(max_entries=2)
    c.put("a", [_t(1, 1)])
    c.put("b", [_t(1, 2)])
    assert c.get("a")[0].item() == 1  # a is now the most recent
    c.put("c", [_t(1, 3)])  # evicts b
    assert c.get("b") is None and c.get("a") is not None and c.get("c") is not None
    assert c.stats() == {"hits": 3, "misses": 1, "entries": 2, "bytes": 8, "evictions": 1}


def test_lru_by_bytes_and_oversized_results():
    c = ResultCache(max_entries=100, max_bytes=100)
    c.put("a", [_t(10)])  # 40 bytes
    c.put("b", [_t(10)])
    c.put("c", [_t(5), _t(5)])  # 40 more: a goes
    assert c.stats()["bytes"] == 80 and c.get("a") is None
    c.put("huge", [_t(26)])  # 104 bytes > max_bytes: never stored, nothing evicted
    assert c.get("huge") is None and c.stats()["entries"] == 2
    c.put("b", [_t(20)])  # replacing a key re-counts its bytes
    assert c.stats()["bytes"] <= 100 and c.get("b")[0].numel() == 20


def test_ttl_expires_entries():
    c = ResultCache(ttl_s=0.05)
    c.put("a", [_t(2)])
    assert c.get("a") is not None
    time.sleep(0.1)
    assert c.get("a") is None and c.stats()["entries"] == 0


def test_stored_values_are_private_copies():
    c = ResultCache()
    out = _t(3, 1.0)
    c.put("a", [out])
    out.add_(5)  # the producer changes its tensor
    got = c.get("a")[0]
    got.mul_(0)  # the consumer changes its copy
    assert c.get("a")[0].tolist() == [1.0, 1.0, 1.0]
    c.clear()
    assert c.get("a") is None and c.stats()["bytes"] == 0


def test_bad_bounds_are_refused():
    with pytest.raises(ServeError, match="max_entries"):
        ResultCache(max_entries=0)
    with pytest.raises(ServeError, match="ttl_s"):
        ResultCache(ttl_s=0)


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()


def test_fingerprint_tells_artifacts_apart_and_survives_reload(tmp_path):
    s0 = mo.Session(_mlp(0), (torch.randn(1, 4),), progress=False)
    s1 = mo.Session(_mlp(1), (torch.randn(1, 4),), progress=False)
    a0, a1 = s0.export("onnx", exporter="torchscript"), s1.export("onnx", exporter="torchscript")
    f0 = artifact_fingerprint(a0)
    assert f0 == artifact_fingerprint(a0) and len(f0) == 64
    assert f0 != artifact_fingerprint(a1)
    assert f0 != artifact_fingerprint(s0.original)  # same weights, other format
    a0.save(tmp_path / "a0")
    assert artifact_fingerprint(mo.load_artifact(tmp_path / "a0")) == f0
