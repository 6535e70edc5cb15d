"""The options of one served artifact: :class:`ServeConfig` (``create_app``, ``modelopt serve``,
a Ray Serve replica) and :data:`DEFAULTS`, its defaults as the dict ``ServeState`` holds."""

from __future__ import annotations

from typing import Any, Literal

import attrs

import modelopt_core as mo


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
