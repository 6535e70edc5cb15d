"""ReplicaPool: thread counts split between replicas through each backend's own option,
threads vs processes, results equal to the direct runner."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import slow_rows
from helpers import tiny_mlp as _mlp
from modelopt_serve import DynamicBatcher, ReplicaCrashedError, ReplicaPool, ServeError
from modelopt_serve.replicas import load_runner, thread_option

import modelopt_core as mo


@pytest.fixture(scope="module")
def session():
    return mo.Session(_mlp(), (torch.randn(1, 8),), progress=False)


@pytest.fixture(scope="module")
def onnx_art(session):
    return session.export("onnx", exporter="torchscript")


def test_thread_option_per_backend():
    assert thread_option("onnxruntime") == "intra_op_num_threads"
    assert thread_option("openvino") == "inference_num_threads"
    assert thread_option("torch") == "num_threads"
    assert thread_option("tflite") == "num_threads"
    assert thread_option("coreml") is None


def test_onnxruntime_replicas_split_the_cores(onnx_art):
    with ReplicaPool(onnx_art, "onnxruntime", workers=2, cores=6) as pool:
        assert pool.mode == "thread" and pool.size == 2 and pool.threads_per_replica == 3
        applied = [r.session.get_session_options().intra_op_num_threads for r in pool.runners]
        assert applied == [3, 3]
    with ReplicaPool(onnx_art, "onnxruntime", workers=4, cores=2) as pool:
        assert pool.threads_per_replica == 1  # never 0
    with ReplicaPool(onnx_art, "onnxruntime", workers=2, cores=6,
                     options={"intra_op_num_threads": 1}) as pool:  # the user's choice wins
        assert [r.session.get_session_options().intra_op_num_threads
                for r in pool.runners] == [1, 1]
    assert pool.closed and all(r.closed for r in pool.runners)


def test_default_cores_are_this_process_affinity(onnx_art):
    with ReplicaPool(onnx_art, "onnxruntime") as pool:
        assert pool.cores == len(os.sched_getaffinity(0))


def test_openvino_and_torch_replicas_get_their_thread_option():
    s = mo.Session(_mlp(), (torch.randn(1, 8),), progress=False)
    with ReplicaPool(s.original, "torch", workers=2, cores=4) as pool:
        assert [r._threads.wanted["threads"] for r in pool.runners] == [2, 2]
        x = torch.randn(3, 8)
        torch.testing.assert_close(pool(x), s.runner("torch")(x))
    ov = s.export("openvino")
    with ReplicaPool(ov, "openvino", workers=2, cores=4) as pool:
        assert [r.compiled.get_property("INFERENCE_NUM_THREADS")
                for r in pool.runners] == [2, 2]


def test_unknown_thread_option_is_left_alone_with_a_note(onnx_art):
    # tensorrt runs ONNX artifacts but has no CPU thread option; it is unavailable here
    with pytest.raises(mo.BackendUnavailableError):
        ReplicaPool(onnx_art, "tensorrt", workers=2)
    assert thread_option("tensorrt") is None


def test_replicas_run_concurrently(onnx_art, session):
    direct = session.runner("onnxruntime", artifact=onnx_art)
    xs = [torch.randn(2, 8) for _ in range(16)]
    with ReplicaPool(onnx_art, "onnxruntime", workers=2, cores=2) as pool:
        out: dict[int, torch.Tensor] = {}
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, pool.run([xs[i]])[0]))
                   for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert pool._free.qsize() == 2  # every replica handed back
    for i, x in enumerate(xs):
        torch.testing.assert_close(out[i], direct(x))


def test_process_replicas_match_and_clean_up(onnx_art, session, tmp_path):
    direct = session.runner("onnxruntime", artifact=onnx_art)
    xs = [torch.randn(1, 8) for _ in range(12)]
    with DynamicBatcher.from_artifact(onnx_art, "onnxruntime", workers=2, mode="process",
                                      cores=2, max_batch_size=4, max_delay_ms=20) as b:
        pool = b.pool
        assert pool.mode == "process" and pool._tmp and Path(pool._tmp).is_dir()
        got = [f.result(timeout=60) for f in [b.submit(x) for x in xs]]
    assert pool.closed and not Path(pool._tmp).exists()  # the temp save is removed
    for x, y in zip(xs, got):
        torch.testing.assert_close(y, direct(x))


def test_process_replica_load_error_is_reported(onnx_art, tmp_path):
    onnx_art.save(tmp_path / "art")
    with pytest.raises(ServeError, match="cannot load"):
        ReplicaPool(str(tmp_path / "art"), "onnxruntime", mode="process",
                    options={"providers": ("NoSuchExecutionProvider",)})


@pytest.fixture(scope="module")
def slow_art():
    return mo.Session(slow_rows(), (torch.randn(1, 256),), progress=False).export(
        "onnx", exporter="torchscript")


def _rows_for(runner: mo.Runner, seconds: float) -> int:
    """Rows of a slow_rows() call that take about ``seconds`` on one thread here."""
    runner(torch.randn(16, 256))  # first-run allocations
    t0 = time.perf_counter()
    runner(torch.randn(64, 256))
    return int(min(8192, max(64, 64 * seconds / (time.perf_counter() - t0))))


def _kill_a_worker(pool: ReplicaPool, pid: int | None = None) -> int:
    """SIGKILL one of the pool's worker processes (an idle one unless a call runs on it) and
    wait until the pool has let it go; returns its pid."""
    pid = pid or pool.worker_pids[0]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pid in pool.worker_pids:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return pid


def _wait_for_workers(pool: ReplicaPool, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(pool.worker_pids) < n:
        assert time.monotonic() < deadline, f"{pool.worker_pids} after {timeout} s"
        time.sleep(0.05)


class _Call(threading.Thread):
    """``pool.run(inputs)`` in a thread: the outputs or the error, and when it ended."""

    def __init__(self, pool: ReplicaPool, inputs: list[torch.Tensor]) -> None:
        super().__init__(daemon=True)
        self.pool, self.inputs = pool, inputs
        self.out: list[torch.Tensor] | None = None
        self.error: BaseException | None = None
        self.ended = 0.0
        self.start()

    def run(self) -> None:
        try:
            self.out = self.pool.run(self.inputs)
        except BaseException as e:  # noqa: BLE001 - checked by the test
            self.error = e
        self.ended = time.monotonic()


def test_a_killed_worker_fails_only_its_own_request_and_the_other_keeps_serving(slow_art):
    """Issue 23 (7): SIGKILL of one of two busy process workers. Its call gets
    ReplicaCrashedError at once; the other worker's call is answered right; calls made right
    after the kill are served by the live worker without waiting for a restart; only the dead
    worker is replaced (in the background), and the pool ends with two live workers."""
    direct = load_runner(slow_art, "onnxruntime", {"intra_op_num_threads": 1})
    rows = _rows_for(direct, 1.5)
    g = torch.Generator().manual_seed(1)
    slow = [torch.randn(rows, 256, generator=g) for _ in range(2)]
    small = [torch.randn(2, 256, generator=g) for _ in range(8)]
    with ReplicaPool(slow_art, "onnxruntime", workers=2, mode="process", cores=2) as pool:
        calls = [_Call(pool, [x]) for x in slow]
        time.sleep(0.4)  # both workers are running a ~1.5 s call
        assert all(c.is_alive() for c in calls), "the slow calls ended too soon"
        pids = set(pool.worker_pids)
        assert len(pids) == 2
        victim = pool.worker_pids[0]
        t_kill = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        burst = [_Call(pool, [x]) for x in small]  # right after the kill
        for c in [*calls, *burst]:
            c.join(60)
        crashed = [c for c in calls if c.error is not None]
        answered = [c for c in calls if c.error is None]
        assert len(crashed) == 1 and len(answered) == 1, [c.error for c in calls]
        assert isinstance(crashed[0].error, ReplicaCrashedError), crashed[0].error
        assert "retry the request" in str(crashed[0].error)
        assert crashed[0].ended - t_kill < 1.0  # told at once, not after a restart
        survivor = answered[0]
        assert survivor.ended > t_kill  # it was in flight when the other worker died
        torch.testing.assert_close(survivor.out[0][:8], direct(survivor.inputs[0][:8]),
                                   rtol=1e-4, atol=1e-5)
        for c in burst:
            assert c.error is None, c.error
            torch.testing.assert_close(c.out[0], direct(c.inputs[0]), rtol=1e-4, atol=1e-5)
        # no stall: the burst waited only for the live worker to finish its slow call
        stall = max(c.ended for c in burst) - max(t_kill, survivor.ended)
        assert stall < 1.0, f"the burst finished {stall:.2f} s after the live worker was free"
        _wait_for_workers(pool, 2)
        now = set(pool.worker_pids)
        assert victim not in now and (pids - {victim}) <= now  # only the dead one replaced
        assert pool.restarts == 1 and pool.down is None
        for x in small[:4]:  # both workers (they take turns) answer right
            torch.testing.assert_close(pool.run([x])[0], direct(x), rtol=1e-4, atol=1e-5)
    direct.close()


def test_a_worker_that_dies_idle_fails_nothing_and_is_replaced(onnx_art, session):
    direct = session.runner("onnxruntime", artifact=onnx_art)
    x = torch.randn(3, 8)
    with ReplicaPool(onnx_art, "onnxruntime", workers=2, mode="process", cores=2) as pool:
        torch.testing.assert_close(pool.run([x])[0], direct(x))
        pids = set(pool.worker_pids)
        victim = _kill_a_worker(pool)
        for _ in range(3):  # the live worker answers meanwhile
            torch.testing.assert_close(pool.run([x])[0], direct(x))
        _wait_for_workers(pool, 2)
        assert pool.restarts == 1 and pool.down is None
        assert victim not in pool.worker_pids and pids - {victim} <= set(pool.worker_pids)
        for _ in range(3):  # the new worker answers, and answers right
            torch.testing.assert_close(pool.run([x])[0], direct(x))


def test_a_crash_loop_stops_restarting(slow_art):
    x = torch.randn(1, 256)
    with ReplicaPool(slow_art, "onnxruntime", workers=1, mode="process",
                     max_restarts=1) as pool:
        for n in (1, 2):
            call = _Call(pool, [torch.randn(1024, 256)])  # ~1 s
            time.sleep(0.1)
            _kill_a_worker(pool)  # while it runs the call
            call.join(60)
            assert isinstance(call.error, ReplicaCrashedError), call.error
            if n == 1:
                assert "restart 1" in str(call.error)
                _wait_for_workers(pool, 1)
        assert "crashed 1 times within 60 s" in str(call.error)
        for _ in range(2):  # the budget is spent: typed errors, no new processes
            with pytest.raises(ReplicaCrashedError, match="crashed 1 times within 60 s"):
                pool.run([x])
        assert pool.restarts == 1 and "not started again" in pool.down
        assert pool.worker_pids == ()
        pool.RESTART_WINDOW_S = 0.0  # even once the window has passed, a spent pool stays down
        with pytest.raises(ReplicaCrashedError, match="not started again"):
            pool.run([x])
        assert pool.restarts == 1 and pool.down
    assert pool.closed


def test_pool_from_a_path_and_bad_arguments(onnx_art, tmp_path):
    onnx_art.save(tmp_path / "art")
    with ReplicaPool(tmp_path / "art", "onnxruntime") as pool:
        assert pool.input_specs == onnx_art.inputs and pool.output_tree == onnx_art.io.get(
            "outputs")
        x = torch.randn(2, 8)
        torch.testing.assert_close(pool(x), pool.run([x])[0])
    with pytest.raises(ServeError, match="closed"):
        pool.run([x])
    with pytest.raises(ServeError, match="workers"):
        ReplicaPool(onnx_art, "onnxruntime", workers=0)
    with pytest.raises(ServeError, match="mode"):
        ReplicaPool(onnx_art, "onnxruntime", mode="fiber")
    with pytest.raises(mo.FormatError, match="runs"):
        ReplicaPool(onnx_art, "openvino")


def test_a_crashed_replica_is_a_retryable_http_status():
    pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
    from modelopt_serve.app import error_status

    assert error_status(ReplicaCrashedError("a replica process died")) == 503
