"""modelopt serve over real sockets: a uvicorn server in a thread (``serve_in_thread``) and the
``modelopt serve`` command as a subprocess. Every answer is checked against the direct runner
of the same artifact; /metrics is parsed and its counts compared with the client's."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
from modelopt_serve import codec
from modelopt_serve.client import load_test
from modelopt_serve.replicas import load_runner
from modelopt_serve.server import serve_in_thread
from serve_helpers import metric_values  # noqa: E402 (summed over the variant label)

import modelopt_core as mo


class TwoHeads(torch.nn.Module):
    """Two inputs (one int64), dict output: exercises names, dtypes and output structure."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(4, 6)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.fc(x + self.emb(ids).sum(1))
        return {"logits": h, "prob": h.softmax(-1)}


@pytest.fixture(scope="module")
def artifact_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    m = TwoHeads().eval()
    s = mo.Session(m, example_inputs=(torch.randn(1, 6), torch.zeros(1, 5, dtype=torch.long)),
                   progress=False)
    s.export("onnx")
    path = tmp_path_factory.mktemp("serve") / "twoheads"
    s.current.save(path)
    return path


@pytest.fixture(scope="module")
def direct(artifact_path):
    art = mo.load_artifact(artifact_path)
    runner = load_runner(art, "onnxruntime")
    yield art, runner
    runner.close()


def request_inputs(art, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x_name, ids_name = (s.name for s in art.inputs)
    return {x_name: torch.randn(1, 6, generator=g),
            ids_name: torch.randint(0, 4, (1, 5), generator=g)}


def expected(direct, inputs) -> dict[str, torch.Tensor]:
    art, runner = direct
    return runner(*(inputs[s.name] for s in art.inputs))


def test_predict_json_and_binary_match_the_runner(artifact_path, direct):
    art, _ = direct
    with serve_in_thread(artifact_path, max_batch_size=8, max_delay_ms=2) as url:
        spec = httpx.get(f"{url}/spec").json()
        assert [s["name"] for s in spec["inputs"]] == [s.name for s in art.inputs]
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        for seed in range(3):
            inp = request_inputs(art, seed)
            want = expected(direct, inp)
            # JSON: by name, the answer mirrors the dict output
            r = httpx.post(f"{url}/predict",
                           json={"inputs": {k: v.tolist() for k, v in inp.items()}})
            assert r.status_code == 200, r.text
            got = r.json()["outputs"]
            assert set(got) == {"logits", "prob"}
            for k in got:
                torch.testing.assert_close(torch.tensor(got[k]), want[k], rtol=1e-5, atol=1e-5)
            # JSON: a list in input order
            r = httpx.post(f"{url}/predict", json={"inputs": [inp[s.name].tolist()
                                                              for s in art.inputs]})
            torch.testing.assert_close(torch.tensor(r.json()["outputs"]["logits"]),
                                       want["logits"], rtol=1e-5, atol=1e-5)
            # binary: safetensors and npz, answered in the same type
            for media in (codec.TENSORS, codec.NPZ):
                r = httpx.post(f"{url}/predict", content=codec.encode_inputs(inp, media),
                               headers={"content-type": media})
                assert r.status_code == 200, r.text
                assert r.headers["content-type"] == media
                named = codec.decode_outputs(r.content, media)
                for k in ("logits", "prob"):
                    torch.testing.assert_close(named[k], want[k], rtol=1e-5, atol=1e-5)
            # binary request, JSON answer through Accept
            r = httpx.post(f"{url}/predict", content=codec.encode_inputs(inp),
                           headers={"content-type": codec.TENSORS, "accept": codec.JSON})
            torch.testing.assert_close(torch.tensor(r.json()["outputs"]["prob"]), want["prob"],
                                       rtol=1e-5, atol=1e-5)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(artifact_path, direct):
    art, _ = direct
    n = 48

    async def go(url: str) -> list[tuple[int, httpx.Response]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            async def one(i: int):
                body = codec.encode_inputs(request_inputs(art, 100 + i))
                return i, await c.post("/predict", content=body,
                                       headers={"content-type": codec.TENSORS})
            return await asyncio.gather(*(one(i) for i in range(n)))

    with serve_in_thread(artifact_path, max_batch_size=16, max_delay_ms=50,
                         max_idle_ms=None) as url:
        answers = asyncio.run(go(url))
        metrics = metric_values(httpx.get(f"{url}/metrics").text)
    for i, r in answers:
        assert r.status_code == 200, r.text
        got = codec.decode_outputs(r.content, codec.TENSORS)
        want = expected(direct, request_inputs(art, 100 + i))
        torch.testing.assert_close(got["logits"], want["logits"], rtol=1e-5, atol=1e-5)
    batches = metrics[("modelopt_serve_batches_total", ())]
    assert batches < n  # requests shared model runs
    assert metrics[("modelopt_serve_batch_size_sum", ())] >= n
    assert metrics[("modelopt_serve_requests_total", (("status", "200"),))] == n


def test_metrics_match_the_load_client_and_cache_counts_repeats(artifact_path):
    with serve_in_thread(artifact_path, cache_size=100, max_delay_ms=1) as url:
        res = load_test(url, concurrency=8, requests=120, repeat_fraction=0.5, hot_set=4)
        text = httpx.get(f"{url}/metrics").text
    m = metric_values(text)
    assert res["requests"] == 120 and res["ok"] == 120 and res["errors"] == 0
    assert res["status_counts"] == {"200": 120}
    assert res["p50_ms"] <= res["p95_ms"] <= res["p99_ms"]
    assert m[("modelopt_serve_requests_total", (("status", "200"),))] == res["ok"]
    assert m[("modelopt_serve_request_latency_seconds_count", ())] == res["requests"]
    hits = m[("modelopt_serve_cache_hits_total", ())]
    misses = m[("modelopt_serve_cache_misses_total", ())]
    assert hits + misses == res["requests"]
    assert hits >= 30  # ~60 repeats of 4 hot inputs: all but the first sight of each hit
    # the model ran only for the misses
    assert m[("modelopt_serve_batch_size_sum", ())] <= misses
    assert m[("process_resident_memory_bytes", ())] > 0
    assert ("modelopt_serve_queue_depth", ()) in m and ("modelopt_serve_in_flight", ()) in m


def test_bad_requests_get_4xx_and_the_server_keeps_serving(artifact_path, direct):
    art, _ = direct
    inp = request_inputs(art, 7)
    good = codec.encode_inputs(inp)
    x_name, ids_name = (s.name for s in art.inputs)
    with serve_in_thread(artifact_path, max_body_mb=0.01) as url:
        post = lambda **kw: httpx.post(f"{url}/predict", **kw)
        cases = [
            (post(content=b'{"inputs": [', headers={"content-type": codec.JSON}), 400,
             "BadRequestError", "malformed JSON"),
            (post(json={"inputs": {x_name: [[0.0] * 5], ids_name: inp[ids_name].tolist()}}),
             422, "InputSpecError", "does not match"),
            (post(json={"inputs": {x_name: inp[x_name].tolist()}}), 422, "InputSpecError",
             "missing"),
            (post(content=b"x" * 20_000, headers={"content-type": codec.TENSORS}), 413,
             "BadRequestError", "over the limit"),
            (post(content=b"abc", headers={"content-type": "text/plain"}), 415,
             "BadRequestError", "unsupported Content-Type"),
        ]
        for r, status, err, text in cases:
            assert r.status_code == status, r.text
            body = r.json()
            assert body["error"] == err and text in body["detail"], body
        r = post(content=good, headers={"content-type": codec.TENSORS})
        assert r.status_code == 200
        torch.testing.assert_close(codec.decode_outputs(r.content, codec.TENSORS)["prob"],
                                   expected(direct, inp)["prob"], rtol=1e-5, atol=1e-5)
        m = metric_values(httpx.get(f"{url}/metrics").text)
    assert m[("modelopt_serve_errors_total", (("type", "InputSpecError"),))] == 2
    assert m[("modelopt_serve_errors_total", (("type", "BadRequestError"),))] == 3
    assert m[("modelopt_serve_requests_total", (("status", "200"),))] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_answers_then_exits_cleanly_on_sigterm(artifact_path, direct):
    art, _ = direct
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "modelopt_core", "serve", str(artifact_path),
                             "--port", str(port), "--max-batch-size", "4", "--cache-size", "8",
                             "--access-log"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "modelopt serve did not become ready"
            time.sleep(0.1)
        inp = request_inputs(art, 3)
        r = httpx.post(f"{url}/predict", content=codec.encode_inputs(inp),
                       headers={"content-type": codec.TENSORS})
        assert r.status_code == 200
        torch.testing.assert_close(codec.decode_outputs(r.content, codec.TENSORS)["logits"],
                                   expected(direct, inp)["logits"], rtol=1e-5, atol=1e-5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert {"method": "POST", "path": "/predict", "status": 200}.items() <= \
        next(rec for rec in logs if rec.get("path") == "/predict").items()
    assert any(rec.get("event") == "stopped" for rec in logs)


def test_ready_reports_a_failed_load_and_predict_gets_503(artifact_path):
    from fastapi.testclient import TestClient
    from modelopt_serve.app import create_app

    app = create_app(artifact_path, backend="no-such-backend")
    with TestClient(app) as c:
        deadline = time.monotonic() + 30
        while c.get("/ready").json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "no-such-backend" in r.json()["detail"]
        assert c.get("/health").status_code == 200
        r = c.post("/predict", json={"inputs": []})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "not ready" in r.json()["detail"]
        # what alerts watch
        assert metric_values(c.get("/metrics").text)[("modelopt_serve_ready", ())] == 0


def test_a_dead_process_replica_is_replaced_then_the_budget_stops_it(artifact_path, direct):
    """A process replica killed idle under the server: no request fails, the next ones are
    answered right by the new worker; once the restart budget is spent /ready says so (a load
    balancer stops sending traffic) and /predict answers 503. (A worker killed mid-request:
    tests/integration/test_serve_replica_crash.py.)"""
    from fastapi.testclient import TestClient
    from modelopt_serve.app import create_app

    art, runner = direct
    inp = request_inputs(art, 7)
    body, headers = codec.encode_inputs(inp), {"content-type": codec.TENSORS}
    app = create_app(artifact_path, mode="process", max_restarts=1, max_batch_size=1,
                     load_in_background=False)

    def kill_worker() -> None:
        pool = app.state.serve.pool
        deadline = time.monotonic() + 60
        while not pool.worker_pids:  # the replacement is still loading
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pid = pool.worker_pids[0]
        os.kill(pid, signal.SIGKILL)
        while pid in pool.worker_pids:
            assert time.monotonic() < deadline
            time.sleep(0.05)

    with TestClient(app) as c:
        assert c.post("/predict", content=body, headers=headers).status_code == 200
        kill_worker()
        r = c.post("/predict", content=body, headers=headers)  # waits for the new worker
        assert r.status_code == 200, r.text
        torch.testing.assert_close(codec.decode_outputs(r.content, codec.TENSORS)["logits"],
                                   runner(**inp)["logits"], rtol=1e-5, atol=1e-5)
        assert c.get("/ready").status_code == 200
        assert app.state.serve.pool.restarts == 1
        kill_worker()  # the second death in a minute: max_restarts=1 is spent
        r = c.post("/predict", content=body, headers=headers)  # the pool is down: not ready
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        r = c.get("/ready")
        assert r.status_code == 503 and "not started again" in r.json()["detail"]


@pytest.fixture(scope="module")
def slow_path(tmp_path_factory) -> Path:
    """A conv stack slow enough for a queue to fill and requests to wait past 20 ms (~1.4
    GFLOP a run: ~15 ms on one thread here; since the warm-up before /ready, no first-run
    stall makes requests wait)."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(*[torch.nn.Conv2d(32, 32, 3, padding=1) for _ in range(8)]).eval()
    s = mo.Session(m, example_inputs=(torch.randn(1, 32, 96, 96),), progress=False)
    s.export("onnx")
    path = tmp_path_factory.mktemp("slow") / "convs"
    s.current.save(path)
    return path


def _burst(url: str, name: str, n: int) -> list[httpx.Response]:
    body = codec.encode_inputs({name: torch.randn(1, 32, 96, 96)})

    async def go() -> list[httpx.Response]:  # every request must be answered, soon
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            return await asyncio.gather(*(c.post("/predict", content=body, headers={
                "content-type": codec.TENSORS}) for _ in range(n)))
    return asyncio.run(go())


def test_full_queue_gets_503_with_retry_after_and_timeouts_get_504(slow_path):
    name = mo.load_artifact(slow_path).inputs[0].name
    one_thread = {"intra_op_num_threads": 1}
    with serve_in_thread(slow_path, max_batch_size=1, max_queue=1,
                         backend_options=one_thread) as url:
        answers = _burst(url, name, 24)
        m = metric_values(httpx.get(f"{url}/metrics").text)
    codes = Counter(r.status_code for r in answers)
    assert set(codes) <= {200, 503} and codes[503] >= 1 and codes[200] >= 1, codes
    full = next(r for r in answers if r.status_code == 503)
    assert full.headers["retry-after"] == "1" and full.json()["error"] == "QueueFullError"
    assert m[("modelopt_serve_errors_total", (("type", "QueueFullError"),))] == codes[503]
    with serve_in_thread(slow_path, max_batch_size=1, timeout_s=0.02,
                         backend_options=one_thread) as url:
        answers = _burst(url, name, 16)
        ok = httpx.post(f"{url}/predict", content=codec.encode_inputs(
            {name: torch.randn(1, 32, 96, 96)}), headers={"content-type": codec.TENSORS})
    codes = Counter(r.status_code for r in answers)
    assert set(codes) <= {200, 504} and codes[504] >= 1, codes
    assert next(r for r in answers if r.status_code == 504).json()["error"] == \
        "RequestTimeoutError"
    assert ok.status_code == 200  # alone in the queue: served


def test_bench_serve_command_reports_what_the_server_counted(artifact_path, capsys):
    from modelopt_core import cli

    with serve_in_thread(artifact_path, cache_size=50) as url:
        rc = cli.main(["bench-serve", url, "--concurrency", "4", "--requests", "40",
                       "--repeat-fraction", "0.5", "--format", "json", "--json"])
        m = metric_values(httpx.get(f"{url}/metrics").text)
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["requests"] == res["ok"] == 40 and res["throughput_rps"] > 0
    assert m[("modelopt_serve_requests_total", (("status", "200"),))] == 40
    assert m[("modelopt_serve_cache_hits_total", ())] > 0


WARMUP_PROBE = """
import gc, json, sys
from modelopt_serve.app import ServeState, DEFAULTS
state = ServeState(sys.argv[1], "onnxruntime", {**DEFAULTS, "freeze_gc": sys.argv[2] == "1"})
state.load()
ran = state.batcher.stats()
print(json.dumps({"safetensors": "safetensors.torch" in sys.modules, "ready": state.ready,
                  "batches": ran.get("batches", 0), "frozen": gc.get_freeze_count() > 0}))
state.close()
"""


@pytest.mark.parametrize("freeze", [False, True])
def test_the_server_warms_up_every_path_before_ready(artifact_path, freeze):
    # in a fresh interpreter: once loaded, the codecs' lazy imports are done (the first client
    # request used to pay ~1 s of them on the event loop) and the batcher counted nothing;
    # freeze_gc (on in `modelopt serve` and Ray replicas) takes the startup objects out of
    # the collector's full scans (~65-90 ms stalls of every request in flight)
    out = subprocess.run([sys.executable, "-c", WARMUP_PROBE, str(artifact_path),
                          str(int(freeze))],
                         capture_output=True, text=True, timeout=120, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe == {"safetensors": True, "ready": True, "batches": 0, "frozen": freeze}


def test_modelopt_serve_freezes_the_collector(monkeypatch):
    import modelopt_serve.app as app_mod
    import modelopt_serve.server as server_mod

    seen = {}

    def fake_create_app(artifact, backend, **options):
        seen.update(options)
        raise RuntimeError("stop here")

    monkeypatch.setattr(app_mod, "create_app", fake_create_app)
    with pytest.raises(RuntimeError, match="stop here"):
        server_mod.serve("x", backend="onnxruntime")
    assert seen["freeze_gc"] is True


def test_a_failed_warmup_is_logged_and_the_server_still_serves(monkeypatch, caplog):
    import modelopt_serve.client as client
    from modelopt_serve.app import DEFAULTS, ServeState

    torch.manual_seed(0)
    s = mo.Session(torch.nn.Linear(4, 2).eval(), example_inputs=(torch.ones(1, 4),),
                   progress=False)
    s.export("onnx")

    def refused(*_a, **_k):
        raise mo.InputSpecError("warm-up input refused")

    monkeypatch.setattr(client, "make_inputs", refused)
    state = ServeState(s.current, "onnxruntime", dict(DEFAULTS))
    with caplog.at_level("WARNING", logger="modelopt.serve"):
        state.load()
    try:
        assert state.ready
        assert any("warmup_failed" in r.getMessage() and "refused" in r.getMessage()
                   for r in caplog.records)
        x = torch.randn(1, 4)
        with s.runner("onnxruntime") as direct_runner:
            torch.testing.assert_close(state.batcher(x), direct_runner(x))
    finally:
        state.close()
