"""Run the HTTP app with uvicorn (what ``modelopt serve`` does), or on Ray Serve (``--ray``).

SIGTERM or Ctrl-C stops accepting connections, lets in-flight requests finish (up to
``graceful_s``), drains the batcher, frees the replicas and returns 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["serve", "serve_in_thread", "serve_ray"]


def serve(artifact: str | Path | Any, *, backend: str = "onnxruntime", host: str = "127.0.0.1",
          port: int = 8000, log_level: str = "info", graceful_s: float = 30.0,
          **options: Any) -> int:
    """Serve ``artifact`` over HTTP until SIGTERM/SIGINT; ``options`` go to
    :func:`~modelopt_serve.app.create_app`. Returns the exit status (0 after a clean stop)."""
    import uvicorn

    from .app import create_app

    _log_setup(log_level)
    app = create_app(artifact, backend=backend, **{"freeze_gc": True, **options})
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            lifespan="on", timeout_graceful_shutdown=graceful_s,
                            log_config=None)
    server = uvicorn.Server(config)
    state = app.state.serve
    state.on_load_failed = lambda: setattr(server, "should_exit", True)
    with _quiet_reraise():
        server.run()
    if state.load_error:
        logging.getLogger("modelopt.serve").error(
            f"modelopt serve: the replicas did not load ({state.load_error}); stopped.")
        return 1
    return 0 if server.started else 1


@contextlib.contextmanager
def serve_in_thread(artifact: Any, *, backend: str = "onnxruntime", host: str = "127.0.0.1",
                    port: int = 0, ready_timeout_s: float = 60.0, **options: Any
                    ) -> Iterator[str]:
    """Serve in a background thread of this process (notebooks, tests): yields the base URL
    (``http://127.0.0.1:PORT``; port 0 picks a free one) once ``/ready`` answers 200, and
    shuts the server down (draining the batcher) on exit. ``artifact`` is an artifact, its
    folder, or an app made by :func:`~modelopt_serve.app.create_app`."""
    import httpx
    import uvicorn

    from .app import create_app
    from .errors import ServeError

    app = artifact if callable(artifact) and hasattr(artifact, "routes") else \
        create_app(artifact, backend=backend, **options)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           access_log=False, lifespan="on", log_config=None))
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


def serve_ray(artifact: str | Path, *, backend: str = "onnxruntime", host: str = "127.0.0.1",
              port: int = 8000, num_replicas: int = 2, log_level: str = "info",
              **options: Any) -> int:
    """Serve ``artifact`` on Ray Serve (:func:`~modelopt_serve.ray_deploy.ray_app`) with its HTTP
    proxy on ``host:port``, until SIGTERM/SIGINT. Joins the cluster named by ``RAY_ADDRESS``,
    else starts a local Ray."""
    import ray
    from ray import serve as rserve

    from .ray_deploy import ray_app

    _log_setup(log_level)
    stop = threading.Event()
    with _handlers(lambda *_: stop.set()):  # a SIGTERM while Ray starts: stop once it has
        ray.init(ignore_reinit_error=True, include_dashboard=False)
        # after ray.init: Ray's core installs a SIGTERM handler that aborts the process
        with _handlers(lambda *_: stop.set()):
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


class _handlers:
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


def _quiet_reraise() -> _handlers:
    """uvicorn re-raises the signal that stopped it once it has shut down; with the default
    handlers that kills the process (SIGTERM) or raises KeyboardInterrupt (SIGINT) after a clean
    stop. A no-op handler while it runs makes the clean stop exit 0."""
    return _handlers(lambda *_: None)
