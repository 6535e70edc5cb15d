"""ReplicaPool: thread counts split between replicas through each backend's own option,
threads vs processes, results equal to the direct runner."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
from helpers import tiny_mlp as _mlp
from modelopt_serve import DynamicBatcher, ReplicaCrashedError, ReplicaPool, ServeError
from modelopt_serve.replicas import thread_option

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


def _kill_a_worker(pool: ReplicaPool) -> None:
    """SIGKILL one of the pool's worker processes and wait until the executor knows."""
    import signal
    import time

    executor = pool._executor
    os.kill(next(iter(executor._processes)), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not executor._broken and time.monotonic() < deadline:
        time.sleep(0.05)
    assert executor._broken


def test_a_dead_process_replica_fails_its_request_then_the_pool_restarts(onnx_art, session):
    direct = session.runner("onnxruntime", artifact=onnx_art)
    x = torch.randn(3, 8)
    with ReplicaPool(onnx_art, "onnxruntime", workers=2, mode="process", cores=2) as pool:
        torch.testing.assert_close(pool.run([x])[0], direct(x))
        _kill_a_worker(pool)
        with pytest.raises(ReplicaCrashedError, match="died .*retry the request"):
            pool.run([x])
        assert pool.restarts == 1 and pool.down is None
        for _ in range(3):  # the new workers answer, and answer right
            torch.testing.assert_close(pool.run([x])[0], direct(x))


def test_a_crash_loop_stops_restarting(onnx_art):
    x = torch.randn(1, 8)
    with ReplicaPool(onnx_art, "onnxruntime", workers=1, mode="process",
                     max_restarts=1) as pool:
        _kill_a_worker(pool)
        with pytest.raises(ReplicaCrashedError, match="restart 1"):
            pool.run([x])
        _kill_a_worker(pool)
        for _ in range(2):  # the budget is spent: typed errors, no new processes
            with pytest.raises(ReplicaCrashedError, match="crashed 1 times within 60 s"):
                pool.run([x])
        assert pool.restarts == 1 and "not started again" in pool.down
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
