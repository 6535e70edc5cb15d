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
fails with the same typed error until the pool is rebuilt).

The process mode lives in :mod:`.process_pool` (the pool's side) and :mod:`.replica_worker`
(the worker's)."""

from __future__ import annotations

import os
import queue
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self

import modelopt_core as mo

from .errors import ServeError
from .process_pool import _ProcessWorkers

__all__ = ["ReplicaPool", "load_runner", "releases_gil", "thread_option"]


def load_runner(artifact: mo.ModelArtifact, backend: str, options: Mapping[str, Any] | None = None,
                plugins: Any = None) -> mo.Runner:
    """:func:`modelopt_core.load_runner` with the config as one mapping (what pools and worker
    processes carry around)."""
    return mo.load_runner(artifact, backend, plugins=plugins, **dict(options or {}))


def runtime_of(artifact: mo.ModelArtifact, backend: str | None,
               plugins: Any = None) -> tuple[str, dict[str, Any]]:
    """The backend ``artifact`` is served on (``backend``, else the runtime it carries, else
    its format's reference backend) and the options it carries for that backend."""
    pm = plugins or mo.get_plugin_manager()
    return pm.runtime_for(artifact, backend)


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


class ReplicaPool(_ProcessWorkers):
    """``workers`` runners of one artifact; :meth:`run` runs flat inputs on a free one.

    ``artifact`` is a :class:`~modelopt_core.ModelArtifact` or a saved artifact's path.
    ``backend`` None: the runtime the artifact carries (a search's best), else its format's
    reference backend. ``options`` are the backend's config options (shared by every
    replica), over those the artifact carries; the thread option is filled in per replica
    (the cores split between the replicas) unless given. ``mode``: ``"auto"`` (threads for
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
                 backend: str | None = None, workers: int = 1,
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
        backend, carried = runtime_of(artifact, backend)
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
        self.options = {**carried, **dict(options or {})}
        field = thread_option(backend)
        if field is not None and field in carried and field not in (options or {}):
            self.notes.append(
                f"the artifact was measured with {field}={carried[field]}; serving splits "
                f"the cores instead ({self.threads_per_replica} per replica; pass "
                f"--backend-option {field}=N to set it)")
            del self.options[field]
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
