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
from typing import Any, Literal

import attrs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

import modelopt_core as mo
from modelopt_core.errors import InputSpecError, ModeloptError

from . import codec
from .errors import (
    BatcherClosedError,
    ClientDisconnectedError,
    QueueFullError,
    ReadTimeoutError,
    ReplicaCrashedError,
    RequestTimeoutError,
)
from .metrics import ServeMetrics

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


#: the scope key the server's protocol sets when it closed a connection whose request did not
#: arrive within the read timeout (see :mod:`modelopt_serve.server`)
READ_TIMEOUT_KEY = "modelopt.read_timeout"


def read_timeout_message(seconds: float) -> str:
    return (f"the request (headers and body) did not arrive within {seconds:g} s "
            "(--read-timeout-s); send it whole without pausing, or raise --read-timeout-s for "
            "slow links.")


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
        self.backend = backend
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


def _seconds_or_none(inst: Any, attr: Any, value: Any) -> None:
    if value is not None and not value > 0:
        raise mo.ConfigError(f"{attr.name}={value!r}; expected seconds > 0 (or None: off).")


@mo.config
class ServeConfig:
    """The options of one served artifact (``create_app``, ``modelopt serve``, a Ray Serve
    replica): one typed object, checked when built (unknown keys get a "did you mean", wrong
    types and ranges a :class:`~modelopt_core.ConfigError` naming the key), plain data with
    :func:`modelopt_core.config_to_data` except ``model`` when it is an ``nn.Module``."""

    # the replica pool
    workers: int = mo.field(1, validator=mo.positive, help="replicas")
    backend_options: dict | None = mo.field(None, help="the backend's config options")
    mode: Literal["auto", "thread", "process"] = mo.field(
        "auto", help="replicas as threads or processes; auto: the backend's releases_gil")
    cores: int | None = mo.field(None, validator=mo.positive,
                                 help="cores to split between replicas (default: all usable)")
    max_restarts: int = mo.field(5, validator=mo.in_range(0, 1e9),
                                 help="dead process replicas replaced in any 60 s")
    # the batcher
    max_batch_size: int = mo.field(16, validator=mo.positive, help="rows per batch")
    max_delay_ms: float = mo.field(5.0, validator=mo.in_range(0, 1e9),
                                   help="longest a request waits for a batch to fill")
    max_idle_ms: float | None = mo.field(1.0, validator=mo.in_range(0, 1e9),
                                  help="a batch closes after this long without a new request")
    preferred_batch_sizes: tuple[int, ...] = mo.field((), help="batch sizes to pad up to")
    max_queue: int = mo.field(1024, validator=mo.positive,
                              help="queued requests before 503 (Retry-After)")
    timeout_s: float | None = mo.field(None, validator=_seconds_or_none,
                                       help="a request's deadline (504 after it)")
    # the result cache
    cache_size: int = mo.field(0, validator=mo.in_range(0, 1e12),
                               help="cached results (0: no cache)")
    cache_mb: float = mo.field(256.0, validator=mo.in_range(0, 1e9), help="cache memory bound")
    cache_ttl_s: float | None = mo.field(None, validator=_seconds_or_none,
                                         help="a cached result's lifetime")
    # the HTTP app
    max_body_mb: float = mo.field(16.0, validator=mo.in_range(0, 1e9, lo_open=True),
                                  help="larger request bodies get 413")
    load_in_background: bool = mo.field(True, help="False: startup waits for the replicas")
    model: Any = mo.field(None, help="a torch-format artifact's architecture (nn.Module or "
                                     "'package.module:callable')")
    model_kwargs: dict | None = mo.field(None, help="arguments of that callable")
    freeze_gc: bool = mo.field(False, help="gc.freeze() once loaded")
    stats_interval_s: float | None = mo.field(
        60.0, validator=mo.in_range(0, 1e9), help="a stats log line every so often (0/None: off)")
    p99_alert_ms: float = mo.field(500.0, validator=mo.in_range(0, 1e9, lo_open=True),
                                   help="a window's p99 above it is an anomaly")
    access_log: bool = mo.field(False, help="a log line for every request")
    read_timeout_s: float | None = mo.field(
        30.0, validator=_seconds_or_none,
        help="a request body must arrive within it, else 408 (None: no read timeout)")


#: the defaults of :class:`ServeConfig`, as a dict (what ``ServeState`` options hold)
DEFAULTS: dict[str, Any] = attrs.asdict(ServeConfig(), recurse=False)


async def _watch(state: ServeState, loading: Any) -> None:
    """Log a ``stats`` line every ``stats_interval_s`` and an ``anomaly`` warning for each
    condition of :func:`modelopt_serve.watch.assess` that holds (see that module)."""
    from .watch import assess, rss_bytes

    with contextlib.suppress(Exception):  # a failed load was logged already
        await asyncio.shield(loading)
    if state.batcher is None:
        return
    interval = float(state.options["stats_interval_s"])
    baseline, before = rss_bytes(), state.stats()
    restarts, t0 = state.pool.restarts, time.monotonic()
    while not state.shutting_down:
        await asyncio.sleep(interval)
        now, t1 = state.stats(), time.monotonic()
        health = {**state.health(), "restarts_before": restarts}
        line, anomalies = assess(state.metrics.window.take(), t1 - t0, before, now, health,
                                 rss_bytes(), baseline, state.options["p99_alert_ms"])
        if state.shutting_down:
            return
        log.info(json.dumps({**line, "artifact": state.name}))
        for a in anomalies:
            log.warning(json.dumps({**a, "artifact": state.name}))
        before, restarts, t0 = now, health["replica_restarts"], t1


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


def create_app(artifact: Any, backend: str = "onnxruntime", **options: Any) -> FastAPI:
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


#: bodies and results above this many bytes are decoded / encoded in a worker thread, so a
#: large JSON document never stalls the event loop; small ones are faster done in place
OFF_LOOP_BYTES = 64 * 1024


async def _off_loop(size: int, fn: Any, *args: Any) -> Any:
    if size > OFF_LOOP_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def _nbytes(out: Any) -> int:
    """Bytes of the tensors in a result (a tensor, or dicts / sequences of them)."""
    if hasattr(out, "element_size"):
        return int(out.numel()) * out.element_size()
    if isinstance(out, dict):
        return sum(_nbytes(v) for v in out.values())
    if isinstance(out, (tuple, list)):
        return sum(_nbytes(v) for v in out)
    return 0


_timeout_at = getattr(asyncio, "timeout_at", None)


async def _read_body(request: Any, limit: int, timeout_s: float | None = None) -> bytes:
    """The body, refusing (413) one over ``limit`` bytes without reading all of it, and (408)
    one that does not arrive within ``timeout_s`` (any ASGI server; under ``modelopt serve`` the
    protocol's own deadline, which also covers the headers, closes such a connection first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise codec.BadRequestError(_too_large(int(declared), limit), status=413)
    chunks, size = [], 0
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    stream = request.stream().__aiter__()
    while True:
        try:
            if deadline is None:
                chunk = await stream.__anext__()
            elif _timeout_at is not None:  # Python 3.11+: no task per chunk
                async with _timeout_at(deadline):
                    chunk = await stream.__anext__()
            else:
                chunk = await asyncio.wait_for(stream.__anext__(), deadline - loop.time())
        except StopAsyncIteration:
            break
        except (TimeoutError, asyncio.TimeoutError):
            if not request.scope.get(READ_TIMEOUT_KEY):  # else the protocol counted it
                request.app.state.serve.metrics.read_timeouts.inc()
            raise ReadTimeoutError(read_timeout_message(timeout_s)) from None
        size += len(chunk)
        if size > limit:
            raise codec.BadRequestError(_too_large(size, limit), status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> str:
    return (f"request body of {size} bytes is over the limit of {limit} bytes "
            f"({limit / 2**20:g} MB); send fewer rows per request or raise --max-body-mb.")


class _AccessLog:
    """Pure ASGI middleware logging one JSON line per failed HTTP request (method, path,
    status, ms, error type; 5xx at WARNING, others at INFO; ``/ready``'s 503 is no failure), or
    per request with ``every`` (and rows for ``/predict``)."""

    def __init__(self, app: Any, every: bool = False) -> None:
        self.app = app
        self.every = every

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            code = status[0]
            level = logging.WARNING if code >= 500 else logging.INFO
            # (a 503 of /ready while loading or stopping is its answer, not a failure)
            failed = code >= 400 and scope["path"] != "/ready"
            if (self.every or failed) and log.isEnabledFor(level):
                rec = {"method": scope["method"], "path": scope["path"], "status": code,
                       "ms": round(1e3 * (time.perf_counter() - t0), 3)}
                if "modelopt.rows" in scope:
                    rec["rows"] = scope["modelopt.rows"]
                if "modelopt.error" in scope:
                    rec["error"] = scope["modelopt.error"]
                log.log(level, json.dumps(rec))
