"""Soak (bounded): 1500 requests over loopback HTTP, 16 in flight, 5% of them malformed and
some inputs repeated (cache hits), against a real server with dynamic batching. No response is
lost or mismatched (each OK answer equals the direct runner's output for ITS input), every
malformed request gets its 4xx, the server's memory stays flat, and /metrics counts equal the
client's counts."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from modelopt_serve import codec
from modelopt_serve.replicas import load_runner
from modelopt_serve.server import serve_in_thread
from serve_helpers import metric_values  # noqa: E402

import modelopt_core as mo

N, CONCURRENCY, BAD_EVERY = 1500, 16, 20  # 5% malformed


@pytest.fixture(scope="module")
def artifact_path(tmp_path_factory):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                            torch.nn.Linear(64, 10)).eval()
    s = mo.Session(m, example_inputs=(torch.randn(1, 32),), progress=False)
    s.export("onnx")
    path = tmp_path_factory.mktemp("soak") / "mlp"
    s.current.save(path)
    return path


def bad_body(i: int) -> tuple[bytes, str, int]:
    """A malformed request (body, content type, expected status), cycling through kinds."""
    kind = (i // BAD_EVERY) % 4
    if kind == 0:
        return b'{"inputs": {"input": [[1, 2', codec.JSON, 400  # truncated JSON
    if kind == 1:
        return codec.encode_inputs({"input": torch.randn(1, 31)}), codec.TENSORS, 422  # shape
    if kind == 2:
        return codec.encode_inputs({"input": torch.randn(1, 32).double()}), codec.TENSORS, 422
    return b"\x00not safetensors", codec.TENSORS, 400


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """The exposition's samples, summed over the ``variant`` label (one variant here)."""
    return metric_values(text)


def resident(m: dict[tuple[str, tuple], float]) -> float:
    """The server's resident memory (its ``process_resident_memory_bytes``)."""
    return m[("process_resident_memory_bytes", ())]


def test_soak_no_lost_or_mismatched_responses(artifact_path):
    art = mo.load_artifact(artifact_path)
    name = art.inputs[0].name
    rng = random.Random(0)
    # request i: its input seed (10% draw one of 20 hot seeds: cache hits); every 20th is malformed
    seeds = [rng.randrange(20) if rng.random() < 0.1 else 1000 + i for i in range(N)]
    xs = {s: torch.randn(1, 32, generator=torch.Generator().manual_seed(s)) for s in set(seeds)}
    runner = load_runner(art, "onnxruntime")
    want = {s: runner(x) for s, x in xs.items()}
    runner.close()

    async def soak(url: str) -> tuple[list[tuple[int, int, bytes]], float, float]:
        results: list[tuple[int, int, bytes]] = []
        queue = list(range(N))
        rss: list[float] = []
        async with httpx.AsyncClient(base_url=url, timeout=60,
                                     limits=httpx.Limits(max_connections=CONCURRENCY)) as c:
            async def worker() -> None:
                while queue:
                    i = queue.pop(0)
                    if i % BAD_EVERY == BAD_EVERY - 1:
                        body, ctype, _ = bad_body(i)
                    else:
                        body, ctype = codec.encode_inputs({name: xs[seeds[i]]}), codec.TENSORS
                    r = await c.post("/predict", content=body, headers={"content-type": ctype})
                    results.append((i, r.status_code, r.content))
                    if len(results) == 300:  # after warm-up
                        rss.append(resident(samples((await c.get("/metrics")).text)))
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            end = resident(samples((await c.get("/metrics")).text))
        return results, rss[0], end

    with serve_in_thread(artifact_path, max_batch_size=16, max_delay_ms=2, cache_size=64,
                         max_queue=4 * CONCURRENCY) as url:
        results, rss_warm, rss_end = asyncio.run(soak(url))
        text = httpx.get(f"{url}/metrics").text

    assert sorted(i for i, _, _ in results) == list(range(N))  # none lost, none duplicated
    statuses: Counter[str] = Counter()
    for i, status, body in results:
        statuses[str(status)] += 1
        if i % BAD_EVERY == BAD_EVERY - 1:
            assert status == bad_body(i)[2], (i, status, body)
            continue
        assert status == 200, (i, status, body)
        got = codec.decode_outputs(body, codec.TENSORS)["output"]
        torch.testing.assert_close(got, want[seeds[i]], rtol=1e-5, atol=1e-5)
    n_bad = N // BAD_EVERY
    assert statuses["200"] == N - n_bad
    # memory: flat after warm-up (allocator noise only)
    assert rss_end - rss_warm < 64 * 2**20, (rss_warm, rss_end)

    m = samples(text)
    for code, count in statuses.items():
        assert m[("modelopt_serve_requests_total", (("status", code),))] == count
    assert m[("modelopt_serve_request_latency_seconds_count", ())] == N
    errors = sum(v for (k, _), v in m.items() if k == "modelopt_serve_errors_total")
    assert errors == n_bad
    hits = m[("modelopt_serve_cache_hits_total", ())]
    misses = m[("modelopt_serve_cache_misses_total", ())]
    assert hits > 0 and hits + misses == N - n_bad
    assert m[("modelopt_serve_in_flight", ())] == 0
