"""modelopt_serve.watch: the logged stats line and each anomaly rule, on synthetic windows;
and the app logging them on a schedule."""

from __future__ import annotations

import json
import logging
import time

import pytest
import torch
from helpers import tiny_mlp
from modelopt_serve.watch import MIN_REQUESTS, RequestWindow, assess, rss_bytes

import modelopt_core as mo

MB = 2**20
OK = {"ready": True, "queue_capacity": 100, "replica_restarts": 0, "restarts_before": 0}


def _kinds(anomalies):
    return sorted(a["kind"] for a in anomalies)


def test_a_quiet_healthy_window_has_figures_and_no_anomaly():
    window = [(0.002, 200)] * 30 + [(0.004, 422)] * 2
    before = {"batches": 10, "batch_sizes": {1: 10}, "cache": {"hits": 5, "misses": 5}}
    now = {"batches": 20, "batch_sizes": {1: 10, 4: 5, 6: 5}, "queue_depth": 3,
           "cache": {"hits": 8, "misses": 9}}
    line, anomalies = assess(window, 2.0, before, now, OK, 300 * MB, 290 * MB)
    assert anomalies == []
    assert line["requests"] == 32 and line["rps"] == 16.0
    assert line["errors_4xx"] == 2 and line["errors_5xx"] == 0
    assert line["p50_ms"] == 2.0 and line["p99_ms"] == 4.0
    assert line["batches"] == 10 and line["mean_batch"] == 5.0  # 50 rows in 10 model runs
    assert line["cache_hit_share"] == round(3 / 7, 3) and line["rss_mb"] == 300.0
    json.dumps(line, allow_nan=False)


@pytest.mark.parametrize("kind, window, now, health, rss", [
    ("server_errors", [(0.001, 200)] * 18 + [(0.001, 503)] * 2, {}, OK, None),
    ("slow_p99", [(0.9, 200)] * MIN_REQUESTS, {}, OK, None),
    ("queue_nearly_full", [], {"queue_depth": 81}, OK, None),
    ("replica_restarts", [], {}, {**OK, "replica_restarts": 2}, None),
    ("not_ready", [], {}, {**OK, "ready": False}, None),
    ("memory_growth", [], {}, OK, 460 * MB),
])
def test_each_rule(kind, window, now, health, rss):
    _, anomalies = assess(window, 1.0, {}, now, health, rss, 300 * MB)
    assert _kinds(anomalies) == [kind]
    assert anomalies[0]["event"] == "anomaly" and anomalies[0]["message"]


def test_few_requests_are_no_evidence():
    window = [(2.0, 500)] * (MIN_REQUESTS - 1)  # all slow, all failed, but too few
    _, anomalies = assess(window, 1.0, {}, {}, OK, None, None)
    assert anomalies == []


def test_window_takes_and_restarts():
    w = RequestWindow(maxlen=3)
    for i in range(5):
        w.add(i, 200)
    assert w.take() == [(2, 200), (3, 200), (4, 200)]  # the newest maxlen
    assert w.take() == []


def test_rss_is_read_on_linux():
    assert rss_bytes() is None or rss_bytes() > 10 * MB


def test_the_app_logs_stats_lines_on_schedule(caplog):
    import httpx
    from modelopt_serve import codec
    from modelopt_serve.server import serve_in_thread

    s = mo.Session(tiny_mlp(), (torch.randn(1, 8),), progress=False)
    s.export("onnx")
    name = s.current.inputs[0].name
    with caplog.at_level(logging.INFO, logger="modelopt.serve"), \
            serve_in_thread(s.current, stats_interval_s=0.3) as url:
        for i in range(5):
            body = codec.encode_inputs({name: torch.randn(1, 8)})
            assert httpx.post(f"{url}/predict", content=body,
                              headers={"content-type": codec.TENSORS}).status_code == 200
        deadline = time.monotonic() + 20
        while not [r for r in caplog.records if '"stats"' in r.getMessage()]:
            assert time.monotonic() < deadline, "no stats line logged"
            time.sleep(0.05)
        time.sleep(0.7)  # a couple more windows
    lines = [json.loads(r.getMessage()) for r in caplog.records if '"stats"' in r.getMessage()]
    assert sum(x["requests"] for x in lines) == 5  # every request in exactly one window
    assert all(x["artifact"] for x in lines)
    assert not [r for r in caplog.records if '"anomaly"' in r.getMessage()]
