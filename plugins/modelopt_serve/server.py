"""Run the HTTP app with uvicorn (what ``modelopt serve`` does), or on Ray Serve (``--ray``).

SIGTERM or Ctrl-C stops accepting connections, lets in-flight requests finish (up to
``graceful_s``), drains the batcher, frees the replicas and returns 0.

uvicorn bounds idle keep-alive connections only; :func:`protocol_class` adds a read deadline:
a request's headers and body must arrive within the app's ``read_timeout_s`` of its first
byte, else the server answers 408 (when it still can) and closes the connection, counting it in
``modelopt_serve_read_timeouts_total``; and request headers over :data:`MAX_HEADER_BYTES` get
431 (h11 refuses them with 400 itself).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["MAX_HEADER_BYTES", "protocol_class", "serve", "serve_in_thread", "serve_ray",
           "uvicorn_config"]

#: the most bytes of request line and headers one request may send
MAX_HEADER_BYTES = 64 * 1024


def serve(artifact: str | Path | Any, *, backend: str | None = None, host: str = "127.0.0.1",
          port: int = 8000, log_level: str = "info", graceful_s: float = 30.0,
          **options: Any) -> int:
    """Serve ``artifact`` over HTTP until SIGTERM/SIGINT; ``options`` go to
    :func:`~modelopt_serve.app.create_app`. Returns the exit status (0 after a clean stop)."""
    import uvicorn

    from .app import create_app

    _log_setup(log_level)
    app = create_app(artifact, backend=backend, **{"freeze_gc": True, **options})
    server = uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=graceful_s))
    live = app.state.variants.live_states  # a shadow that fails to load only stops shadowing
    for state in live:
        state.on_load_failed = lambda: setattr(server, "should_exit", True)
    with _quiet_reraise():
        server.run()
    failed = [st for st in live if st.load_error]
    if failed:
        logging.getLogger("modelopt.serve").error(
            f"modelopt serve: the replicas of {failed[0].variant!r} did not load "
            f"({failed[0].load_error}); stopped.")
        return 1
    return 0 if server.started else 1


@contextlib.contextmanager
def serve_in_thread(artifact: Any, *, backend: str | None = None, host: str = "127.0.0.1",
                    port: int = 0, ready_timeout_s: float = 60.0, **options: Any
                    ) -> Iterator[str]:
    """Serve in a background thread of this process (notebooks, tests): yields the base URL
    (``http://127.0.0.1:PORT``; port 0 picks a free one) once ``/ready`` answers 200, and
    shuts the server down (draining the batcher) on exit. ``artifact`` is an artifact, its
    folder, or an app made by :func:`~modelopt_serve.app.create_app`; ``http`` (an option:
    ``"auto"``, ``"httptools"``, ``"h11"``) picks uvicorn's parser (see :func:`protocol_class`)."""
    import httpx
    import uvicorn

    from .app import create_app
    from .errors import ServeError

    http = options.pop("http", "auto")
    app = artifact if callable(artifact) and hasattr(artifact, "routes") else \
        create_app(artifact, backend=backend, **options)
    server = uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level="warning",
                                           http=http))
    thread = threading.Thread(target=server.run, name="modelopt-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + ready_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ServeError(f"serve_in_thread: the server did not start within "
                                 f"{ready_timeout_s} s (see the log above).")
            time.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://{host}:{bound}"
        while httpx.get(f"{url}/ready").status_code != 200:
            state = httpx.get(f"{url}/ready").json()
            if state.get("status") == "failed" or time.monotonic() > deadline:
                raise ServeError(f"serve_in_thread: the server at {url} is not ready: {state}.")
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def serve_ray(artifact: str | Path, *, backend: str | None = None, host: str = "127.0.0.1",
              port: int = 8000, num_replicas: int = 2, log_level: str = "info",
              **options: Any) -> int:
    """Serve ``artifact`` on Ray Serve (:func:`~modelopt_serve.ray_deploy.ray_app`) with its HTTP
    proxy on ``host:port``, until SIGTERM/SIGINT. Joins the cluster named by ``RAY_ADDRESS``,
    else starts a local Ray of its own (not a cluster ``ray start`` runs here: Ray's own
    default would join the newest one); the log names the cluster it runs on."""
    import ray
    from ray import serve as rserve

    from .ray_deploy import ray_app

    _log_setup(log_level)
    stop = threading.Event()
    with _Handlers(lambda *_: stop.set()):  # a SIGTERM while Ray starts: stop once it has
        address = os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False)
        logging.getLogger("modelopt.serve").info(json.dumps({
            "event": "ray cluster", "address": address,
            "gcs": ray.get_runtime_context().gcs_address}))
        # after ray.init: Ray's core installs a SIGTERM handler that aborts the process
        with _Handlers(lambda *_: stop.set()):
            try:
                if not stop.is_set():
                    rserve.start(http_options={"host": host, "port": port})
                    # a local Ray has this machine's cores: fit every replica on them
                    cpus = 1.0 if os.environ.get("RAY_ADDRESS") else \
                        min(1.0, (os.cpu_count() or 1) / num_replicas)
                    rserve.run(ray_app(artifact, num_replicas=num_replicas, backend=backend,
                                       num_cpus=cpus, **options), route_prefix="/")
                    logging.getLogger("modelopt.serve").info(
                        f'{{"event": "ray serve ready", "url": "http://{host}:{port}"}}')
                while not stop.wait(0.5):
                    pass
            finally:
                rserve.shutdown()
                ray.shutdown()
    return 0


def _log_setup(level: str) -> None:
    """One JSON line per record on stderr for the ``modelopt.serve`` logger."""
    log = logging.getLogger("modelopt.serve")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level.upper())


class _Handlers:
    """Install ``fn`` for SIGTERM and SIGINT (main thread only), restoring the old ones."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.old = fn, {}

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.old[sig] = signal.signal(sig, self.fn)

    def __exit__(self, *exc: object) -> None:
        for sig, h in self.old.items():
            signal.signal(sig, h)


def _quiet_reraise() -> _Handlers:
    """uvicorn re-raises the signal that stopped it once it has shut down; with the default
    handlers that kills the process (SIGTERM) or raises KeyboardInterrupt (SIGINT) after a clean
    stop. A no-op handler while it runs makes the clean stop exit 0."""
    return _Handlers(lambda *_: None)


def uvicorn_config(app: Any, http: str = "auto", **kwargs: Any) -> Any:
    """``uvicorn.Config`` for an app of :func:`~modelopt_serve.app.create_app`: its own logs
    (no uvicorn access log), the lifespan on, and the read deadline of :func:`protocol_class`
    (``http``: ``"auto"``, ``"httptools"`` or ``"h11"``, the parser it extends)."""
    import uvicorn

    return uvicorn.Config(app, access_log=False, lifespan="on", log_config=None,
                          http=protocol_class(app, http),
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES, **kwargs)


def protocol_class(app: Any, http: str = "auto") -> Any:
    """uvicorn's HTTP protocol (``http``: ``"auto"``, ``"httptools"``, ``"h11"``) with the read
    deadline of the app's ``read_timeout_s`` (None: uvicorn's own, no deadline) and the header
    size bound; see the module's docstring."""
    state = getattr(getattr(app, "state", None), "serve", None)
    timeout = state.options.get("read_timeout_s") if state is not None else None
    if http == "auto":
        from uvicorn.protocols.http.auto import AutoHTTPProtocol as base
    elif http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    elif http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    else:
        from .errors import ServeError

        raise ServeError(f"protocol_class: http={http!r}; expected 'auto', 'httptools' or "
                         "'h11'.")
    if timeout is None:
        return base
    return _deadline_protocol(base, float(timeout), state.metrics.read_timeouts.inc)


def _raw_response(status: int, reason: str, error: str, detail: str) -> bytes:
    body = json.dumps({"error": error, "detail": detail}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


def _deadline_protocol(base: Any, timeout_s: float, on_timeout: Any) -> Any:
    """``base`` (uvicorn's h11 or httptools protocol) with a per-request read deadline: a timer
    armed by a request's first byte (on a new connection, or after the previous answer on a
    kept-alive one) and cancelled once the request is read in full. When it fires, the request
    still unread, the connection gets a 408 ``ReadTimeoutError`` answer (unless the app already
    answered) and is closed; an app still reading the body sees the client gone, with the scope
    marked so that it counts a 408, not a 499. See :class:`_DeadlineMixin`."""
    from .app import read_timeout_message

    timed_out = _raw_response(408, "Request Timeout", "ReadTimeoutError",
                              read_timeout_message(timeout_s))
    too_large = _raw_response(431, "Request Header Fields Too Large", "BadRequestError",
                              f"the request line and headers are over {MAX_HEADER_BYTES} bytes; "
                              "send fewer or shorter headers.")
    h11_module: Any = None
    try:
        import h11
        from uvicorn.protocols.http.h11_impl import H11Protocol

        if issubclass(base, H11Protocol):
            h11_module = h11
    except ImportError:  # no h11: httptools it is
        pass
    name = f"Deadline{base.__name__}"
    cls = type(name, (_DeadlineMixin, base), {
        "read_timeout_s": timeout_s, "_mo_h11": h11_module,
        "_mo_on_timeout": staticmethod(on_timeout),
        "_mo_timed_out": timed_out, "_mo_too_large": too_large,
        "__module__": __name__})
    cls.__qualname__ = name
    return cls


class _DeadlineMixin:
    """The read deadline and header bound over a uvicorn HTTP protocol (see
    :func:`_deadline_protocol`, which sets the class attributes below on each subclass)."""

    read_timeout_s: float
    _mo_h11: Any  # the h11 module when the protocol is uvicorn's h11 one, else None
    _mo_on_timeout: Any  # called once per request that times out
    _mo_timed_out: bytes  # the 408 answer
    _mo_too_large: bytes  # the 431 answer
    # uvicorn's protocol attributes this relies on
    conn: Any
    cycle: Any
    transport: Any
    loop: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mo_timer: Any = None
        self._mo_message = False  # httptools: between a message's begin and its end
        self._mo_headers = False  # httptools: that message's headers are complete
        self._mo_header_bytes = 0

    # -- where the request stands
    def _mo_pending(self) -> bool:
        """A request began arriving and is not read in full yet."""
        h11 = self._mo_h11
        if h11 is not None:
            st = self.conn.their_state
            return st is h11.SEND_BODY or (st is h11.IDLE and
                                           bool(self.conn.trailing_data[0]))
        return self._mo_message

    def _mo_in_body(self) -> bool:
        """Its headers are in (``self.cycle`` is its request/response cycle)."""
        h11 = self._mo_h11
        return self.conn.their_state is h11.SEND_BODY if h11 is not None else self._mo_headers

    # -- the timer
    def _mo_settle(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if not self._mo_pending():
            self._mo_cancel()
        elif self._mo_timer is None:
            self._mo_timer = self.loop.call_later(self.read_timeout_s, self._mo_expired)

    def _mo_cancel(self) -> None:
        if self._mo_timer is not None:
            self._mo_timer.cancel()
            self._mo_timer = None

    def _mo_expired(self) -> None:
        from .app import READ_TIMEOUT_KEY

        self._mo_timer = None
        if self.transport.is_closing() or not self._mo_pending():
            return
        self._mo_on_timeout()
        cycle = self.cycle if self._mo_in_body() else None
        if cycle is not None:
            cycle.scope[READ_TIMEOUT_KEY] = True
        if cycle is None or not cycle.response_started:
            self.transport.write(self._mo_timed_out)
        self.transport.close()

    # -- uvicorn's hooks
    def data_received(self, data: bytes) -> None:
        if data and self._mo_timer is None and not self.transport.is_closing():
            self._mo_timer = self.loop.call_later(self.read_timeout_s, self._mo_expired)
        heading = self._mo_h11 is None and not self._mo_headers
        super().data_received(data)  # type: ignore[misc]
        if heading and self._mo_message and not self._mo_headers:
            self._mo_header_bytes += len(data)
            if self._mo_header_bytes > MAX_HEADER_BYTES and \
                    not self.transport.is_closing():
                self.transport.write(self._mo_too_large)
                self.transport.close()
        self._mo_settle()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._mo_settle()  # a pipelined next request may be waiting, half read

    def connection_lost(self, exc: Exception | None) -> None:
        self._mo_cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    # httptools' parser callbacks (h11 has none: its state machine says where it is)
    def on_message_begin(self) -> None:
        super().on_message_begin()  # type: ignore[misc]
        self._mo_message, self._mo_headers, self._mo_header_bytes = True, False, 0

    def on_headers_complete(self) -> None:
        super().on_headers_complete()  # type: ignore[misc]
        self._mo_headers = True

    def on_message_complete(self) -> None:
        super().on_message_complete()  # type: ignore[misc]
        self._mo_message = False
