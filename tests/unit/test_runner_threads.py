"""Runners shared between threads: a runner class that does not declare itself thread-safe is
serialized by the base class (never a wrong answer by omission), one that does runs calls in
parallel, ``close()`` waits for calls in flight, and the torch backends' process-wide settings
survive several runners in several threads. The per-backend check is the contract test
``tests/contract/test_components.py::test_backend_is_thread_safe``."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import modelopt_core as mo


class StatefulRunner(mo.Runner):
    """Keeps the call's input on ``self`` while it 'computes' (a sleep, GIL released), the way
    a runtime with one request / interpreter keeps its tensors: racy when run concurrently."""

    def __init__(self, artifact, delay=0.002):
        super().__init__(artifact)
        self.delay, self.current, self.concurrent, self.max_concurrent = delay, None, 0, 0
        self._count = threading.Lock()

    def _run(self, inputs):
        with self._count:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            self.current = inputs[0]
            time.sleep(self.delay)
            return [self.current * 2]
        finally:
            with self._count:
                self.concurrent -= 1


class DeclaredSafe(StatefulRunner):
    thread_safe = True  # a false claim: shows the check below would catch the race


@pytest.fixture
def artifact():
    return mo.Session(torch.nn.Identity(), (torch.zeros(1, 3),), progress=False).current


def _hammer(runner, n=40, threads=4):
    xs = [torch.full((1, 3), float(i)) for i in range(n)]
    with ThreadPoolExecutor(threads) as pool:
        outs = list(pool.map(runner, xs))
    return [bool(torch.equal(o, x * 2)) for o, x in zip(outs, xs)]


def test_undeclared_runner_is_serialized(artifact):
    r = StatefulRunner(artifact)
    assert not r.thread_safe
    assert all(_hammer(r))
    assert r.max_concurrent == 1


def test_declared_thread_safe_runner_runs_in_parallel(artifact):
    r = DeclaredSafe(artifact)
    ok = _hammer(r)
    assert r.max_concurrent > 1  # not serialized ...
    assert not all(ok)  # ... so this racy runner answers wrong: what the contract test catches


def test_close_waits_for_calls_in_flight_then_refuses(artifact):
    r = StatefulRunner(artifact, delay=0.2)
    released = []
    r._release = lambda: released.append(r.concurrent)
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(r, torch.ones(1, 3))
        while not r.concurrent:
            time.sleep(0.001)
        r.close()  # blocks until the call returns
        assert fut.result().eq(2).all()
    assert released == [0]
    with pytest.raises(mo.RunnerClosedError):
        r(torch.ones(1, 3))
    r.close()  # idempotent
    assert released == [0]


def test_run_flat_checks_inputs(artifact):
    r = StatefulRunner(artifact)
    assert torch.equal(r.run_flat([torch.ones(1, 3)])[0], torch.full((1, 3), 2.0))
    with pytest.raises(mo.InputSpecError, match="shape"):
        r.run_flat([torch.ones(1, 4)])


class Sleepy(torch.nn.Module):
    def forward(self, x):
        time.sleep(0.01)
        return x + float(torch.are_deterministic_algorithms_enabled())


def test_torch_settings_restored_after_concurrent_runners():
    """Two torch runners with deterministic=True (a process-wide torch setting) in two threads:
    every call runs with it on, and afterwards the process's own value is back (each runner
    used to save and restore the other's value: calls ran with it off, and it stayed on)."""
    s = mo.Session(Sleepy(), (torch.zeros(1, 2),), progress=False)
    assert not torch.are_deterministic_algorithms_enabled()
    runners = [s.runner("torch", deterministic=True) for _ in range(2)]
    barrier = threading.Barrier(2)

    def work(r):
        barrier.wait()
        return [r(torch.zeros(1, 2)) for _ in range(15)]

    try:
        with ThreadPoolExecutor(2) as pool:
            outs = [o for part in pool.map(work, runners) for o in part]
        assert all(torch.equal(o, torch.ones(1, 2)) for o in outs)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


class NoSuperInit(mo.Runner):
    """A plugin runner whose __init__ skips the base class's (written before thread safety)."""

    def __init__(self, artifact):
        self.artifact, self.device = artifact, "cpu"

    def _run(self, inputs):
        return [inputs[0] + 1]


def test_a_runner_that_skips_the_base_init_still_works_and_is_serialized(artifact):
    r = NoSuperInit(artifact)
    assert torch.equal(r(torch.zeros(1, 3)), torch.ones(1, 3))
    assert r._serial is not None
    r.close()
    with pytest.raises(mo.RunnerClosedError):
        r(torch.zeros(1, 3))
