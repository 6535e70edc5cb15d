"""Typed errors of the serving layer (all :class:`modelopt_core.ModeloptError` subclasses)."""

from __future__ import annotations

from modelopt_core.errors import ConfigError, InputSpecError, ModeloptError

__all__ = [
    "AdminAuthError", "AdminDisabledError", "BatcherClosedError", "ClientDisconnectedError",
    "FeedbackError", "NonFiniteOutputError", "QueueFullError", "ReadTimeoutError",
    "ReplicaCrashedError", "RequestTimeoutError", "ServeError", "UnknownRequestIdError",
    "UnknownVariantError", "VariantConfigError", "VariantSpecError",
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


# ---- variants, admin and feedback (HTTP status in ``http_status``) -------------------------

class UnknownVariantError(ServeError):
    """``X-Variant`` names no variant of the server, or a shadow (whose answers are never
    returned)."""

    http_status = 400


class VariantConfigError(ServeError, ConfigError):
    """Variants configured wrong: weights over 100%, a weighted shadow, an unknown or repeated
    name (at start), or a ``POST /variants`` body that does not fit (HTTP 422)."""

    http_status = 422


class VariantSpecError(ServeError, InputSpecError):
    """A variant takes other inputs than the primary artifact: every variant must accept the
    same requests. Raised at start, naming both artifacts and their specs."""

    http_status = 422


class AdminAuthError(ServeError):
    """``POST /variants`` without the admin token the server was started with (HTTP 401)."""

    http_status = 401


class AdminDisabledError(ServeError):
    """``POST /variants`` on a server started without an admin token (``--admin-token`` or
    ``MODELOPT_ADMIN_TOKEN``): changing weights is off (HTTP 403)."""

    http_status = 403


class UnknownRequestIdError(ServeError):
    """``POST /feedback`` for a request id the server does not hold: never issued, or older
    than the newest ``feedback_max`` requests it remembers (HTTP 404)."""

    http_status = 404


class FeedbackError(ServeError):
    """A ``POST /feedback`` body that does not fit: no request id, a label that is not a class
    index per row, a request whose output is not class scores (HTTP 422), or a second label
    for one request (HTTP 409)."""

    http_status = 422

    def __init__(self, message: str, http_status: int = 422) -> None:
        super().__init__(message)
        self.http_status = http_status

    def __reduce__(self):
        return (type(self), (str(self), self.http_status))
