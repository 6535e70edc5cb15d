"""Prometheus metrics of one serving app, in its own ``CollectorRegistry``.

Names (all prefixed ``modelopt_serve_``):

Every one carries a ``variant`` label (the variant that answered, see
:mod:`modelopt_serve.variants`; a single-artifact server has one) except
``read_timeouts_total``, counted before a request is routed.

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
| ``variant_weight`` | gauge | the variant's share of live traffic (percent; 0 for a shadow) |
| ``shadow_requests_total{outcome}`` | counter | copies of the primary's requests a shadow got: compared, failed, dropped |
| ``shadow_top1_agreement``, ``shadow_cosine_mean``, ``shadow_max_abs_error`` | gauge | a shadow's outputs against the primary's |
| ``feedback_total``, ``feedback_correct_total`` | counter | labelled rows (``POST /feedback``), and those the variant predicted right |
| ``feedback_accuracy`` | gauge | their ratio |

``requests_total`` counts status 499 for clients that hung up before their request was read
(ordinary client behaviour: not a 5xx) and 408 for bodies that did not arrive within the read
timeout; ``read_timeouts_total`` also counts connections closed with their headers unfinished.

Ready-made Prometheus alerting rules over these are in ``docs/serving-alerts.yml``.

plus prometheus_client's ``process_*`` metrics (``process_resident_memory_bytes``,
``process_cpu_seconds_total``...) on Linux.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "RECENT", "ServeMetrics", "VariantMetrics"]

PREFIX = "modelopt_serve"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: answered requests per variant kept for the live verdict (``GET /variants``; its largest
#: ``window``)
RECENT = 5000


class ServeMetrics:
    """The registry and instruments of one app, every series labelled by ``variant``:
    :meth:`bind` gives each variant its view. ``extra`` callables yield more metric families
    at every scrape (the variants' weights, shadow agreement, feedback)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.process_collector import ProcessCollector

        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        v = ["variant"]
        self.requests = Counter(f"{PREFIX}_requests", "/predict requests answered, by HTTP "
                                "status", v + ["status"], registry=self.registry)
        self.errors = Counter(f"{PREFIX}_errors", "failed /predict requests, by error type",
                              v + ["type"], registry=self.registry)
        self.latency = Histogram(f"{PREFIX}_request_latency_seconds", "/predict wall time in "
                                 "the server", v, buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.in_flight = Gauge(f"{PREFIX}_in_flight", "/predict requests being handled now", v,
                               registry=self.registry)
        self.read_timeouts = Counter(f"{PREFIX}_read_timeouts", "connections closed because a "
                                     "request's headers or body did not arrive within the read "
                                     "timeout", registry=self.registry)
        self.variants: dict[str, VariantMetrics] = {}
        self.extra: list[Callable[[], Iterator[Any]]] = []
        self.registry.register(_BatcherCollector(self))

    def bind(self, variant: str, stats: Callable[[], dict[str, Any] | None],
             health: Callable[[], dict[str, Any]] | None = None) -> VariantMetrics:
        """The instruments of ``variant``, whose batcher ``stats()`` (None before it exists)
        and ``health()`` (``{"ready", "queue_capacity", "replica_restarts"}``) are read at
        every scrape."""
        view = VariantMetrics(self, variant, stats, health or dict)
        self.variants[variant] = view
        return view

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text exposition."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class VariantMetrics:
    """One variant's view of :class:`ServeMetrics`: its labelled instruments, its recent
    answers (``recent``: ``(monotonic end, seconds, status)``, the newest :data:`RECENT`, for
    the live verdict) and, while the logged stats run, its ``window``
    (a ``modelopt_serve.watch.RequestWindow``)."""

    def __init__(self, parent: ServeMetrics, variant: str,
                 stats: Callable[[], dict[str, Any] | None],
                 health: Callable[[], dict[str, Any]]) -> None:
        self.parent, self.variant, self.stats, self.health = parent, variant, stats, health
        self.in_flight = parent.in_flight.labels(variant)
        self.read_timeouts = parent.read_timeouts
        self._latency = parent.latency.labels(variant)
        self.recent: collections.deque[tuple[float, float, int]] = \
            collections.deque(maxlen=RECENT)
        self.counts: collections.Counter[int] = collections.Counter()
        self.window: Any = None

    def observe(self, status: int, seconds: float, error: str | None = None) -> None:
        """Count one answered ``/predict`` request."""
        if self.window is not None:
            self.window.add(seconds, status)
        self.recent.append((time.monotonic(), seconds, status))
        self.counts[status] += 1
        self.parent.requests.labels(self.variant, str(status)).inc()
        self._latency.observe(seconds)
        if error is not None:
            self.parent.errors.labels(self.variant, error).inc()

    def render(self) -> tuple[bytes, str]:
        return self.parent.render()


class _BatcherCollector:
    """Batcher, cache and health figures of every variant, read from its ``stats()`` and
    ``health()`` at scrape time (no bookkeeping on the request path), plus the app's
    ``extra`` families."""

    def __init__(self, metrics: ServeMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []  # names appear once the batcher exists

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        def fam(kind: Any, name: str, doc: str) -> Any:
            return kind(f"{PREFIX}_{name}", doc, labels=["variant"])

        ready = fam(GaugeMetricFamily, "ready", "1 while /ready answers 200, else 0")
        capacity = fam(GaugeMetricFamily, "queue_capacity",
                       "the most requests the batcher's queue holds")
        restarts = fam(CounterMetricFamily, "replica_restarts",
                       "times crashed replica worker processes were replaced")
        sizes_f = HistogramMetricFamily(f"{PREFIX}_batch_size", "rows per model run",
                                        labels=["variant"])
        batches = fam(CounterMetricFamily, "batches", "model runs")
        rows = fam(CounterMetricFamily, "rows", "rows requested (cache hits included)")
        run_s = fam(CounterMetricFamily, "model_run_seconds", "time spent running the model")
        depth = fam(GaugeMetricFamily, "queue_depth", "requests waiting in the batcher's queue")
        cache_f = [fam(CounterMetricFamily, "cache_hits", "result-cache hits"),
                   fam(CounterMetricFamily, "cache_misses", "result-cache misses"),
                   fam(GaugeMetricFamily, "cache_entries", "results in the cache"),
                   fam(GaugeMetricFamily, "cache_bytes", "bytes held by the cache")]
        any_stats = any_cache = False
        for name, view in list(self.metrics.variants.items()):
            health = view.health()
            if "ready" in health:
                ready.add_metric([name], 1 if health["ready"] else 0)
            if "queue_capacity" in health:
                capacity.add_metric([name], health["queue_capacity"])
            if "replica_restarts" in health:
                restarts.add_metric([name], health["replica_restarts"])
            st = view.stats()
            if not st:
                continue
            any_stats = True
            sizes = {int(k): int(v) for k, v in (st.get("batch_sizes") or {}).items()}
            buckets = [(str(float(b)), sum(v for k, v in sizes.items() if k <= b))
                       for b in BATCH_BUCKETS] + [("+Inf", sum(sizes.values()))]
            sizes_f.add_metric([name], buckets,
                               float(sum(k * v for k, v in sizes.items())))
            batches.add_metric([name], st.get("batches", 0))
            rows.add_metric([name], st.get("rows", 0))
            run_s.add_metric([name], float(st.get("run_seconds", 0.0)))
            depth.add_metric([name], st.get("queue_depth", 0))
            cache = st.get("cache")
            if cache:
                any_cache = True
                for f, key in zip(cache_f, ("hits", "misses", "entries", "bytes")):
                    f.add_metric([name], cache.get(key, 0))
        yield from (f for f in (ready, capacity, restarts) if f.samples)
        if any_stats:
            yield from (sizes_f, batches, rows, run_s, depth)
        if any_cache:
            yield from cache_f
        for extra in list(self.metrics.extra):
            yield from extra()
