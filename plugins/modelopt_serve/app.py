"""The HTTP app: ``create_app(artifact) -> fastapi.FastAPI``.

Routes: ``POST /predict`` (JSON or binary tensors, see :mod:`modelopt_serve.codec`),
``GET /health`` (liveness), ``GET /ready`` (503 until the replicas are loaded and while
shutting down), ``GET /spec`` (input specs, for clients), ``GET /metrics`` (Prometheus, see
:mod:`modelopt_serve.metrics`), ``GET``/``POST /variants`` and ``POST /feedback`` (several
artifacts behind one server, :mod:`modelopt_serve.variants`; every ``/predict`` answer says
which variant answered in ``X-Variant`` and carries an ``X-Request-Id``). The replicas load in FastAPI's lifespan (in a worker thread, so
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
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import attrs
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask
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
    UnknownVariantError,
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
from .routing import CLIENT_KEY_HEADER, FORCE_HEADER
from .state import ServeState, load_served  # noqa: F401 (importable from here as before)
from .variant_routes import variant_routes
from .variants import VariantSet, build_variants
from .watch import _watch

__all__ = ["ServeState", "create_app", "error_status"]

log = logging.getLogger("modelopt.serve")


def error_status(exc: BaseException) -> int:
    """The HTTP status of a failed request."""
    if isinstance(getattr(exc, "http_status", None), int):  # variants, admin, feedback
        return exc.http_status  # type: ignore[attr-defined]
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


def create_app(artifact: Any, backend: str | None = None, *,
               variants: Mapping[str, Any] | None = None, shadow: Sequence[str] = (),
               name: str | None = None, admin_token: str | None = None,
               split_seed: int | None = None, feedback_max: int = 100_000,
               capture: Mapping[str, Any] | None = None, **options: Any) -> FastAPI:
    """A FastAPI app serving ``artifact`` (a ``ModelArtifact`` or a saved artifact folder) on
    ``backend`` through a :class:`~modelopt_serve.DynamicBatcher`.

    Variants (:mod:`modelopt_serve.variants`): ``variants`` maps more names to artifacts
    (``path``, ``(path, weight_percent)`` or ``{"artifact", "weight", "backend", "model",
    "model_kwargs", "backend_options"}``), each served by its own replicas and batcher with
    these options; ``shadow`` names variants that get a copy of the primary's traffic, never
    answering; ``name`` is the primary's variant name (default: its folder's);
    ``admin_token`` guards ``POST /variants`` (default: ``MODELOPT_ADMIN_TOKEN``; none: the
    route refuses); ``split_seed`` makes the random split repeatable; ``feedback_max`` bounds
    the request ids ``POST /feedback`` can label; ``capture`` (``folder``, ``rate``,
    ``max_samples``, optional ``seed``) keeps a sample of the primary's request inputs
    (:mod:`modelopt_serve.capture`).

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
    opts = attrs.asdict(cfg, recurse=False)
    metrics = ServeMetrics()
    state = ServeState(artifact, backend, opts, name, metrics)

    def make_state(art: Any, be: str | None, overrides: dict[str, Any], vname: str) -> Any:
        o = attrs.asdict(mo.build_config(ServeConfig, {**options, **overrides},
                                         f"create_app variant {vname!r}"), recurse=False)
        return ServeState(art, be if be is not None else backend, o, vname, metrics)

    vs = build_variants(state, variants or {}, make_state, tuple(shadow), split_seed,
                        feedback_max)
    metrics.extra.append(vs.metric_families)
    token = admin_token if admin_token is not None else os.environ.get("MODELOPT_ADMIN_TOKEN")
    app = FastAPI(title=f"modelopt serve: {state.name}", lifespan=_lifespan(vs),
                  docs_url=None, redoc_url=None)
    app.state.serve = state
    app.state.variants = vs
    app.state.capture = _capture(capture, state) if capture else None
    app.add_middleware(_AccessLog, every=bool(state.options["access_log"]))
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    _routes(app, vs)
    variant_routes(app, vs, token or None)
    return app


def _capture(options: Mapping[str, Any], state: ServeState) -> Any:
    """The primary's traffic capture (``folder``, ``rate``, ``max_samples``, ``seed``)."""
    from .capture import Capture

    return Capture(input_names=[s.name for s in state.artifact.inputs], **options)


def _lifespan(vs: VariantSet) -> Any:
    """Load every variant (each in a worker thread, so ``/health`` answers at once), watch
    each, and on shutdown drain and free them all."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        states = list(vs.states.values())
        loading = [asyncio.create_task(asyncio.to_thread(st.load)) for st in states]
        if not states[0].options["load_in_background"]:
            await asyncio.gather(*loading, return_exceptions=True)
        watching = []
        if states[0].options["stats_interval_s"]:
            from .watch import RequestWindow

            for st, task in zip(states, loading):
                st.metrics.window = RequestWindow()  # the first window: from startup on
                watching.append(asyncio.create_task(_watch(st, task)))
        try:
            yield
        finally:
            for st in states:
                st.shutting_down = True
            for w in watching:
                w.cancel()
            await asyncio.gather(*loading, return_exceptions=True)  # failures were logged
            await asyncio.gather(*(asyncio.to_thread(st.close) for st in states))
            if app.state.capture is not None:
                await asyncio.to_thread(app.state.capture.close)
            log.info(json.dumps({"event": "stopped", "artifact": states[0].name,
                                 "variants": list(vs.states)}))

    return lifespan


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
                  "GET /health, /ready, /spec, /metrics, GET and POST /variants and POST "
                  "/feedback.")
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        detail = (f"{request.method} is not allowed on {request.url.path}"
                  + (f"; use {allowed}" if allowed else "") + ".")
    else:
        detail = str(exc.detail)
    return JSONResponse({"error": _HTTP_ERRORS.get(status, "HTTPError"), "detail": detail},
                        status_code=status, headers=exc.headers)


def _routes(app: FastAPI, vs: VariantSet) -> None:
    state = vs.states[vs.primary]

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Any:
        live = vs.live_states
        # shadows still loading count too (a failed one does not: it only stops shadowing)
        live += [st for st in vs.states.values() if st not in live and st.loading]
        if all(st.ready for st in live):
            return {"status": "ready", "artifact": state.name, "backend": state.backend,
                    "variants": [st.variant for st in live]}
        st = next(st for st in live if not st.ready)
        down = st.pool.down if st.pool is not None and st.batcher is not None else None
        status = ("shutting down" if st.shutting_down else
                  "failed" if st.load_error or down else "loading")
        return JSONResponse({"status": status, "variant": st.variant,
                             "detail": st.load_error or down}, status_code=503)

    @app.get("/spec")
    async def spec() -> Any:
        return {**state.spec(), "variants": list(vs.states)}

    @app.get("/metrics")
    async def metrics() -> Any:
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    _predict_route(app, vs)


def _predict_route(app: FastAPI, vs: VariantSet) -> None:
    """``POST /predict``: routed to a variant, answered with ``X-Variant`` and
    ``X-Request-Id``; the primary's answers are mirrored to the shadows and offered to the
    capture once built."""
    state = vs.states[vs.primary]
    limit = int(state.options["max_body_mb"] * 2**20)
    inflated = limit * codec.NPZ_INFLATE_FACTOR
    read_timeout = state.options["read_timeout_s"]

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        t0 = time.perf_counter()
        rid = uuid.uuid4().hex
        try:
            name = vs.router.pick(request.headers.get(FORCE_HEADER),
                                  request.headers.get(CLIENT_KEY_HEADER))
        except UnknownVariantError as e:  # answered by no variant: counted as the primary's
            name, routing = vs.primary, e
        else:
            routing = None
        st = vs.states[name]
        m = st.metrics
        m.in_flight.inc()
        read = False  # the whole body was read (else an error answer closes the connection)
        headers = {"X-Variant": name, "X-Request-Id": rid}
        try:
            if routing is not None:
                raise routing
            out_type = codec.response_type(request.headers.get("accept"),
                                           request.headers.get("content-type"))
            if not st.ready:
                raise BatcherClosedError("the server is " + (
                    "shutting down" if st.shutting_down else "not ready (loading replicas"
                    + (f" failed: {st.load_error}" if st.load_error else "") + ")"
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
                                     request.headers.get("content-type"), st.artifact.inputs,
                                     inflated)
            t_model = time.perf_counter()
            result = await st.batcher.submit_async(*inputs)
            vs.answered(name, rid, result, time.perf_counter() - t_model)
            request.scope["modelopt.rows"] = int(inputs[0].shape[0]) if inputs else 0
            payload = await _off_loop(_nbytes(result), codec.encode_outputs, result, out_type)
        except Exception as e:
            status = error_status(e)
            if status >= 500 and not isinstance(e, ModeloptError):
                log.exception("predict failed")
            if status == 503:
                headers["Retry-After"] = "1"
            if not read:  # the rest of the body would be read for nothing: close instead
                headers["Connection"] = "close"
            m.observe(status, time.perf_counter() - t0, type(e).__name__)
            request.scope["modelopt.error"] = type(e).__name__
            return JSONResponse({"error": type(e).__name__, "detail": str(e)},
                                status_code=status, headers=headers)
        finally:
            m.in_flight.dec()
        m.observe(200, time.perf_counter() - t0)
        task = None
        if name == vs.primary and (vs.shadows or app.state.capture is not None):
            task = BackgroundTask(_after_answer, app, vs, inputs, result, rid)
        return Response(payload, media_type=out_type, headers=headers, background=task)


async def _after_answer(app: FastAPI, vs: VariantSet, inputs: Any, result: Any,
                        rid: str) -> None:
    """Once the primary's answer is sent (never on the client's time): a copy to each shadow,
    the inputs to the capture. Neither raises nor waits."""
    vs.mirror(inputs, result, rid)
    if app.state.capture is not None:
        app.state.capture.offer(inputs)
