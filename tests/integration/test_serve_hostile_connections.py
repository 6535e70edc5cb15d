"""Hostile and careless connections against real servers on loopback sockets (issue 23):
stalled headers and bodies are closed after the read timeout and counted, clients that hang
up mid-body count as 499 (not 5xx, no traceback), non-finite model outputs get a typed 500
(never invalid JSON), and only failed requests and stats lines are logged unless the access
log is asked for."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import torch
from serve_helpers import ServeProcess, metric_values, onnx_mlp, read_until_closed

import modelopt_core as mo

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
from modelopt_serve import codec  # noqa: E402
from modelopt_serve.app import create_app  # noqa: E402
from modelopt_serve.server import serve_in_thread  # noqa: E402

TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return onnx_mlp(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def name(artifact):
    return mo.load_artifact(artifact).inputs[0].name


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def partial_body(name: str) -> bytes:
    return (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"inputs": {"' + name.encode() + b'": [[')


PARTIAL_HEADERS = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le"


def wait_for(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def answer_of(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_stalled_requests_are_closed_after_the_read_timeout_and_counted(artifact, name, http):
    """40 connections that stop sending: 10 mid-headers, 10 mid-body of /predict, 10 mid-body
    of a route that answers without reading it, 10 mid-headers of a second request on a
    kept-alive connection. Every one is closed about TIMEOUT_S after its request began (those
    not answered yet get a typed 408 first), counted, and the in-flight gauge returns to 0.
    (Before: they stayed open for good.)"""
    with serve_in_thread(artifact, read_timeout_s=TIMEOUT_S, http=http) as url:
        port = port_of(url)
        kinds = {"headers": PARTIAL_HEADERS, "body": partial_body(name),
                 "health body": b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n"
                                b"{",
                 "kept alive": b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + PARTIAL_HEADERS}
        socks = []
        t0 = time.monotonic()
        for kind, data in kinds.items():
            for _ in range(10):
                s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S + 5)
                s.sendall(data)
                socks.append((kind, s))
        assert wait_for(lambda: metric_values(httpx.get(f"{url}/metrics").text)[
            ("modelopt_serve_in_flight", ())] == 10, 5)  # the bodies being waited for
        for kind, s in socks:
            with s:
                raw = read_until_closed(s)  # socket.timeout here: the server kept it open
            if kind in ("health body", "kept alive"):  # answered, then closed
                assert raw.startswith(b"HTTP/1.1 200"), raw
                raw = raw[raw.index(b"}") + 1:]
            if kind != "health body":
                status, body = answer_of(raw)
                assert status == 408 and body["error"] == "ReadTimeoutError", raw
                assert "--read-timeout-s" in body["detail"]
        elapsed = time.monotonic() - t0
        assert TIMEOUT_S * 0.9 < elapsed < TIMEOUT_S + 3, elapsed
        m = metric_values(httpx.get(f"{url}/metrics").text)
    assert m[("modelopt_serve_read_timeouts_total", ())] == 40
    assert m[("modelopt_serve_requests_total", (("status", "408"),))] == 10  # the /predict ones
    assert m[("modelopt_serve_errors_total", (("type", "ReadTimeoutError"),))] == 10
    assert m[("modelopt_serve_in_flight", ())] == 0
    assert not any(k[0] == "modelopt_serve_requests_total" and k[1][0][1].startswith("5")
                   for k in m)


def test_a_slow_but_steady_request_within_the_timeout_is_served(artifact, name):
    """The deadline is per request, not per connection: a request trickled over 0.6 s and a
    second one on the same connection after 0.8 s idle both get answers."""
    body = json.dumps({"inputs": {name: [[0.5] * 8]}}).encode()
    req = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    with serve_in_thread(artifact, read_timeout_s=TIMEOUT_S) as url, \
            socket.create_connection(("127.0.0.1", port_of(url)), timeout=5) as s:
        for part in (req[:20], req[20:60], req[60:]):
            s.sendall(part)
            time.sleep(0.2)
        first = s.recv(65536)
        time.sleep(0.8)
        s.sendall(req)
        second = s.recv(65536)
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 200")


@contextlib.contextmanager
def stock_uvicorn(app) -> Iterator[str]:
    """The app on uvicorn's own h11 protocol (no modelopt deadline), in a thread."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, http="h11",
                                           lifespan="on", log_config=None, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started, 60)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        assert wait_for(lambda: httpx.get(f"{url}/ready").status_code == 200, 60)
        yield url
    finally:
        server.should_exit = True
        thread.join(60)


def test_the_app_bounds_the_body_on_any_asgi_server(artifact, name):
    """On a server without modelopt's protocol the app's own body deadline answers 408 and
    closes the connection."""
    app = create_app(artifact, read_timeout_s=TIMEOUT_S)
    with stock_uvicorn(app) as url:
        with socket.create_connection(("127.0.0.1", port_of(url)), timeout=TIMEOUT_S + 5) as s:
            s.sendall(partial_body(name))
            raw = read_until_closed(s)
        status, body = answer_of(raw)
        assert status == 408 and body["error"] == "ReadTimeoutError"
        assert b"connection: close" in raw.lower()
        m = metric_values(httpx.get(f"{url}/metrics").text)
    assert m[("modelopt_serve_read_timeouts_total", ())] == 1
    assert m[("modelopt_serve_in_flight", ())] == 0


def test_endless_headers_are_refused(artifact):
    with serve_in_thread(artifact, read_timeout_s=10, http="httptools") as url:
        with socket.create_connection(("127.0.0.1", port_of(url)), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            for i in range(200):  # 1 KB at a time, until the server answers
                s.sendall(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000))
                if select.select([s], [], [], 0.02)[0]:
                    break
            assert i < 80, i  # refused past 64 KB
            raw = read_until_closed(s)
    status, body = answer_of(raw)
    assert status == 431 and body["error"] == "BadRequestError", raw


@pytest.fixture(scope="module")
def cli_server(artifact):
    """``modelopt serve`` with its defaults but a short stats interval."""
    with ServeProcess(artifact, "--stats-interval-s", "0.5") as s:
        yield s
    assert s.proc.returncode == 0, s.log()


def test_client_hangups_count_as_499_not_5xx_and_log_no_traceback(cli_server, name):
    """8 clients close their connection mid-body, 4 mid-headers: /predict counts 8 answers of
    status 499 (ClientDisconnectedError), none 5xx, the in-flight gauge returns to 0, and the
    log holds no traceback. (Before: 500 with a traceback each, firing the 5xx alert.)"""
    before = cli_server.metrics()
    for data in [partial_body(name)] * 8 + [PARTIAL_HEADERS] * 4:
        with socket.create_connection(("127.0.0.1", cli_server.port)) as s:
            s.sendall(data)
            time.sleep(0.05)  # the server has started on it

    def counted():
        m = cli_server.metrics()
        done = m.get(("modelopt_serve_requests_total", (("status", "499"),)), 0) - \
            before.get(("modelopt_serve_requests_total", (("status", "499"),)), 0)
        return m if done == 8 and m[("modelopt_serve_in_flight", ())] == 0 else None

    m = wait_for(counted)
    assert m, cli_server.metrics()
    assert m[("modelopt_serve_errors_total", (("type", "ClientDisconnectedError"),))] == 8
    assert not [k for k in m if k[0] == "modelopt_serve_requests_total"
                and k[1][0][1].startswith("5")]
    assert m[("modelopt_serve_read_timeouts_total", ())] == 0  # hang-ups are no timeouts
    log = cli_server.log()
    assert "Traceback" not in log and "predict failed" not in log, log[-3000:]


def test_access_log_is_opt_in_errors_and_stats_lines_stay(cli_server, name, caplog):
    x = torch.randn(1, 8)
    for _ in range(5):
        r = httpx.post(f"{cli_server.url}/predict", json={"inputs": {name: x.tolist()}})
        assert r.status_code == 200
    assert httpx.post(f"{cli_server.url}/predict", content=b"{",
                      headers={"content-type": codec.JSON}).status_code == 400
    assert httpx.get(f"{cli_server.url}/nope").status_code == 404
    time.sleep(1.2)  # a stats line or two
    recs = [json.loads(line) for line in cli_server.log().splitlines() if line.startswith("{")]
    requests = [r for r in recs if "status" in r]
    assert not [r for r in requests if r["status"] < 400], requests  # no access lines
    assert {"method": "POST", "path": "/predict", "status": 400,
            "error": "BadRequestError"}.items() <= next(
        r for r in requests if r["status"] == 400).items()
    assert any(r["status"] == 404 and r["path"] == "/nope" for r in requests)
    assert any(r.get("event") == "stats" for r in recs)
    # asked for, every request is logged
    with caplog.at_level("INFO", logger="modelopt.serve"), \
            serve_in_thread(cli_server_artifact(cli_server), access_log=True) as url:
        assert httpx.post(f"{url}/predict", json={"inputs": {name: x.tolist()}}
                          ).status_code == 200
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "modelopt.serve"
             and r.getMessage().startswith('{"method"')]
    assert {"method": "POST", "path": "/predict", "status": 200, "rows": 1}.items() <= \
        lines[-1].items()


def cli_server_artifact(server: ServeProcess):
    return server.proc.args[4]  # python -m modelopt_core serve ARTIFACT ...


class LogOf(torch.nn.Module):
    """log(x): NaN for negative inputs, -inf for 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


def test_non_finite_outputs_get_a_typed_500_never_invalid_json(tmp_path):
    s = mo.Session(LogOf().eval(), (torch.rand(1, 4) + 0.5,), progress=False)
    s.export("onnx")
    path = s.current.save(tmp_path / "log")
    name = s.current.inputs[0].name

    def strict(text: str):
        def refuse(c):
            raise AssertionError(f"not JSON: {c}")
        return json.loads(text, parse_constant=refuse)

    with serve_in_thread(path) as url:
        r = httpx.post(f"{url}/predict", json={"inputs": {name: [[-1.0, 0.0, 1.0, 2.0]]}})
        assert r.status_code == 500, r.text
        body = strict(r.text)
        assert body["error"] == "NonFiniteOutputError" and "['output']" in body["detail"]
        # binary answers carry them as they are
        r = httpx.post(f"{url}/predict", json={"inputs": {name: [[-1.0, 0.0, 1.0, 2.0]]}},
                       headers={"accept": codec.TENSORS})
        assert r.status_code == 200
        out = codec.decode_outputs(r.content, codec.TENSORS)["output"]
        assert out[0, 0].isnan() and out[0, 1] == float("-inf")
        r = httpx.post(f"{url}/predict", json={"inputs": {name: [[1.0, 2.0, 3.0, 4.0]]}})
        assert r.status_code == 200
        torch.testing.assert_close(torch.tensor(strict(r.text)["outputs"]),
                                   torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0]])))
        m = metric_values(httpx.get(f"{url}/metrics").text)
    assert m[("modelopt_serve_errors_total", (("type", "NonFiniteOutputError"),))] == 1
