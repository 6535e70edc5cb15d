"""DynamicBatcher on real runtimes: results equal the direct runner row by row, batches form,
padding (preferred sizes, fixed batch), isolation of bad requests, backpressure, timeouts,
shutdown and the result cache."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from helpers import tiny_mlp as _mlp
from modelopt_serve import (
    BatcherClosedError,
    DynamicBatcher,
    QueueFullError,
    RequestTimeoutError,
    ResultCache,
)

import modelopt_core as mo


class Recording(mo.Runner):
    """A real runner (wrapping a loaded one) that records the batch shapes it runs; it can
    wait on a gate (a busy model) and refuse NaN inputs (a run-time failure)."""

    def __init__(self, inner: mo.Runner, gate: threading.Event | None = None) -> None:
        super().__init__(inner.artifact)
        self.inner, self.gate, self.calls = inner, gate, []

    def _run(self, inputs):
        self.calls.append(tuple(inputs[0].shape))
        if self.gate is not None:
            assert self.gate.wait(20)
        if any(torch.isnan(x).any() for x in inputs):
            raise mo.NumericalError("NaN in the inputs")
        return self.inner._run(inputs)


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(6, 8)
        self.cls = torch.nn.Linear(8, 3)

    def forward(self, x, mask):
        h = torch.relu(self.body(x * mask))
        return {"logits": self.cls(h), "extra": (h, h.sum(dim=1, keepdim=True))}


@pytest.fixture(scope="module")
def session():
    return mo.Session(_mlp(), (torch.randn(1, 8),), progress=False)


@pytest.fixture(scope="module")
def onnx_art(session):
    return session.export("onnx", exporter="torchscript")


@pytest.fixture(scope="module")
def ort(session, onnx_art):
    with session.runner("onnxruntime", artifact=onnx_art) as r:
        yield r


def _inputs(n: int, rows: int = 1, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, 8, generator=g) for _ in range(n)]


def _close(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y)
    else:
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _burst(batcher, xs, workers: int = 8):
    with ThreadPoolExecutor(workers) as ex:
        futs = list(ex.map(lambda x: batcher.submit(x), xs))
    return [f.result(timeout=30) for f in futs]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_results_match_direct_runner_row_by_row(backend):
    s = mo.Session(_mlp(), (torch.randn(1, 8),), progress=False)
    art = {"torch": lambda: s.original,
           "onnxruntime": lambda: s.export("onnx", exporter="torchscript"),
           "openvino": lambda: s.export("openvino")}[backend]()
    direct = s.runner(backend, artifact=art)
    xs = _inputs(40) + _inputs(4, rows=3, seed=2)  # mostly single rows, a few of 3
    with DynamicBatcher.from_artifact(art, backend, workers=2, max_batch_size=8,
                                      max_delay_ms=20, max_idle_ms=None) as b:
        got = _burst(b, xs)
        stats = b.stats()
    for x, y in zip(xs, got):
        _close(y, direct(x))
    assert stats["requests"] == 44 and stats["rows"] == 52
    assert sum(n * c for n, c in stats["batch_sizes"].items()) == 52
    assert max(stats["batch_sizes"]) > 1, stats  # batches really formed
    assert stats["in_flight"] == 0 and stats["queue_depth"] == 0 and stats["errors"] == {}


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_structured_outputs_and_named_inputs(backend):
    s = mo.Session(TwoHeads().eval(), {"x": torch.randn(1, 6), "mask": torch.ones(1, 6)},
                   progress=False)
    art = s.original if backend == "torch" else s.export("onnx", exporter="torchscript")
    direct = s.runner(backend, artifact=art)
    g = torch.Generator().manual_seed(3)
    reqs = [(torch.randn(1, 6, generator=g), (torch.rand(1, 6, generator=g) > 0.3).float())
            for _ in range(12)]
    with DynamicBatcher(direct, max_batch_size=4, max_delay_ms=50, max_idle_ms=None) as b:
        futs = [b.submit(x=x, mask=m) for x, m in reqs[:6]] + [b.submit({"x": x, "mask": m})
                                                              for x, m in reqs[6:]]
        got = [f.result(timeout=30) for f in futs]
        assert max(b.stats()["batch_sizes"]) > 1
    for (x, m), y in zip(reqs, got):
        assert set(y) == {"logits", "extra"} and isinstance(y["extra"], tuple)
        _close(y, direct(x, m))


def test_preferred_batch_sizes_pad_by_repeating_rows(ort):
    rec = Recording(ort)
    xs = _inputs(3)
    with DynamicBatcher(rec, max_batch_size=8, max_delay_ms=500, max_idle_ms=None,
                        preferred_batch_sizes=(4, 8)) as b:
        futs = [b.submit(x) for x in xs]
        got = [f.result(timeout=30) for f in futs]
        stats = b.stats()
    assert rec.calls == [(4, 8)]  # 3 rows padded to the preferred 4, one run
    assert stats["batch_sizes"] == {3: 1} and stats["padded_rows"] == 1
    for x, y in zip(xs, got):
        _close(y, ort(x))


def test_fixed_batch_artifact_is_padded_to_its_size():
    s = mo.Session(_mlp(), (torch.randn(4, 8),), progress=False, dynamic_batch=False)
    art = s.export("onnx", exporter="torchscript")
    assert art.inputs[0].shape[0] == 4
    direct = s.runner("onnxruntime", artifact=art)
    rec = Recording(direct)
    xs = _inputs(6)
    with DynamicBatcher(rec, max_batch_size=16, max_delay_ms=30) as b:
        got = [f.result(timeout=30) for f in [b.submit(x) for x in xs]]
        with pytest.raises(mo.InputSpecError, match="fixed batch of 4"):
            b.submit(torch.randn(5, 8))
    assert rec.calls and all(c == (4, 8) for c in rec.calls)  # never more than 4 rows
    for x, y in zip(xs, got):
        _close(y, direct(x.expand(4, 8))[:1])


def test_malformed_request_in_a_burst_fails_alone(ort):
    rec = Recording(ort)
    xs = _inputs(24)
    bad_shape = torch.randn(1, 7)
    with DynamicBatcher(rec, max_batch_size=8, max_delay_ms=30) as b:
        def send(i):
            if i == 5:
                with pytest.raises(mo.InputSpecError, match="shape"):
                    b.submit(bad_shape)
                with pytest.raises(mo.InputSpecError, match="dtype"):
                    b.submit(xs[i].double())
                return None
            if i == 11:  # passes the checks, fails in the model: only its caller sees it
                return b.submit(torch.full((1, 8), float("nan")))
            return b.submit(xs[i])

        with ThreadPoolExecutor(8) as ex:
            futs = list(ex.map(send, range(24)))
        for i, f in enumerate(futs):
            if i == 5:
                continue
            if i == 11:
                with pytest.raises(mo.NumericalError):
                    f.result(timeout=30)
            else:
                _close(f.result(timeout=30), ort(xs[i]))
        errors = b.stats()["errors"]
    assert errors == {"InputSpecError": 2, "NumericalError": 1}


def test_full_queue_rejects_at_once(ort):
    gate = threading.Event()
    rec = Recording(ort, gate)
    with DynamicBatcher(rec, max_batch_size=1, max_delay_ms=0, max_queue=2) as b:
        first = b.submit(_inputs(1)[0])
        deadline = time.monotonic() + 10
        while not rec.calls and time.monotonic() < deadline:  # the replica is now busy
            time.sleep(0.005)
        queued = [b.submit(x) for x in _inputs(2)]
        t0 = time.monotonic()
        with pytest.raises(QueueFullError) as info:
            b.submit(_inputs(1)[0])
        assert time.monotonic() - t0 < 1 and info.value.max_queue == 2
        assert b.stats()["queue_depth"] == 2
        gate.set()
        for f in [first, *queued]:
            assert f.result(timeout=30).shape == (1, 4)
        assert b.stats()["errors"] == {"QueueFullError": 1}


def test_request_not_started_in_time_fails_with_timeout(ort):
    gate = threading.Event()
    rec = Recording(ort, gate)
    with DynamicBatcher(rec, max_batch_size=1, max_delay_ms=0, timeout_s=0.05) as b:
        running = b.submit(_inputs(1)[0])
        late = b.submit(_inputs(1)[0])
        with pytest.raises(RequestTimeoutError):  # while the model is still busy
            late.result(timeout=5)
        assert isinstance(late.exception(), TimeoutError)
        gate.set()
        assert running.result(timeout=30).shape == (1, 4)
        assert b.stats()["errors"] == {"RequestTimeoutError": 1}


@pytest.mark.parametrize("drain", [True, False])
def test_close_drains_or_cancels(ort, drain):
    gate = threading.Event()
    rec = Recording(ort, gate)
    b = DynamicBatcher(rec, max_batch_size=1, max_delay_ms=0)
    xs = _inputs(4)
    futs = [b.submit(x) for x in xs]
    while not rec.calls:
        time.sleep(0.005)
    closer = threading.Thread(target=b.close, kwargs={"drain": drain})
    closer.start()
    while not b.closed:
        time.sleep(0.001)
    with pytest.raises(BatcherClosedError):
        b.submit(xs[0])
    gate.set()
    closer.join(30)
    assert not closer.is_alive() and b.closed
    _close(futs[0].result(timeout=1), ort(xs[0]))  # a running batch always finishes
    for x, f in zip(xs[1:], futs[1:]):
        if drain:
            _close(f.result(timeout=1), ort(x))
        else:
            with pytest.raises(BatcherClosedError):
                f.result(timeout=1)
    assert len(rec.calls) == (4 if drain else 1)
    b.close()  # idempotent
    b.close(drain=False)


def test_cache_hits_do_not_run_the_model(ort):
    rec = Recording(ort)
    cache = ResultCache(max_entries=16)
    x, y = _inputs(2)
    with DynamicBatcher(rec, max_delay_ms=0, cache=cache) as b:
        first = b(x)
        again = b.submit(x.clone())
        assert again.done()  # served from the cache at submit time
        _close(again.result(), first)
        again.result().add_(1)  # the caller's copy; the cache keeps its own
        _close(b(x), first)
        b(y)
        stats = b.stats()
    assert len(rec.calls) == 2
    assert stats["cache_hits"] == 2 and stats["cache"]["hits"] == 2
    assert stats["cache"]["misses"] == 2 and stats["requests"] == 4 and stats["batches"] == 2


def test_cache_never_mixes_artifacts():
    cache = ResultCache()
    x = _inputs(1)[0]
    outs = []
    for seed in (0, 1):
        s = mo.Session(_mlp(seed), (torch.randn(1, 8),), progress=False)
        with s.runner("onnxruntime", artifact=s.export("onnx", exporter="torchscript")) as r, \
                DynamicBatcher(r, max_delay_ms=0, cache=cache) as b:
            outs.append(b(x))
            _close(outs[-1], r(x))
            assert b.stats()["cache"]["hits"] == 0
    assert not torch.allclose(outs[0], outs[1])
    assert cache.stats()["entries"] == 2


def test_submit_async(ort):
    xs = _inputs(6)

    async def main(b):
        return await asyncio.gather(*(b.submit_async(x) for x in xs))

    with DynamicBatcher(ort, max_batch_size=8, max_delay_ms=20) as b:
        got = asyncio.run(main(b))
        assert b.stats()["batches"] < 6
    for x, y in zip(xs, got):
        _close(y, ort(x))


def test_on_batch_callback_sees_rows_and_seconds(ort):
    seen = []
    with DynamicBatcher(ort, max_batch_size=4, max_delay_ms=50,
                        on_batch=lambda rows, sec: seen.append((rows, sec))) as b:
        [f.result(timeout=30) for f in [b.submit(x) for x in _inputs(8)]]
    assert sum(r for r, _ in seen) == 8 and all(r <= 4 and s >= 0 for r, s in seen)


class SeqPool(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.proj(x).mean(dim=1)


def test_dynamic_axes_beyond_batch_are_bucketed():
    torch.manual_seed(0)
    s = mo.Session(SeqPool().eval(), (torch.randn(1, 5, 4),), progress=False,
                   dynamic_axes={"input": {1: "seq"}})
    art = s.export("onnx", exporter="torchscript")
    assert art.inputs[0].shape[:2] == ("batch", "seq")
    direct = s.runner("onnxruntime", artifact=art)
    rec = Recording(direct)
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(1, 3 + i % 3, 4, generator=g) for i in range(12)]  # seq 3, 4 and 5
    with DynamicBatcher(rec, max_batch_size=16, max_delay_ms=500, max_idle_ms=None) as b:
        got = [f.result(timeout=30) for f in [b.submit(x) for x in xs]]
    assert sorted(rec.calls) == [(4, 3, 4), (4, 4, 4), (4, 5, 4)]  # one batch per length
    for x, y in zip(xs, got):
        _close(y, direct(x))


def test_a_lone_request_leaves_after_the_idle_window_not_the_delay(ort):
    x = _inputs(1)[0]
    with DynamicBatcher(ort, max_batch_size=8, max_delay_ms=3000, max_idle_ms=20) as b:
        t0 = time.monotonic()
        _close(b.submit(x).result(timeout=30), ort(x))
        lone = time.monotonic() - t0
    # the idle window (20 ms) sends it, long before the 3 s delay would
    assert lone < 1.5, lone
    with DynamicBatcher(ort, max_batch_size=8, max_delay_ms=300, max_idle_ms=None) as b:
        t0 = time.monotonic()
        b.submit(x).result(timeout=30)
        assert time.monotonic() - t0 >= 0.29  # off: it waits the whole delay for company


def test_requests_arriving_within_the_idle_window_share_a_batch(ort):
    rec = Recording(ort)
    xs = _inputs(6)
    with DynamicBatcher(rec, max_batch_size=8, max_delay_ms=3000, max_idle_ms=400) as b:
        futs = []
        for x in xs:  # 50 ms apart: each arrival restarts the 400 ms quiet window
            futs.append(b.submit(x))
            time.sleep(0.05)
        got = [f.result(timeout=30) for f in futs]
    assert rec.calls == [(6, 8)]
    for x, y in zip(xs, got):
        _close(y, ort(x))


def test_bad_idle_window_is_refused(ort):
    from modelopt_serve import ServeError

    with pytest.raises(ServeError, match="max_idle_ms"):
        DynamicBatcher(ort, max_idle_ms=-1)


def test_several_replicas_run_batches_at_once(ort):
    from modelopt_serve import ReplicaPool

    gate = threading.Event()
    recs = [Recording(ort, gate), Recording(ort, gate)]
    with DynamicBatcher(ReplicaPool.from_runners(recs), max_batch_size=1, max_delay_ms=0) as b:
        xs = _inputs(3)
        futs = [b.submit(x) for x in xs]
        deadline = time.monotonic() + 10
        while b.stats()["in_flight"] < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        stats = b.stats()
        assert stats["in_flight"] == 2 and stats["queue_depth"] == 1  # both replicas busy
        assert len(recs[0].calls) == len(recs[1].calls) == 1
        gate.set()
        for x, f in zip(xs, futs):
            _close(f.result(timeout=30), ort(x))


def test_artifacts_that_cannot_be_batched_are_refused():
    import attrs
    from modelopt_serve import ServeError

    s = mo.Session(TwoHeads().eval(), {"x": torch.randn(1, 6), "mask": torch.ones(1, 6)},
                   progress=False)
    x_spec, mask_spec = s.original.inputs
    mixed = attrs.evolve(s.original, inputs=(x_spec, attrs.evolve(mask_spec, shape=(1, 6))))
    with s.runner("torch", artifact=mixed) as r, pytest.raises(ServeError, match="dim 0"):
        DynamicBatcher(r)
    with pytest.raises(ServeError, match="max_batch_size"):
        DynamicBatcher(s.runner("torch"), max_batch_size=0)
