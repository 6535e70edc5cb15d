"""The process mode of :class:`~modelopt_serve.replicas.ReplicaPool`: :class:`_ProcessWorkers`,
the pool's methods that start worker processes (:mod:`.replica_worker`), hand them calls,
notice them dying, replace them within the restart budget, and say what a crash cost."""

from __future__ import annotations

import collections
import os
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import modelopt_core as mo

from .errors import ReplicaCrashedError, ServeError
from .replica_worker import _proc_main, _Worker


class _ProcessWorkers:
    """ReplicaPool's worker processes (a mixin: ReplicaPool sets the attributes below)."""

    RESTART_WINDOW_S: float
    artifact: mo.ModelArtifact
    backend: str
    workers: int
    options: dict[str, Any]
    threads_per_replica: int
    max_restarts: int
    restarts: int
    model: Any
    _restart_times: list[float]
    _closed: bool
    _tmp: str | None

    def close(self) -> None:  # ReplicaPool's
        raise NotImplementedError

    def _init_process_state(self) -> None:
        #: guards what follows; waited on by calls that find no idle worker
        self._cond = threading.Condition()
        self._live: list[_Worker] = []  # loaded and not known dead (idle or running a call)
        self._idle: collections.deque[_Worker] = collections.deque()  # FIFO: take turns
        self._starting: set[Any] = set()  # processes being started in the background
        self._respawners: list[threading.Thread] = []
        self._down: str | None = None
        self._monitor: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None  # a pipe that wakes the monitor

    def _artifact_dir(self) -> str:
        path = self.artifact.path
        if self._tmp:
            return str(Path(self._tmp) / "artifact")
        if not (path and Path(path).is_dir()):
            self._tmp = tempfile.mkdtemp(prefix="modelopt-serve-")
            path = str(self.artifact.save(Path(self._tmp) / "artifact"))
        return str(path)

    def _spawn(self) -> _Worker:
        """Start one worker process (not waiting for it to load)."""
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        # daemon: killed if this process exits without closing the pool
        proc = ctx.Process(target=_proc_main, name="modelopt-replica", daemon=True,
                           args=(theirs, self._artifact_dir(), self.backend, self.options,
                                 self.threads_per_replica, self.model))
        proc.start()
        theirs.close()  # the worker holds the only other end: its death reads as EOF here
        return _Worker(proc, ours)

    def _start_processes(self) -> None:
        """Start every worker at once and wait until all have loaded (surfacing a load
        error now), then the thread that notices workers dying while idle."""
        started: list[_Worker] = []
        try:
            for _ in range(self.workers):
                started.append(self._spawn())
            for w in started:
                w.handshake()
        except BaseException:
            for w in started:
                if w.process.is_alive():
                    w.process.kill()
                w.process.join(5)
                w.conn.close()
            self.close()
            raise
        self._live.extend(started)
        self._idle.extend(started)
        self._wake = os.pipe()
        os.set_blocking(self._wake[1], False)  # a poke never blocks (a full pipe wakes anyway)
        self._monitor = threading.Thread(target=self._watch, name="modelopt-replica-monitor",
                                         daemon=True)
        self._monitor.start()

    def _watch(self) -> None:
        """Notice idle workers dying (a running one's caller notices itself) and replace
        them at once rather than when a call next picks them."""
        from multiprocessing.connection import wait

        assert self._wake is not None
        wake_r = self._wake[0]
        while True:
            with self._cond:
                if self._closed:
                    return
                watched = {w.process.sentinel: w for w in self._live}
            ready = wait([*watched, wake_r])
            if wake_r in ready:
                os.read(wake_r, 512)
            for r in ready:
                if r in watched:
                    self._lost(watched[r])

    def _poke(self) -> None:
        """Make the monitor re-read the live workers."""
        with self._cond:  # close() closes the pipe under the lock: never a reused fd
            if self._wake is not None:
                try:
                    os.write(self._wake[1], b"x")
                except OSError:  # full: a wake-up is pending anyway
                    pass

    def _take(self) -> _Worker:
        """An idle live worker, waiting for one; raises once the pool is closed or down."""
        with self._cond:
            while True:
                if self._closed:
                    raise ServeError(f"ReplicaPool for {self.artifact.name!r} is closed; "
                                     "build a new one.")
                if self._down is not None:
                    raise self._down_error()
                while self._idle:
                    w = self._idle.popleft()
                    if w.process.is_alive():
                        w.busy = True
                        return w
                    self._lost(w)  # died idle (the monitor has not seen it yet)
                self._cond.wait()

    def _give_back(self, w: _Worker) -> None:
        with self._cond:
            w.busy = False
            if w.dead:
                w.conn.close()
                return
            if not self._closed:
                self._idle.append(w)
                self._cond.notify()
                return
            self._live.remove(w)  # closed meanwhile: this worker is stopped by its caller
        w.stop()
        with self._cond:
            self._cond.notify_all()

    def _lost(self, w: _Worker) -> None:
        """``w`` died (idempotent): forget it and start a new worker in the background, or,
        past the restart budget, take the pool down."""
        with self._cond:
            if w.dead:
                return
            w.dead = True
            if w in self._live:
                self._live.remove(w)
            if w in self._idle:
                self._idle.remove(w)
            if w.process.is_alive():  # its pipe broke but it lives on: not trusted any more
                w.process.kill()
            w.process.join(5)  # reaped
            if not w.busy:  # else its call closes the pipe (never under a blocked read)
                w.conn.close()
            self._cond.notify_all()
            if not self._closed:
                self._replace()
        self._poke()

    def _replace(self) -> None:
        """One new worker in the background unless the restart budget is spent (then the
        pool is down). Call with ``_cond`` held."""
        if self._down is not None:
            return
        now = time.monotonic()
        recent = [t for t in self._restart_times if now - t < self.RESTART_WINDOW_S]
        if len(recent) >= self.max_restarts:
            self._down = (f"the replica processes crashed {self.max_restarts} times within "
                          f"{self.RESTART_WINDOW_S:.0f} s and were not started again")
            self._cond.notify_all()
            return
        self._restart_times = [*recent, now]
        self.restarts += 1
        t = threading.Thread(target=self._respawn, name="modelopt-replica-respawn", daemon=True)
        self._respawners = [r for r in self._respawners if r.is_alive()] + [t]
        t.start()

    def _respawn(self) -> None:
        """Start and load one worker (in a background thread), then hand it to the calls."""
        import logging

        w: _Worker | None = None
        try:
            w = self._spawn()  # outside the lock: calls go on meanwhile
            with self._cond:
                closed = self._closed
                if not closed:
                    self._starting.add(w.process)  # close() kills it
            if closed:
                w.process.kill()
                w.process.join(5)
                w.conn.close()
                return
            try:
                w.handshake()
            finally:
                with self._cond:
                    self._starting.discard(w.process)
        except Exception as e:  # noqa: BLE001 - counted as another death
            if w is not None:
                if w.process.is_alive():
                    w.process.kill()
                w.process.join(5)
                w.conn.close()
            with self._cond:
                if self._closed:  # killed by close() while loading
                    return
                logging.getLogger("modelopt.serve").warning(
                    "ReplicaPool for %r: a new replica process did not start: %s: %s",
                    self.artifact.name, type(e).__name__, e)
                self._replace()
            return
        with self._cond:
            if not self._closed:
                self._live.append(w)
                self._idle.append(w)
                self._cond.notify()
                w = None
        if w is not None:  # closed meanwhile
            w.stop()
        self._poke()

    def _down_error(self) -> ReplicaCrashedError:
        return ReplicaCrashedError(
            f"ReplicaPool for {self.artifact.name!r} on {self.backend!r}: the worker processes "
            f"crashed {self.max_restarts} times within {self.RESTART_WINDOW_S:.0f} s, so they "
            f"are not started again. Check the model on this backend (run it directly), then "
            f"rebuild the pool (restart the server).")

    def _run_in_process(self, flat_inputs: Sequence[Any]) -> list[Any]:
        from multiprocessing.connection import wait

        import torch

        arrays = [x.detach().cpu().numpy() for x in flat_inputs]
        w = self._take()
        try:
            w.conn.send(arrays)
            wait([w.conn, w.process.sentinel])  # the answer, or the worker's death
            kind, payload = w.conn.recv()
        except (EOFError, OSError) as e:  # it died (what it sent before is read first)
            self._lost(w)
            with self._cond:
                w.busy = False
            w.conn.close()
            raise self._crash_error(w) from e
        self._give_back(w)
        if kind == "error":
            raise payload
        return [torch.from_numpy(a) for a in payload]

    def _crash_error(self, w: _Worker) -> ReplicaCrashedError:
        """The error of the call that ``w`` was running when it died."""
        name, code = self.artifact.name, w.process.exitcode
        how = f"exit code {code}"
        if code is not None and code < 0:
            how = f"killed by signal {-code}"
            if -code in signal.valid_signals():
                how += f" ({signal.Signals(-code).name})"
        with self._cond:
            if self._closed:
                return ReplicaCrashedError(f"ReplicaPool for {name!r}: a replica process died "
                                           "and the pool is closed; build a new one.")
            if self._down is not None:
                return self._down_error()
            return ReplicaCrashedError(
                f"ReplicaPool for {name!r} on {self.backend!r}: replica process {w.pid} died "
                f"while running this request ({how}); the other workers go on and a new one "
                f"is being started (restart {self.restarts}); retry the request.")
