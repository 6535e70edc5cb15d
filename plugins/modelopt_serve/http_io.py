"""The HTTP app's request and response plumbing (see :mod:`.app`): reading a body within its
size limit and read deadline, decoding and encoding large ones off the event loop, and the
access-log middleware."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from . import codec
from .errors import ReadTimeoutError

log = logging.getLogger("modelopt.serve")


#: the scope key the server's protocol sets when it closed a connection whose request did not
#: arrive within the read timeout (see :mod:`modelopt_serve.server`)
READ_TIMEOUT_KEY = "modelopt.read_timeout"


def read_timeout_message(seconds: float) -> str:
    return (f"the request (headers and body) did not arrive within {seconds:g} s "
            "(--read-timeout-s); send it whole without pausing, or raise --read-timeout-s for "
            "slow links.")


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
