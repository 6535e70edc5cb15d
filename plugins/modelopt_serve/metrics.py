"""Prometheus metrics of one serving app, in its own ``CollectorRegistry``.

Names (all prefixed ``modelopt_serve_``):

| metric | type | what |
|---|---|---|
| ``requests_total{status}`` | counter | ``/predict`` requests answered, by HTTP status |
| ``errors_total{type}`` | counter | failed ``/predict`` requests, by error type |
| ``request_latency_seconds`` | histogram | ``/predict`` wall time in the server |
| ``in_flight`` | gauge | ``/predict`` requests being handled now |
| ``read_timeouts_total`` | counter | connections closed: a request not read in time |
| ``batch_size`` | histogram | rows per model run (from the batcher) |
| ``batches_total`` | counter | model runs |
| ``rows_total`` | counter | rows requested (cache hits included) |
| ``model_run_seconds_total`` | counter | time spent running the model |
| ``queue_depth`` | gauge | requests waiting in the batcher's queue |
| ``cache_hits_total``, ``cache_misses_total`` | counter | result-cache lookups |
| ``cache_entries``, ``cache_bytes`` | gauge | result-cache size |
| ``ready`` | gauge | 1 while ``/ready`` answers 200, else 0 |
| ``queue_capacity`` | gauge | the most requests the queue holds (``max_queue``) |
| ``replica_restarts_total`` | counter | times crashed worker processes were replaced |

``requests_total`` counts status 499 for clients that hung up before their request was read
(ordinary client behaviour: not a 5xx) and 408 for bodies that did not arrive within the read
timeout; ``read_timeouts_total`` also counts connections closed with their headers unfinished.

Ready-made Prometheus alerting rules over these are in ``docs/serving-alerts.yml``.

plus prometheus_client's ``process_*`` metrics (``process_resident_memory_bytes``,
``process_cpu_seconds_total``...) on Linux.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "ServeMetrics"]

PREFIX = "modelopt_serve"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """The registry and instruments of one app. ``stats`` returns the batcher's
    ``stats()`` (or None before it exists) and ``health`` ``{"ready", "queue_capacity",
    "replica_restarts"}``; both are read at every scrape."""

    def __init__(self, stats: Callable[[], dict[str, Any] | None],
                 health: Callable[[], dict[str, Any]] | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.process_collector import ProcessCollector

        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.requests = Counter(f"{PREFIX}_requests", "/predict requests answered, by HTTP "
                                "status", ["status"], registry=self.registry)
        self.errors = Counter(f"{PREFIX}_errors", "failed /predict requests, by error type",
                              ["type"], registry=self.registry)
        self.latency = Histogram(f"{PREFIX}_request_latency_seconds", "/predict wall time in "
                                 "the server", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge(f"{PREFIX}_in_flight", "/predict requests being handled now",
                               registry=self.registry)
        self.read_timeouts = Counter(f"{PREFIX}_read_timeouts", "connections closed because a "
                                     "request's headers or body did not arrive within the read "
                                     "timeout", registry=self.registry)
        self.registry.register(_BatcherCollector(stats, health or dict))
        #: a ``modelopt_serve.watch.RequestWindow`` while the logged stats run, else None
        self.window: Any = None

    def observe(self, status: int, seconds: float, error: str | None = None) -> None:
        """Count one answered ``/predict`` request."""
        if self.window is not None:
            self.window.add(seconds, status)
        self.requests.labels(str(status)).inc()
        self.latency.observe(seconds)
        if error is not None:
            self.errors.labels(error).inc()

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text exposition."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _BatcherCollector:
    """Batcher and cache figures read from ``stats()`` at scrape time (no bookkeeping on the
    request path)."""

    def __init__(self, stats: Callable[[], dict[str, Any] | None],
                 health: Callable[[], dict[str, Any]]) -> None:
        self.stats, self.health = stats, health

    def describe(self) -> list[Any]:
        return []  # names appear once the batcher exists

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        health = self.health()
        if "ready" in health:
            yield GaugeMetricFamily(f"{PREFIX}_ready", "1 while /ready answers 200, else 0",
                                    value=1 if health["ready"] else 0)
        if "queue_capacity" in health:
            yield GaugeMetricFamily(f"{PREFIX}_queue_capacity", "the most requests the "
                                    "batcher's queue holds", value=health["queue_capacity"])
        if "replica_restarts" in health:
            yield CounterMetricFamily(f"{PREFIX}_replica_restarts", "times crashed replica "
                                      "worker processes were replaced",
                                      value=health["replica_restarts"])
        st = self.stats()
        if not st:
            return
        sizes = {int(k): int(v) for k, v in (st.get("batch_sizes") or {}).items()}
        buckets, acc = [], 0
        for b in BATCH_BUCKETS:
            acc = sum(v for k, v in sizes.items() if k <= b)
            buckets.append((str(float(b)), acc))
        buckets.append(("+Inf", sum(sizes.values())))
        yield HistogramMetricFamily(f"{PREFIX}_batch_size", "rows per model run",
                                    buckets=buckets,
                                    sum_value=float(sum(k * v for k, v in sizes.items())))
        yield CounterMetricFamily(f"{PREFIX}_batches", "model runs", value=st.get("batches", 0))
        yield CounterMetricFamily(f"{PREFIX}_rows", "rows requested (cache hits included)",
                                  value=st.get("rows", 0))
        yield CounterMetricFamily(f"{PREFIX}_model_run_seconds", "time spent running the model",
                                  value=float(st.get("run_seconds", 0.0)))
        yield GaugeMetricFamily(f"{PREFIX}_queue_depth", "requests waiting in the batcher's "
                                "queue", value=st.get("queue_depth", 0))
        cache = st.get("cache")
        if cache:
            yield CounterMetricFamily(f"{PREFIX}_cache_hits", "result-cache hits",
                                      value=cache.get("hits", 0))
            yield CounterMetricFamily(f"{PREFIX}_cache_misses", "result-cache misses",
                                      value=cache.get("misses", 0))
            yield GaugeMetricFamily(f"{PREFIX}_cache_entries", "results in the cache",
                                    value=cache.get("entries", 0))
            yield GaugeMetricFamily(f"{PREFIX}_cache_bytes", "bytes held by the cache",
                                    value=cache.get("bytes", 0))
