"""Typed errors of the serving layer (all :class:`modelopt_core.ModeloptError` subclasses)."""

from __future__ import annotations

from modelopt_core.errors import ModeloptError

__all__ = [
    "BatcherClosedError", "ClientDisconnectedError", "NonFiniteOutputError", "QueueFullError",
    "ReadTimeoutError", "ReplicaCrashedError", "RequestTimeoutError", "ServeError",
]


class ServeError(ModeloptError):
    """Base of every serving error (batcher, cache, replica pool)."""


class QueueFullError(ServeError):
    """The batcher's bounded queue is full: the request was rejected at once (backpressure).
    Retry later, add replicas, or raise ``max_queue``."""

    def __init__(self, message: str, max_queue: int = 0) -> None:
        super().__init__(message)
        self.max_queue = max_queue

    def __reduce__(self):  # keep max_queue across pickling (process pools, Ray)
        return (type(self), (str(self), self.max_queue))


class RequestTimeoutError(ServeError, TimeoutError):
    """A queued request did not start within the batcher's ``timeout_s``."""


class BatcherClosedError(ServeError):
    """The batcher is closed (or was closed with ``drain=False`` while the request waited)."""


class ReplicaCrashedError(ServeError):
    """A replica worker process died while it ran the request (a native crash, the OOM killer,
    a kill). The pool starts new workers for the next requests unless they keep crashing
    (``max_restarts`` within a minute); the request itself was not answered: retry it."""


class ReadTimeoutError(ServeError, TimeoutError):
    """A request's headers and body did not arrive within the server's ``read_timeout_s``
    (HTTP 408; the connection is closed)."""


class ClientDisconnectedError(ServeError):
    """The client closed the connection before its request was read in full: counted with
    status 499 (nginx's "client closed request"), neither a server error nor logged with a
    traceback."""


class NonFiniteOutputError(ServeError):
    """The model's output holds NaN or infinite values, which a JSON answer cannot carry
    (HTTP 500 naming the outputs; the binary formats carry them as they are)."""
