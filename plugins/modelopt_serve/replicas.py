"""ReplicaPool: N runners of one artifact behind one blocking ``run`` (parallel inference).

Runtimes that release the GIL while they compute (ONNX Runtime, OpenVINO, torch, TensorRT)
get one runner per thread in this process; others (or ``mode="process"``) one runner per
worker process (spawned; tensors cross as numpy arrays over that worker's own pipe). The cores
are split between the replicas through each backend's own thread option so that they do not
oversubscribe the machine: ``max(1, cores // workers)`` threads per replica.

A worker process that dies (a native crash, the OOM killer, a kill) fails only the request it
was running, with :class:`ReplicaCrashedError`; the other workers keep serving, and a new
worker is started in its place in the background (calls meanwhile go to the live ones, or
wait for the new one when none is left). At most ``max_restarts`` workers are started again in
any 60 s (a model that crashes on every call is not restarted forever: past that, every call
fails with the same typed error until the pool is rebuilt)."""

from __future__ import annotations

import collections
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import modelopt_core as mo

from .errors import ReplicaCrashedError, ServeError

__all__ = ["ReplicaPool", "load_runner", "releases_gil", "thread_option"]


def load_runner(artifact: mo.ModelArtifact, backend: str, options: Mapping[str, Any] | None = None,
                plugins: Any = None) -> mo.Runner:
    """:func:`modelopt_core.load_runner` with the config as one mapping (what pools and worker
    processes carry around)."""
    return mo.load_runner(artifact, backend, plugins=plugins, **dict(options or {}))


def thread_option(backend: str, plugins: Any = None) -> str | None:
    """The config field of ``backend`` that sets its CPU thread count (the class's
    ``thread_option`` trait), or None."""
    pm = plugins or mo.get_plugin_manager()
    return pm.get("backend", backend).cls.thread_option


def releases_gil(backend: str, plugins: Any = None) -> bool:
    """Whether ``backend``'s inference releases the GIL (its ``releases_gil`` trait):
    replicas then run as threads, else as processes."""
    pm = plugins or mo.get_plugin_manager()
    return bool(pm.get("backend", backend).cls.releases_gil)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---- worker processes (module-level: spawned children import them) ---------------------------

_WORKER: dict[str, Any] = {}


def _proc_init(path: str, backend: str, options: dict[str, Any], threads: int,
               model: Any = None) -> None:
    try:
        import torch

        torch.set_num_threads(threads)
        _WORKER["runner"] = load_runner(mo.load_artifact(path, model=model), backend, options)
    except Exception as e:  # noqa: BLE001 - reported by the first call (a failing initializer
        # would break the pool without saying why)
        _WORKER["error"] = ServeError(f"replica process {os.getpid()}: cannot load {path} on "
                                      f"{backend!r}: {type(e).__name__}: {e}")


def _proc_run(arrays: list[Any]) -> list[Any]:
    if "error" in _WORKER:
        raise _WORKER["error"]
    import torch

    outs = _WORKER["runner"].run_flat([torch.from_numpy(a) for a in arrays])
    return [o.detach().cpu().numpy() for o in outs]


def _proc_ping() -> int:
    if "error" in _WORKER:
        raise _WORKER["error"]
    return os.getpid()


def _proc_main(conn: Any, path: str, backend: str, options: dict[str, Any], threads: int,
               model: Any = None) -> None:
    """A worker process: load the runner, say ``("ready", pid)`` (or ``("error", exc)``), then
    answer each list of arrays with ``("ok", outputs)`` or ``("error", exc)`` until ``None`` or
    the pool's end of the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which stops us
    _proc_init(path, backend, options, threads, model)
    try:
        conn.send(("ready", _proc_ping()))
    except ServeError as e:
        conn.send(("error", e))
        return
    while True:
        try:
            arrays = conn.recv()
        except (EOFError, OSError):  # the pool is gone
            return
        if arrays is None:
            return
        try:
            reply: tuple[str, Any] = ("ok", _proc_run(arrays))
        except Exception as e:  # noqa: BLE001 - the caller's error
            reply = ("error", e)
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        except Exception as e:  # noqa: BLE001 - an exception that does not pickle
            conn.send(("error", ServeError(f"replica process {os.getpid()}: "
                                           f"{type(e).__name__}: {e}")))


class _Worker:
    """One worker process and the pool's end of its pipe."""

    __slots__ = ("busy", "conn", "dead", "pid", "process")

    def __init__(self, process: Any, conn: Any) -> None:
        self.process, self.conn, self.pid = process, conn, process.pid
        self.dead = False
        self.busy = False  # a call holds it (and its pipe: closed by that call, not others)

    def handshake(self) -> None:
        """Wait until the worker has loaded the runner; raises its load error, or
        :class:`ReplicaCrashedError` when it died first."""
        from multiprocessing.connection import wait

        try:
            wait([self.conn, self.process.sentinel])
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            kind, payload = "died", None
        if kind == "error":
            raise payload
        if kind != "ready":
            raise ReplicaCrashedError(f"replica process {self.pid} died while loading the "
                                      f"runner (exit code {self.process.exitcode}).")

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit (it finishes the call it runs), kill it past ``timeout``."""
        try:
            self.conn.send(None)
        except (EOFError, OSError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


class ReplicaPool:
    """``workers`` runners of one artifact; :meth:`run` runs flat inputs on a free one.

    ``artifact`` is a :class:`~modelopt_core.ModelArtifact` or a saved artifact's path.
    ``options`` are the backend's config options (shared by every replica); the thread
    option is filled in per replica unless given. ``mode``: ``"auto"`` (threads for
    backends whose class declares ``releases_gil``, processes otherwise), ``"thread"`` or
    ``"process"``.
    ``cores``: the cores to split (default: those this process may run on).
    ``max_restarts``: how many dead worker processes are replaced in any 60 s, one new
    worker each (process mode only). ``model``: the architecture of a torch-format artifact (as
    ``load_artifact``'s ``model=``), for a path and for worker processes, which load the
    artifact themselves (it must pickle: a class importable by its module's name).
    """

    #: the window (s) over which ``max_restarts`` counts
    RESTART_WINDOW_S = 60.0

    def __init__(self, artifact: mo.ModelArtifact | str | os.PathLike[str],
                 backend: str = "onnxruntime", workers: int = 1,
                 options: Mapping[str, Any] | None = None, mode: str = "auto",
                 cores: int | None = None, max_restarts: int = 5, model: Any = None) -> None:
        if isinstance(artifact, (str, os.PathLike)):
            artifact = mo.load_artifact(artifact, model=model)
        if int(workers) < 1:
            raise ServeError(f"ReplicaPool: workers must be >= 1, got {workers}.")
        if mode not in ("auto", "thread", "process"):
            raise ServeError(f"ReplicaPool: mode must be 'auto', 'thread' or 'process', not "
                             f"{mode!r}.")
        self.artifact = artifact
        self.backend = backend
        self.workers = int(workers)
        self.mode = ("thread" if releases_gil(backend) else "process") \
            if mode == "auto" else mode
        self.cores = int(cores) if cores else _cores()
        self.threads_per_replica = max(1, self.cores // self.workers)
        self.max_restarts = int(max_restarts)
        self.model = model
        if self.mode == "process" and artifact.format == "torch" and model is None:
            raise ServeError(f"ReplicaPool: process replicas load the artifact themselves, and "
                             f"{artifact.name!r} is a torch-format artifact (weights only): pass "
                             f"model= (its architecture, as for load_artifact), or use "
                             f"mode='thread'.")
        self.restarts = 0
        self._restart_times: list[float] = []
        self.notes: list[str] = []
        self.options = dict(options or {})
        field = thread_option(backend)
        if field is None:
            self.notes.append(f"backend {backend!r} declares no thread option (Backend."
                              "thread_option); its threads are left as they are")
        elif field not in self.options:
            self.options[field] = self.threads_per_replica
        mo.get_plugin_manager().backend_for(artifact, backend, self.options)  # fail early, typed
        self._owned = True
        self._closed = False
        self._tmp: str | None = None
        self._runners: list[mo.Runner] = []
        self._free: queue.LifoQueue[mo.Runner] = queue.LifoQueue()
        self._init_process_state()
        if self.mode == "thread":
            try:
                for _ in range(self.workers):
                    self._runners.append(load_runner(artifact, backend, self.options))
            except BaseException:
                self.close()
                raise
            for r in self._runners:
                self._free.put(r)
        else:
            self._start_processes()

    @classmethod
    def from_runner(cls, runner: mo.Runner) -> ReplicaPool:
        """A one-replica pool around an existing runner (not closed by the pool)."""
        return cls.from_runners([runner])

    @classmethod
    def from_runners(cls, runners: Sequence[mo.Runner]) -> ReplicaPool:
        """A thread pool around runners you loaded yourself, all of one artifact (they are
        not closed by the pool; each must be usable from another thread)."""
        runners = list(runners)
        if not runners or any(r.artifact is not runners[0].artifact for r in runners):
            raise ServeError("ReplicaPool.from_runners: give one or more runners of the same "
                             "artifact.")
        pool = cls.__new__(cls)
        pool.artifact, pool.backend, pool.workers = runners[0].artifact, "", len(runners)
        pool.mode, pool.cores, pool.threads_per_replica = "thread", _cores(), 0
        pool.notes, pool.options = [], {}
        pool.max_restarts, pool.restarts, pool._restart_times, pool.model = 0, 0, [], None
        pool._owned, pool._closed, pool._tmp = False, False, None
        pool._init_process_state()
        pool._runners, pool._free = runners, queue.LifoQueue()
        for r in runners:
            pool._free.put(r)
        return pool

    # ---- worker processes ------------------------------------------------------------------

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

    # ---- running ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of replicas (batches that can run at once)."""
        return self.workers

    @property
    def runners(self) -> tuple[mo.Runner, ...]:
        """The thread replicas' runners (empty in process mode)."""
        return tuple(self._runners)

    @property
    def worker_pids(self) -> tuple[int, ...]:
        """The pids of the loaded worker processes not known to be dead (empty in thread
        mode); fewer than :attr:`size` while a replacement loads."""
        with self._cond:
            return tuple(w.pid for w in self._live)

    @property
    def input_specs(self) -> tuple[mo.TensorSpec, ...]:
        """The artifact's input specs (flat, in input order)."""
        return self.artifact.inputs

    @property
    def output_tree(self) -> dict[str, Any] | None:
        """The artifact's output structure record (for :meth:`unflatten`)."""
        return self.artifact.io.get("outputs")

    def unflatten(self, flat: Sequence[Any]) -> Any:
        """Flat outputs rebuilt into the model's own output structure (as a runner does):
        :meth:`mo.Runner.unflatten` of a replica, or in process mode (no runner here) of a
        base ``mo.Runner`` of the artifact, which loads nothing."""
        if self._runners:
            return self._runners[0].unflatten(flat)
        shape = getattr(self, "_shape", None)
        if shape is None:
            shape = self._shape = mo.Runner(self.artifact)
        return shape.unflatten(flat)

    def run(self, flat_inputs: Sequence[Any]) -> list[Any]:
        """Run flat inputs (artifact input order, already checked) on a free replica; blocks
        until one is free. Returns the flat output tensors."""
        if self._closed:
            raise ServeError(f"ReplicaPool for {self.artifact.name!r} is closed; build a new one.")
        if self.mode == "process":
            return self._run_in_process(flat_inputs)
        runner = self._free.get()
        try:
            return runner.run_flat(flat_inputs)
        finally:
            self._free.put(runner)

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

    def __call__(self, *inputs: Any) -> Any:
        """Run one call like a runner would (structured outputs)."""
        return self.unflatten(self.run(list(inputs)))

    def close(self) -> None:
        """Close the replicas (idempotent); a wrapped runner is left open. Worker processes
        finish the call they run (killed past 30 s); one still loading is killed."""
        if self._closed:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            idle, starting = list(self._idle), list(self._starting)
            self._idle.clear()
            for w in idle:
                self._live.remove(w)
        self._poke()
        if self._owned:
            for r in self._runners:
                r.close()
        for proc in starting:
            proc.kill()
        for w in idle:
            w.stop()
        with self._cond:  # the busy ones: their callers stop them when the call returns
            deadline = time.monotonic() + 30
            while self._live and self._cond.wait(max(0.0, deadline - time.monotonic())):
                pass
            busy, self._live = list(self._live), []
        for w in busy:
            w.process.kill()
            w.process.join(5)
        for t in [*self._respawners, *([self._monitor] if self._monitor else [])]:
            t.join(10)
        with self._cond:
            if self._wake is not None:
                for fd in self._wake:
                    os.close(fd)
                self._wake = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def down(self) -> str | None:
        """Why the pool cannot run anything any more (its process workers kept crashing and
        the restart budget is spent), or None while it can."""
        return self._down

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ReplicaPool({self.artifact.name!r}, backend={self.backend!r}, "
                f"workers={self.workers}, mode={self.mode!r}, "
                f"threads_per_replica={self.threads_per_replica})")
