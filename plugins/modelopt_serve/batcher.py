"""DynamicBatcher: many single requests run together (max batch size, max delay).

Callers :meth:`~DynamicBatcher.submit` one request (inputs with a leading batch dim, usually
1) and get a :class:`concurrent.futures.Future`. One worker thread per replica takes turns to
form a batch: the oldest request's bucket (same non-batch shapes and dtypes), up to
``max_batch_size`` rows or ``max_delay_ms`` after the oldest arrived; it concatenates them on
dim 0, pads (preferred sizes, fixed batch) by repeating the last row, runs the batch on its
replica, splits the outputs and resolves the futures. Requests are checked before queuing;
a batch that still fails is re-run request by request so only the bad one gets the error.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Self

import modelopt_core as mo
from modelopt_core import order_inputs

from .batching import RequestChecker, concat_rows, pad_rows, split_rows, target_rows
from .cache import ResultCache
from .errors import BatcherClosedError, RequestTimeoutError, ServeError
from .pending import PendingQueue, Request
from .replicas import ReplicaPool

__all__ = ["DynamicBatcher"]

log = logging.getLogger("modelopt.serve")


class DynamicBatcher:
    """Groups single requests into batches for a :class:`ReplicaPool` (or one runner).

    ``max_batch_size``: rows per run; ``max_delay_ms``: how long the oldest queued request
    waits for others; ``max_idle_ms``: a batch also leaves once no request arrived for this
    long (None: off), so at low load a request does not wait the whole ``max_delay_ms`` for
    company that is not coming (under load the queue fills while the replicas are busy and
    batches leave full); ``preferred_batch_sizes``: batches are padded up to the next one;
    ``max_queue``: queued requests before :class:`QueueFullError`; ``timeout_s``: a request
    not started within it fails with :class:`RequestTimeoutError`; ``cache``: a
    :class:`ResultCache` checked before queuing; ``on_batch(rows, seconds)``: called after
    each run. The batcher does not close the pool or runner it was given (``from_artifact``
    builds a pool it owns and closes).
    """

    def __init__(self, pool_or_runner: ReplicaPool | mo.Runner, *, max_batch_size: int = 16,
                 max_delay_ms: float = 5.0, max_idle_ms: float | None = 1.0,
                 preferred_batch_sizes: Sequence[int] = (),
                 max_queue: int = 1024, timeout_s: float | None = None,
                 cache: ResultCache | None = None,
                 on_batch: Callable[[int, float], None] | None = None,
                 fingerprint: str | None = None) -> None:
        if isinstance(pool_or_runner, mo.Runner):
            pool_or_runner = ReplicaPool.from_runner(pool_or_runner)
        if not isinstance(pool_or_runner, ReplicaPool):
            raise ServeError(f"DynamicBatcher: expected a ReplicaPool or a modelopt Runner, got "
                             f"{type(pool_or_runner).__name__}.")
        if max_idle_ms is not None and not max_idle_ms >= 0:
            raise ServeError(f"DynamicBatcher: max_idle_ms must be >= 0 or None, got "
                             f"{max_idle_ms!r}.")
        if int(max_batch_size) < 1 or int(max_queue) < 1 or max_delay_ms < 0:
            raise ServeError(f"DynamicBatcher: max_batch_size ({max_batch_size}) and max_queue "
                             f"({max_queue}) must be >= 1 and max_delay_ms ({max_delay_ms}) >= 0.")
        if any(int(p) < 1 for p in preferred_batch_sizes):
            raise ServeError(f"DynamicBatcher: preferred_batch_sizes must be >= 1, got "
                             f"{list(preferred_batch_sizes)}.")
        if timeout_s is not None and not timeout_s > 0:
            raise ServeError(f"DynamicBatcher: timeout_s must be > 0 or None, got {timeout_s!r}.")
        self.pool = pool_or_runner
        self.checker = RequestChecker(self.pool.artifact)
        self.max_batch_size = int(max_batch_size)
        self._cap = min(self.max_batch_size, self.checker.fixed or self.max_batch_size)
        self.max_delay_ms = float(max_delay_ms)
        self.max_idle_ms = None if max_idle_ms is None else float(max_idle_ms)
        self.preferred_batch_sizes = tuple(sorted({int(p) for p in preferred_batch_sizes}))
        self.max_queue = int(max_queue)
        self.timeout_s = timeout_s
        self.cache = cache
        self.on_batch = on_batch
        self.fingerprint = fingerprint
        if cache is not None and fingerprint is None:
            from .fingerprint import artifact_fingerprint

            who = self.pool.backend or type(self.pool.runners[0]).__name__
            self.fingerprint = artifact_fingerprint(self.pool.artifact) + "|" + who + "|" + \
                json.dumps(self.pool.options, sort_keys=True, default=str)
        self._names = [s.name for s in self.pool.input_specs]
        self._owns_pool = False
        self._queue = PendingQueue(self.max_queue, self._cap, self.max_delay_ms / 1000.0,
                                   timeout_s, lambda reqs: self._fail(reqs, self._timeout_error),
                                   self.checker.name,
                                   None if max_idle_ms is None else max_idle_ms / 1000.0)
        self._lock = threading.Lock()  # the counters
        self._closed = False
        self._stats: dict[str, Any] = {"requests": 0, "rows": 0, "batches": 0, "padded_rows": 0,
                                       "in_flight": 0, "cache_hits": 0, "run_seconds": 0.0}
        self._sizes: collections.Counter[int] = collections.Counter()
        self._errors: collections.Counter[str] = collections.Counter()
        self._threads = [threading.Thread(target=self._work, name=f"modelopt-batcher-{i}",
                                          daemon=True) for i in range(self.pool.size)]
        if timeout_s is not None:
            self._threads.append(threading.Thread(target=self._queue.sweep_forever, daemon=True,
                                                  name="modelopt-batcher-timeouts"))
        for t in self._threads:
            t.start()

    @classmethod
    def from_artifact(cls, artifact: Any, backend: str | None = None, *, workers: int = 1,
                      options: Mapping[str, Any] | None = None, mode: str = "auto",
                      cores: int | None = None, **batcher_options: Any) -> DynamicBatcher:
        """A batcher over a new :class:`ReplicaPool` it owns (closed with the batcher)."""
        pool = ReplicaPool(artifact, backend, workers, options, mode, cores)
        try:
            batcher = cls(pool, **batcher_options)
        except BaseException:
            pool.close()
            raise
        batcher._owns_pool = True
        return batcher

    # ---- submitting ----------------------------------------------------------------------

    def submit(self, *inputs: Any, **named: Any) -> Future:
        """Queue one request (positional, named or one dict of inputs, each with a leading
        batch dim); the future resolves to what ``runner(*inputs)`` returns for it.
        Raises :class:`~modelopt_core.InputSpecError` (bad inputs), :class:`QueueFullError`
        or :class:`BatcherClosedError` at once."""
        try:
            if self._closed:
                raise BatcherClosedError(f"batcher for {self.checker.name!r} is closed; build a "
                                         "new one.")
            if named or (len(inputs) == 1 and isinstance(inputs[0], Mapping)):
                inputs = order_inputs(inputs, named, self._names,
                                      f"batcher for {self.checker.name!r}")
            rows = self.checker.rows(inputs)
            key = self.cache.key(self.fingerprint, inputs) if self.cache is not None else None
            if key is not None:
                hit = self.cache.get(key)
                if hit is not None:
                    fut: Future = Future()
                    fut.set_result(self.pool.unflatten(hit))
                    with self._lock:
                        self._stats["requests"] += 1
                        self._stats["rows"] += rows
                        self._stats["cache_hits"] += 1
                    return fut
            req = Request(inputs, rows, key)
            with self._lock:  # counted first: a fast worker may finish it before put returns
                self._stats["requests"] += 1
                self._stats["rows"] += rows
            try:
                self._queue.put(req)
            except mo.ModeloptError:
                with self._lock:
                    self._stats["requests"] -= 1
                    self._stats["rows"] -= rows
                raise
            return req.future
        except mo.ModeloptError as e:
            with self._lock:
                self._errors[type(e).__name__] += 1
            raise

    async def submit_async(self, *inputs: Any, **named: Any) -> Any:
        """Awaitable :meth:`submit`: the request's result."""
        return await asyncio.wrap_future(self.submit(*inputs, **named))

    def __call__(self, *inputs: Any, **named: Any) -> Any:
        """Submit one request and wait for its result."""
        return self.submit(*inputs, **named).result()

    # ---- the workers ---------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._queue.take()
            if batch is None:
                return
            if not batch:  # only expired requests were taken (already failed)
                continue
            try:
                self._execute(batch)
            except Exception as e:
                log.exception("batcher for %r: a batch failed unexpectedly", self.checker.name)
                for r in batch:
                    if not r.future.done():
                        self._resolve_error(r, e)

    def _timeout_error(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"batcher for {self.checker.name!r}: the request waited more than {self.timeout_s} s "
            "without starting; add replicas, lower the load or raise timeout_s.")

    def _fail(self, requests: Sequence[Request], make_error: Callable[[], BaseException]) -> None:
        """Resolve queued ``requests`` with a fresh ``make_error()`` each and count them."""
        for r in requests:
            e = make_error()
            if r.future.set_running_or_notify_cancel():  # False: the caller cancelled it
                r.future.set_exception(e)
                with self._lock:
                    self._errors[type(e).__name__] += 1

    def _execute(self, batch: list[Request]) -> None:
        with self._lock:
            self._stats["in_flight"] += len(batch)
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        rows = sum(r.rows for r in live)
        t0 = time.perf_counter()
        if live:
            target = target_rows(rows, self.checker.fixed, self.preferred_batch_sizes)
            try:
                inputs = pad_rows(concat_rows([r.inputs for r in live]), target)
                outs = self.pool.run(inputs)
                parts = split_rows(outs, [r.rows for r in live], target)
            except Exception as e:  # noqa: BLE001 - resolved into the callers' futures
                parts, err = None, e
            else:
                err = None
            if parts is None and len(live) == 1 and err is not None:
                self._resolve_error(live[0], err)
            elif parts is None:
                for r in live:  # isolate the bad request (or a model that mixes rows)
                    self._run_one(r)
            else:
                for r, flat in zip(live, parts):
                    self._resolve(r, flat)
        dt = time.perf_counter() - t0
        with self._lock:
            s = self._stats
            s["in_flight"] -= len(batch)
            if live:
                s["batches"] += 1
                s["run_seconds"] += dt
                s["padded_rows"] += max(0, target - rows)
                self._sizes[rows] += 1
        if live and self.on_batch is not None:
            try:
                self.on_batch(rows, dt)
            except Exception:
                log.exception("batcher for %r: on_batch callback failed", self.checker.name)

    def _run_one(self, r: Request) -> None:
        target = target_rows(r.rows, self.checker.fixed, ())
        try:
            outs = self.pool.run(pad_rows(r.inputs, target))
            parts = split_rows(outs, [r.rows], target)
            self._resolve(r, parts[0] if parts else list(outs))
        except Exception as e:  # noqa: BLE001
            self._resolve_error(r, e)

    def _resolve(self, r: Request, flat: list[Any]) -> None:
        try:
            result = self.pool.unflatten(flat)
        except Exception as e:  # noqa: BLE001
            self._resolve_error(r, e)
            return
        if r.key is not None:  # before the result: a caller's next identical request hits
            try:
                self.cache.put(r.key, flat)  # type: ignore[union-attr]
            except Exception:
                log.exception("batcher for %r: caching a result failed", self.checker.name)
        r.future.set_result(result)

    def _resolve_error(self, r: Request, e: BaseException) -> None:
        r.future.set_exception(e)
        with self._lock:
            self._errors[type(e).__name__] += 1

    # ---- state and shutdown --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A snapshot: cumulative ``requests``, ``rows``, ``batches``, ``batch_sizes`` (rows
        per run -> runs), ``padded_rows``, ``cache_hits``, ``errors`` (type -> count),
        ``run_seconds``; current ``queue_depth`` and ``in_flight``; ``cache`` (its stats)."""
        with self._lock:
            out = dict(self._stats, queue_depth=len(self._queue),
                       batch_sizes=dict(self._sizes), errors=dict(self._errors))
        out["cache"] = self.cache.stats() if self.cache is not None else None
        return out

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def close(self, drain: bool = True) -> None:
        """Stop accepting requests. ``drain=True`` runs every queued request first; False
        fails them with :class:`BatcherClosedError`. Running batches always finish.
        Idempotent; closes the pool only when the batcher built it (``from_artifact``)."""
        first = not self._closed
        self._closed = True
        self._fail(self._queue.close(drain), lambda: BatcherClosedError(
            f"batcher for {self.checker.name!r} was closed (drain=False) before the request ran."))
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                t.join()
        if first and self._owns_pool:
            self.pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
