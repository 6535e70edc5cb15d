"""Logged metrics and anomaly warnings, for deployments without Prometheus.

Every ``stats_interval_s`` the app logs one ``{"event": "stats", ...}`` line for the window
since the last one (requests, throughput, 4xx/5xx, p50/p99, batches, queue, cache, memory) and
one ``{"event": "anomaly", "kind": ...}`` warning for each condition of
``docs/serving-alerts.yml`` that holds in it: not ready, over 5% of requests answered 5xx,
p99 over ``p99_alert_ms``, the queue over 80% full, replica processes restarted, resident
memory 1.5x what it was once the replicas were loaded. Each variant of a server
(:mod:`modelopt_serve.variants`) has its own window and lines, naming it in ``variant``.
:func:`assess` is the pure part.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .state import ServeState

__all__ = ["MIN_REQUESTS", "RequestWindow", "assess", "rss_bytes"]

log = logging.getLogger("modelopt.serve")

#: a window with fewer requests has no error-share or p99 anomaly (too few to mean anything)
MIN_REQUESTS = 20


class RequestWindow:
    """``(seconds, status)`` of the requests answered since the last :meth:`take`; the newest
    ``maxlen`` are kept (appends are lock-free: the request path pays a deque append)."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self.maxlen = maxlen
        self._items: collections.deque[tuple[float, int]] = collections.deque(maxlen=maxlen)

    def add(self, seconds: float, status: int) -> None:
        self._items.append((seconds, status))

    def take(self) -> list[tuple[float, int]]:
        """The window's requests; starts a new window."""
        items, self._items = self._items, collections.deque(maxlen=self.maxlen)
        return list(items)


def rss_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc``), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    return sorted_xs[min(len(sorted_xs) - 1, max(0, int(round(q * len(sorted_xs))) - 1))]


def _rows_run(stats: Mapping[str, Any]) -> int:
    return sum(int(k) * int(v) for k, v in (stats.get("batch_sizes") or {}).items())


def assess(window: Sequence[tuple[float, int]], window_s: float,
           before: Mapping[str, Any] | None, now: Mapping[str, Any] | None,
           health: Mapping[str, Any], rss: int | None, baseline_rss: int | None,
           p99_alert_ms: float = 500.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``stats`` line and the ``anomaly`` records of one window: ``window`` holds its
    requests' ``(seconds, status)``; ``before`` / ``now`` are the batcher's ``stats()`` at its
    start and end, ``health`` the app's (``ready``, ``queue_capacity``, ``replica_restarts``
    and ``restarts_before``)."""
    n = len(window)
    lat = sorted(1e3 * s for s, _ in window)
    e5 = sum(1 for _, st in window if st >= 500)
    e4 = sum(1 for _, st in window if 400 <= st < 500)
    line: dict[str, Any] = {"event": "stats", "window_s": round(window_s, 1), "requests": n,
                            "rps": round(n / window_s, 2) if window_s > 0 else None,
                            "errors_4xx": e4, "errors_5xx": e5,
                            "p50_ms": round(_quantile(lat, 0.5), 3) if lat else None,
                            "p99_ms": round(_quantile(lat, 0.99), 3) if lat else None}
    b, a = dict(before or {}), dict(now or {})
    batches = a.get("batches", 0) - b.get("batches", 0)
    rows = _rows_run(a) - _rows_run(b)  # rows the model ran (cache hits never reach it)
    line.update(batches=batches, mean_batch=round(rows / batches, 2) if batches else None,
                queue_depth=a.get("queue_depth", 0))
    ca, cb = a.get("cache") or {}, b.get("cache") or {}
    if ca:
        hits = ca.get("hits", 0) - cb.get("hits", 0)
        looked = hits + ca.get("misses", 0) - cb.get("misses", 0)
        line["cache_hit_share"] = round(hits / looked, 3) if looked else None
    line["rss_mb"] = round(rss / 2**20, 1) if rss is not None else None

    found: list[dict[str, Any]] = []

    def flag(kind: str, message: str, **figures: Any) -> None:
        found.append({"event": "anomaly", "kind": kind, "message": message, **figures})

    if not health.get("ready", True):
        flag("not_ready", "the server is not ready: GET /ready says why")
    if n >= MIN_REQUESTS and e5 / n > 0.05:
        flag("server_errors", f"{e5} of {n} requests answered 5xx in the window",
             share=round(e5 / n, 3))
    if n >= MIN_REQUESTS and line["p99_ms"] > p99_alert_ms:
        flag("slow_p99", f"p99 latency {line['p99_ms']:.1f} ms is over {p99_alert_ms:g} ms",
             p99_ms=line["p99_ms"])
    cap = health.get("queue_capacity")
    if cap and line["queue_depth"] / cap > 0.8:
        flag("queue_nearly_full", f"{line['queue_depth']} of {cap} queue places taken: "
             f"requests past it get 503", queue_depth=line["queue_depth"])
    restarted = health.get("replica_restarts", 0) - health.get("restarts_before", 0)
    if restarted > 0:
        flag("replica_restarts", f"{restarted} replica process restart(s): worker processes "
             f"crashed and were replaced", restarts=restarted)
    if rss is not None and baseline_rss and rss > 1.5 * baseline_rss:
        flag("memory_growth", f"resident memory {rss / 2**20:.0f} MB is over 1.5x the "
             f"{baseline_rss / 2**20:.0f} MB it was once loaded", rss_mb=line["rss_mb"])
    return line, found


async def _watch(state: ServeState, loading: Any) -> None:
    """Log a ``stats`` line every ``stats_interval_s`` and an ``anomaly`` warning for each
    condition of :func:`assess` that holds (the app's lifespan runs it)."""
    with contextlib.suppress(Exception):  # a failed load was logged already
        await asyncio.shield(loading)
    if state.batcher is None:
        return
    interval = float(state.options["stats_interval_s"])
    baseline, before = rss_bytes(), state.stats()
    restarts, t0 = state.pool.restarts, time.monotonic()
    while not state.shutting_down:
        await asyncio.sleep(interval)
        now, t1 = state.stats(), time.monotonic()
        health = {**state.health(), "restarts_before": restarts}
        line, anomalies = assess(state.metrics.window.take(), t1 - t0, before, now, health,
                                 rss_bytes(), baseline, state.options["p99_alert_ms"])
        if state.shutting_down:
            return
        who = {"artifact": state.name, "variant": state.variant}
        log.info(json.dumps({**line, **who}))
        for a in anomalies:
            log.warning(json.dumps({**a, **who}))
        before, restarts, t0 = now, health["replica_restarts"], t1
