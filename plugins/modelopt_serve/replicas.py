"""ReplicaPool: N runners of one artifact behind one blocking ``run`` (parallel inference).

Runtimes that release the GIL while they compute (ONNX Runtime, OpenVINO, torch, TensorRT)
get one runner per thread in this process; others (or ``mode="process"``) one runner per
worker process (spawned; tensors cross as numpy arrays). The cores are split between the
replicas through each backend's own thread option so that they do not oversubscribe the
machine: ``max(1, cores // workers)`` threads per replica.

A worker process that dies (a native crash, the OOM killer, a kill) fails only the requests it
was running, with :class:`ReplicaCrashedError`; the pool then starts fresh workers, up to
``max_restarts`` times in any 60 s (a model that crashes on every call is not restarted
forever: past that, every call fails with the same typed error until the pool is rebuilt).
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import modelopt_core as mo
from modelopt_core.io import unflatten_outputs

from .errors import ReplicaCrashedError, ServeError

__all__ = ["GIL_FREE_BACKENDS", "ReplicaPool", "load_runner", "thread_option"]

#: backends whose runtimes release the GIL during inference: replicas run as threads
GIL_FREE_BACKENDS = frozenset({"onnxruntime", "openvino", "torch", "torch.compile", "tensorrt"})
#: config fields that set a backend's CPU thread count, in lookup order
THREAD_FIELDS = ("intra_op_num_threads", "inference_num_threads", "num_threads")


def load_runner(artifact: mo.ModelArtifact, backend: str, options: Mapping[str, Any] | None = None,
                plugins: Any = None) -> mo.Runner:
    """:func:`modelopt_core.load_runner` with the config as one mapping (what pools and worker
    processes carry around)."""
    return mo.load_runner(artifact, backend, plugins=plugins, **dict(options or {}))


def thread_option(backend: str, plugins: Any = None) -> str | None:
    """The config field of ``backend`` that sets its CPU thread count, or None."""
    pm = plugins or mo.get_plugin_manager()
    fields = mo.config_fields(pm.get("backend", backend).cls.Config)
    return next((f for f in THREAD_FIELDS if f in fields), None)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Dead:
    """Stands in for the process executor once the restart budget is spent."""

    def __init__(self, max_restarts: int, window_s: float) -> None:
        self.max_restarts, self.window_s = max_restarts, window_s

    def submit(self, *_: Any) -> Any:
        from concurrent.futures.process import BrokenProcessPool

        raise BrokenProcessPool("the replica processes were not restarted")

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


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

    outs = _WORKER["runner"]._run([torch.from_numpy(a) for a in arrays])
    return [o.detach().cpu().numpy() for o in outs]


def _proc_ping() -> int:
    if "error" in _WORKER:
        raise _WORKER["error"]
    return os.getpid()


class ReplicaPool:
    """``workers`` runners of one artifact; :meth:`run` runs flat inputs on a free one.

    ``artifact`` is a :class:`~modelopt_core.ModelArtifact` or a saved artifact's path.
    ``options`` are the backend's config options (shared by every replica); the thread
    option is filled in per replica unless given. ``mode``: ``"auto"`` (threads for
    :data:`GIL_FREE_BACKENDS`, processes otherwise), ``"thread"`` or ``"process"``.
    ``cores``: the cores to split (default: those this process may run on).
    ``max_restarts``: how many times in any 60 s the process workers are started again after
    one died (process mode only). ``model``: the architecture of a torch-format artifact (as
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
        self.mode = ("thread" if backend in GIL_FREE_BACKENDS else "process") \
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
        self._restart_lock = threading.RLock()
        self.notes: list[str] = []
        self.options = dict(options or {})
        field = thread_option(backend)
        if field is None:
            self.notes.append(f"backend {backend!r} has no known thread option "
                              f"({', '.join(THREAD_FIELDS)}); its threads are left as they are")
        elif field not in self.options:
            self.options[field] = self.threads_per_replica
        self.thread_field = field
        mo.get_plugin_manager().backend_for(artifact, backend, self.options)  # fail early, typed
        self._owned = True
        self._closed = False
        self._tmp: str | None = None
        self._runners: list[mo.Runner] = []
        self._free: queue.LifoQueue[mo.Runner] = queue.LifoQueue()
        self._executor: Any = None
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
        pool.notes, pool.options, pool.thread_field = [], {}, None
        pool.max_restarts, pool.restarts, pool._restart_times, pool.model = 0, 0, [], None
        pool._restart_lock = threading.RLock()
        pool._owned, pool._closed, pool._tmp, pool._executor = False, False, None, None
        pool._runners, pool._free = runners, queue.LifoQueue()
        for r in runners:
            pool._free.put(r)
        return pool

    def _start_processes(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        path = self.artifact.path
        if self._tmp:
            path = str(Path(self._tmp) / "artifact")
        elif not (path and Path(path).is_dir()):
            self._tmp = tempfile.mkdtemp(prefix="modelopt-serve-")
            path = str(self.artifact.save(Path(self._tmp) / "artifact"))
        self._executor = ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_proc_init,
            initargs=(path, self.backend, self.options, self.threads_per_replica, self.model))
        try:
            self._executor.submit(_proc_ping).result()  # surfaces load errors now
        except BaseException:
            self.close()
            raise

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
    def input_specs(self) -> tuple[mo.TensorSpec, ...]:
        """The artifact's input specs (flat, in input order)."""
        return self.artifact.inputs

    @property
    def output_tree(self) -> dict[str, Any] | None:
        """The artifact's output structure record (for :meth:`unflatten`)."""
        return self.artifact.io.get("outputs")

    def unflatten(self, flat: Sequence[Any]) -> Any:
        """Flat outputs rebuilt into the model's own output structure (as a runner does)."""
        tree = self.output_tree
        if tree is None and self.artifact.metadata.get("output_kind") == "tuple":
            return tuple(flat)
        return unflatten_outputs(flat, tree)

    def run(self, flat_inputs: Sequence[Any]) -> list[Any]:
        """Run flat inputs (artifact input order, already checked) on a free replica; blocks
        until one is free. Returns the flat output tensors."""
        if self._closed:
            raise ServeError(f"ReplicaPool for {self.artifact.name!r} is closed; build a new one.")
        if self._executor is not None:
            return self._run_in_process(flat_inputs)
        runner = self._free.get()
        try:
            return list(runner._run(flat_inputs))
        finally:
            self._free.put(runner)

    def _run_in_process(self, flat_inputs: Sequence[Any]) -> list[Any]:
        from concurrent.futures.process import BrokenProcessPool

        import torch

        arrays = [x.detach().cpu().numpy() for x in flat_inputs]
        executor = self._executor
        try:
            out = executor.submit(_proc_run, arrays).result()
        except BrokenProcessPool as e:
            raise self._replace_broken(executor, e) from e
        return [torch.from_numpy(a) for a in out]

    def _replace_broken(self, executor: Any, cause: BaseException) -> ReplicaCrashedError:
        """Start new workers in place of ``executor`` (once, whoever of the callers it failed
        comes first) unless the restart budget is spent; the error for the failed caller."""
        name = self.artifact.name
        with self._restart_lock:
            if self._closed:
                return ReplicaCrashedError(f"ReplicaPool for {name!r}: a replica process died "
                                           "and the pool is closed; build a new one.")
            if self._executor is executor and not isinstance(executor, _Dead):
                # not replaced yet by another failed caller; a spent pool stays down
                now = time.monotonic()
                recent = [t for t in self._restart_times if now - t < self.RESTART_WINDOW_S]
                executor.shutdown(wait=False, cancel_futures=True)
                if len(recent) >= self.max_restarts:
                    self._executor = _Dead(self.max_restarts, self.RESTART_WINDOW_S)
                else:
                    self._restart_times = [*recent, now]
                    self.restarts += 1
                    self._start_processes()
            if isinstance(self._executor, _Dead):
                return ReplicaCrashedError(
                    f"ReplicaPool for {name!r} on {self.backend!r}: a replica process died while "
                    f"running this request, and the workers crashed {self.max_restarts} times "
                    f"within {self.RESTART_WINDOW_S:.0f} s, so they are not started again. Check "
                    f"the model on this backend (run it directly), then rebuild the pool "
                    f"(restart the server).")
            return ReplicaCrashedError(
                f"ReplicaPool for {name!r} on {self.backend!r}: a replica process died while "
                f"running this request ({type(cause).__name__}); new workers were started "
                f"(restart {self.restarts}); retry the request.")

    def __call__(self, *inputs: Any) -> Any:
        """Run one call like a runner would (structured outputs)."""
        return self.unflatten(self.run(list(inputs)))

    def close(self) -> None:
        """Close the replicas (idempotent); a wrapped runner is left open."""
        if self._closed:
            return
        self._closed = True
        if self._owned:
            for r in self._runners:
                r.close()
        if self._executor is not None:
            with self._restart_lock:
                self._executor.shutdown(wait=True, cancel_futures=True)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def down(self) -> str | None:
        """Why the pool cannot run anything any more (its process workers kept crashing and
        the restart budget is spent), or None while it can."""
        if isinstance(self._executor, _Dead):
            return (f"the replica processes crashed {self.max_restarts} times within "
                    f"{self.RESTART_WINDOW_S:.0f} s and were not started again")
        return None

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
