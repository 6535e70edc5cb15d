"""modelopt_serve: serve a modelopt artifact in process or over HTTP.

In process: :class:`DynamicBatcher` groups single requests into batches for a
:class:`ReplicaPool` (N runners of one artifact, threads or processes, cores split between
them) and can consult a :class:`ResultCache` (content-hashed, LRU by entries and bytes, TTL).
Over HTTP: :func:`create_app` (FastAPI), ``modelopt serve``, :func:`load_test`.
Importing this package is light: the names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BatcherClosedError",
    "DynamicBatcher",
    "QueueFullError",
    "ReplicaCrashedError",
    "ReplicaPool",
    "RequestTimeoutError",
    "ResultCache",
    "ServeError",
    "artifact_fingerprint",
    "create_app",
    "load_runner",
    "load_test",
    "ray_app",
    "serve",
    "serve_in_thread",
]

_WHERE = {"DynamicBatcher": "batcher", "ReplicaPool": "replicas", "load_runner": "replicas",
          "ResultCache": "cache", "artifact_fingerprint": "fingerprint",
          "ServeError": "errors", "QueueFullError": "errors", "RequestTimeoutError": "errors",
          "BatcherClosedError": "errors", "ReplicaCrashedError": "errors",
          # the HTTP side (FastAPI app, server, load-test client)
          "create_app": "app", "ray_app": "ray_deploy", "serve": "server",
          "serve_in_thread": "server", "load_test": "client"}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
