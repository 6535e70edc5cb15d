"""The HTTP app: ``create_app(artifact) -> fastapi.FastAPI``.

Routes: ``POST /predict`` (JSON or binary tensors, see :mod:`modelopt_serve.codec`),
``GET /health`` (liveness), ``GET /ready`` (503 until the replicas are loaded and while
shutting down), ``GET /spec`` (input specs, for clients), ``GET /metrics`` (Prometheus, see
:mod:`modelopt_serve.metrics`). The replicas load in FastAPI's lifespan (in a worker thread, so
``/health`` answers at once) and the batcher drains on shutdown. Every failed request (status
400 and up) is logged as one JSON line on the ``modelopt.serve`` logger (5xx at WARNING, the
others at INFO); with ``access_log=True`` every request is. Every error answer, unknown routes
and methods included, is ``{"error": TYPE, "detail": MESSAGE}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

import modelopt_core as mo
from modelopt_core.errors import InputSpecError, ModeloptError

from . import codec
from .config import DEFAULTS, ServeConfig  # noqa: F401 (importable from here as before)
from .errors import (
    BatcherClosedError,
    ClientDisconnectedError,
    QueueFullError,
    ReadTimeoutError,
    ReplicaCrashedError,
    RequestTimeoutError,
)
from .http_io import (
    READ_TIMEOUT_KEY,
    _AccessLog,
    _nbytes,
    _off_loop,
    _read_body,
    read_timeout_message,
)
from .metrics import ServeMetrics
from .watch import _watch

__all__ = ["ServeState", "create_app", "error_status"]

log = logging.getLogger("modelopt.serve")


def error_status(exc: BaseException) -> int:
    """The HTTP status of a failed request."""
    if isinstance(exc, codec.BadRequestError):
        return exc.status
    if isinstance(exc, InputSpecError):
        return 422
    if isinstance(exc, (QueueFullError, BatcherClosedError, ReplicaCrashedError)):
        return 503
    if isinstance(exc, RequestTimeoutError):
        return 504
    if isinstance(exc, ReadTimeoutError):
        return 408
    if isinstance(exc, ClientDisconnectedError):
        return 499
    return 500


class ServeState:
    """What one app holds: the artifact, and once loaded its replica pool, cache and batcher."""

    def __init__(self, artifact: Any, backend: str, options: dict[str, Any]) -> None:
        import modelopt_core as mo
        from modelopt_core.recipe import build_model

        self.model = build_model(options.get("model"), options.get("model_kwargs"), "serve")
        if isinstance(artifact, mo.ModelArtifact):
            self.artifact, self.name = artifact, artifact.name
        else:  # a loaded artifact's own name is its last step's; the folder says more
            self.artifact = load_served(Path(artifact), self.model)
            self.name = Path(artifact).name
        from .replicas import runtime_of

        self.backend = runtime_of(self.artifact, backend)[0]
        self.options = dict(options)
        self.pool: Any = None
        self.cache: Any = None
        self.batcher: Any = None
        self.load_error: str | None = None
        self.shutting_down = False
        #: called (from the loading thread) when the replicas fail to load; the CLI stops
        self.on_load_failed: Any = None
        self.metrics = ServeMetrics(self.stats, self.health)

    @property
    def ready(self) -> bool:
        return (self.batcher is not None and not self.shutting_down
                and self.pool.down is None)

    def health(self) -> dict[str, Any]:
        """What the alerting rules watch besides the batcher: readiness, queue capacity and
        replica restarts."""
        return {"ready": self.ready, "queue_capacity": self.options["max_queue"],
                "replica_restarts": self.pool.restarts if self.pool is not None else 0}

    def stats(self) -> dict[str, Any] | None:
        return self.batcher.stats() if self.batcher is not None else None

    def load(self) -> None:
        """Build the replica pool, the cache and the batcher (blocking: run it in a thread)."""
        from .batcher import DynamicBatcher
        from .cache import ResultCache
        from .replicas import ReplicaPool

        o = self.options
        try:
            self.pool = ReplicaPool(self.artifact, backend=self.backend, workers=o["workers"],
                                    options=o["backend_options"], mode=o["mode"],
                                    cores=o["cores"], max_restarts=o["max_restarts"],
                                    model=self.model)
            if o["cache_size"] > 0:
                self.cache = ResultCache(max_entries=o["cache_size"],
                                         max_bytes=int(o["cache_mb"] * 2**20),
                                         ttl_s=o["cache_ttl_s"])
            batcher = DynamicBatcher(
                self.pool, max_batch_size=o["max_batch_size"], max_delay_ms=o["max_delay_ms"],
                max_idle_ms=o["max_idle_ms"],
                preferred_batch_sizes=tuple(o["preferred_batch_sizes"]),
                max_queue=o["max_queue"], timeout_s=o["timeout_s"], cache=self.cache)
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            log.error(json.dumps({"event": "load_failed", "artifact": self.name,
                                  "backend": self.backend, "error": self.load_error}))
            self._free()
            if self.on_load_failed is not None:
                self.on_load_failed()
            raise
        warm_ms = self.warm_up()
        if o["freeze_gc"]:
            # a server process's startup objects (torch, the runtime, FastAPI: ~200k) live as
            # long as it does; frozen, the collector stops rescanning them, and its full
            # collections stop stalling every request in flight (~65-90 ms each, measured)
            import gc

            gc.collect()
            gc.freeze()
        self.batcher = batcher  # ready (and /ready says so) once warmed up
        log.info(json.dumps({"event": "ready", "artifact": self.name,
                             "backend": self.backend, "workers": o["workers"],
                             "warmup_ms": warm_ms}))

    def warm_up(self) -> float | None:
        """Take a request's whole path once per replica before ``/ready``: each codec's
        decode and encode and a run of the model on a spec-shaped input. Without it the first
        client request pays the codecs' lazy imports (``safetensors.torch`` pulls in about a
        second of torch modules) on the event loop, stalling every request in flight behind it,
        plus the runtime's first-run allocations. Returns the milliseconds it took, or None
        when it failed (logged; the server still serves: the model may refuse random inputs).
        """
        from .client import make_inputs

        t0 = time.perf_counter()
        specs = self.artifact.inputs
        try:
            named = make_inputs([s.to_data() for s in specs], seed=0)
            bodies = {m: codec.encode_inputs(named, m) for m in codec.MEDIA_TYPES}
            flat = [codec.decode_inputs(bodies[m], m, specs) for m in codec.MEDIA_TYPES][0]
            # the model: every thread replica, or as many runs as there are worker processes
            for r in self.pool.runners or [None] * self.pool.size:
                out = r.run_flat(list(flat)) if r is not None else self.pool.run(list(flat))
            result = self.pool.unflatten(out)
            for m in codec.MEDIA_TYPES:
                codec.encode_outputs(result, m)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            log.warning(json.dumps({"event": "warmup_failed", "artifact": self.name,
                                    "error": f"{type(e).__name__}: {e}"}))
            return None
        return round(1e3 * (time.perf_counter() - t0), 1)

    def close(self) -> None:
        """Drain the batcher, then free the replicas."""
        self.shutting_down = True
        self._free()

    def _free(self) -> None:
        if self.batcher is not None:
            self.batcher.close(drain=True)
        if self.pool is not None:
            self.pool.close()

    def spec(self) -> dict[str, Any]:
        """What a client needs to build requests."""
        a = self.artifact
        return {"artifact": self.name, "format": a.format, "backend": self.backend,
                "inputs": [s.to_data() for s in a.inputs],
                "outputs": a.io.get("outputs"), "media_types": list(codec.MEDIA_TYPES),
                "max_batch_size": self.options["max_batch_size"],
                "max_body_mb": self.options["max_body_mb"]}


def load_served(path: Path, model: Any = None) -> Any:
    """``load_artifact(path, model=model)``, telling how to serve a torch-format artifact (its
    architecture is code, not in the folder) when ``model`` is missing."""
    import modelopt_core as mo

    try:
        return mo.load_artifact(path, model=model)
    except mo.ArtifactError as e:
        if model is None and "weights only" in str(e):
            import re

            named = re.search(r"model=([\w.]+)\.(\w+)\(", str(e))  # the class it recorded
            ref = f"{named[1]}:{named[2]}" if named else "package.module:Class"
            raise mo.ArtifactError(
                f"serve: {e} To serve it, name the architecture: `modelopt serve {path} "
                f"--model {ref} [--model-kwargs JSON]`, or create_app(..., "
                f"model=...) / ReplicaPool(..., model=...) from Python; or serve an exported "
                f"artifact (ONNX, OpenVINO) instead.") from None
        raise


def create_app(artifact: Any, backend: str | None = None, **options: Any) -> FastAPI:
    """A FastAPI app serving ``artifact`` (a ``ModelArtifact`` or a saved artifact folder) on
    ``backend`` through a :class:`~modelopt_serve.DynamicBatcher`.

    Options (:class:`ServeConfig`, one typed object; its defaults in ``DEFAULTS``): ``workers``, ``backend_options`` (dict for the backend's
    config), ``mode``, ``cores``, ``max_restarts`` (the replica pool); ``max_batch_size``,
    ``max_delay_ms``, ``max_idle_ms``, ``preferred_batch_sizes``, ``max_queue``, ``timeout_s``
    (the batcher);
    ``cache_size`` (entries; 0 = no cache), ``cache_mb``, ``cache_ttl_s`` (the result cache);
    ``max_body_mb`` (larger bodies get 413); ``load_in_background`` (False: startup waits for
    the replicas); ``model`` (the architecture of a torch-format artifact: an ``nn.Module`` or
    ``"package.module:callable"``) and ``model_kwargs`` (arguments of that callable);
    ``freeze_gc`` (``gc.freeze()`` once loaded: for a process that only serves, as
    ``modelopt serve`` and Ray replicas do; it keeps the objects alive at that point out of
    every later collection); ``stats_interval_s`` (a ``stats`` log line and ``anomaly``
    warnings every so often, :mod:`modelopt_serve.watch`; 0 or None: off) and
    ``p99_alert_ms`` (the p99 above which a window is an anomaly); ``access_log`` (a log line
    for every request, not only the failed ones); ``read_timeout_s`` (a request body must arrive
    within it, else 408 and the connection is closed; :func:`modelopt_serve.server.serve` also
    bounds the headers with it, at the protocol level).
    """
    cfg = mo.build_config(ServeConfig, dict(options), "create_app")
    state = ServeState(artifact, backend, attrs.asdict(cfg, recurse=False))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        loading = asyncio.create_task(asyncio.to_thread(state.load))
        if not state.options["load_in_background"]:
            await loading
        watching = None
        if state.options["stats_interval_s"]:
            from .watch import RequestWindow

            state.metrics.window = RequestWindow()  # the first window: from startup on
            watching = asyncio.create_task(_watch(state, loading))
        try:
            yield
        finally:
            state.shutting_down = True
            if watching is not None:
                watching.cancel()
            with contextlib.suppress(Exception):  # a failed load was logged already
                await loading
            await asyncio.to_thread(state.close)
            log.info(json.dumps({"event": "stopped", "artifact": state.name}))

    app = FastAPI(title=f"modelopt serve: {state.name}", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.serve = state
    app.add_middleware(_AccessLog, every=bool(state.options["access_log"]))
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    _routes(app, state)
    return app


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    """An unexpected failure outside ``/predict`` (which answers its own) in the typed shape;
    Starlette still logs its traceback."""
    return JSONResponse({"error": type(exc).__name__, "detail": f"{exc} (see the server log)."},
                        status_code=500)


#: error types of Starlette's own answers (unknown route, wrong method...)
_HTTP_ERRORS = {404: "NotFoundError", 405: "MethodNotAllowedError"}


async def _http_error(request: Request, exc: Any) -> JSONResponse:
    """Starlette's 404/405 (and other HTTP errors) in the ``{"error", "detail"}`` shape."""
    status = exc.status_code
    if status == 404:
        detail = (f"no route {request.method} {request.url.path}; the routes are POST /predict, "
                  "GET /health, /ready, /spec and /metrics.")
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        detail = (f"{request.method} is not allowed on {request.url.path}"
                  + (f"; use {allowed}" if allowed else "") + ".")
    else:
        detail = str(exc.detail)
    return JSONResponse({"error": _HTTP_ERRORS.get(status, "HTTPError"), "detail": detail},
                        status_code=status, headers=exc.headers)


def _routes(app: FastAPI, state: ServeState) -> None:
    limit = int(state.options["max_body_mb"] * 2**20)
    inflated = limit * codec.NPZ_INFLATE_FACTOR
    read_timeout = state.options["read_timeout_s"]

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Any:
        if state.ready:
            return {"status": "ready", "artifact": state.name, "backend": state.backend}
        down = state.pool.down if state.pool is not None and state.batcher is not None else None
        status = ("shutting down" if state.shutting_down else
                  "failed" if state.load_error or down else "loading")
        return JSONResponse({"status": status, "detail": state.load_error or down},
                            status_code=503)

    @app.get("/spec")
    async def spec() -> Any:
        return state.spec()

    @app.get("/metrics")
    async def metrics() -> Any:
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        t0 = time.perf_counter()
        m = state.metrics
        m.in_flight.inc()
        read = False  # the whole body was read (else an error answer closes the connection)
        try:
            out_type = codec.response_type(request.headers.get("accept"),
                                           request.headers.get("content-type"))
            if not state.ready:
                raise BatcherClosedError("the server is " + (
                    "shutting down" if state.shutting_down else "not ready (loading replicas"
                    + (f" failed: {state.load_error}" if state.load_error else "") + ")"
                ) + "; retry, or check GET /ready.")
            try:
                body = await _read_body(request, limit, read_timeout)
            except ClientDisconnect:
                if request.scope.get(READ_TIMEOUT_KEY):  # the server closed it: too slow
                    raise ReadTimeoutError(read_timeout_message(read_timeout)) from None
                raise ClientDisconnectedError(
                    "the client closed the connection before its request was read in full."
                ) from None
            read = True
            inputs = await _off_loop(len(body), codec.decode_inputs, body,
                                     request.headers.get("content-type"), state.artifact.inputs,
                                     inflated)
            result = await state.batcher.submit_async(*inputs)
            request.scope["modelopt.rows"] = int(inputs[0].shape[0]) if inputs else 0
            payload = await _off_loop(_nbytes(result), codec.encode_outputs, result, out_type)
        except Exception as e:
            status = error_status(e)
            if status >= 500 and not isinstance(e, ModeloptError):
                log.exception("predict failed")
            headers = {"Retry-After": "1"} if status == 503 else {}
            if not read:  # the rest of the body would be read for nothing: close instead
                headers["Connection"] = "close"
            m.observe(status, time.perf_counter() - t0, type(e).__name__)
            request.scope["modelopt.error"] = type(e).__name__
            return JSONResponse({"error": type(e).__name__, "detail": str(e)},
                                status_code=status, headers=headers or None)
        finally:
            m.in_flight.dec()
        m.observe(200, time.perf_counter() - t0)
        return Response(payload, media_type=out_type)
