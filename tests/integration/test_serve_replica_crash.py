"""A process replica SIGKILLed under a real server (issue 23, item 7): ``modelopt serve``'s
``serve()`` in a subprocess on a loopback port, two process workers each running a slow
request. The dead worker's request gets a retryable 503; the other worker's request is
answered right; requests sent right after the kill are served without waiting for a restart;
only the dead worker is replaced."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import slow_rows
from serve_helpers import metric_values

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
from modelopt_serve import codec
from modelopt_serve.replicas import load_runner

import modelopt_core as mo

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="finds the worker processes through /proc")

def _server_cmd(path: Path, port: int, rows: int) -> list[str]:
    """``modelopt serve`` with two worker processes, as an operator starts it."""
    return [sys.executable, "-m", "modelopt_core", "-q", "serve", str(path), "--port",
            str(port), "--workers", "2", "--replica-mode", "process", "--max-batch-size",
            str(rows), "--max-delay-ms", "1", "--stats-interval-s", "0"]


@pytest.fixture(scope="module")
def slow_path(tmp_path_factory) -> Path:
    s = mo.Session(slow_rows(), (torch.randn(1, 256),), progress=False)
    s.export("onnx", exporter="torchscript")
    path = tmp_path_factory.mktemp("crash") / "slowrows"
    s.current.save(path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workers(server_pid: int) -> set[int]:
    """The pids of ``server_pid``'s replica worker processes (spawned children)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == server_pid and b"spawn_main" in cmdline:
            pids.add(int(entry.name))
    return pids


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _until(what, timeout: float, why: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


def _output(body: bytes) -> torch.Tensor:
    out = codec.decode_outputs(body, codec.TENSORS)
    if isinstance(out, dict):
        (out,) = out.values()
    return out


class _Post(threading.Thread):
    """POST one request in a thread: the response and when it came."""

    def __init__(self, url: str, name: str, x: torch.Tensor) -> None:
        super().__init__(daemon=True)
        self.url, self.x = url, x
        self.body = codec.encode_inputs({name: x})
        self.response: httpx.Response | None = None
        self.ended = 0.0
        self.start()

    def run(self) -> None:
        self.response = httpx.post(f"{self.url}/predict", content=self.body, timeout=60,
                                   headers={"content-type": codec.TENSORS})
        self.ended = time.monotonic()


def test_a_killed_worker_fails_only_its_request_under_modelopt_serve(slow_path, tmp_path):
    art = mo.load_artifact(slow_path)
    name = art.inputs[0].name
    direct = load_runner(art, "onnxruntime", {"intra_op_num_threads": 1})
    direct(torch.randn(16, 256))
    t0 = time.perf_counter()
    direct(torch.randn(64, 256))
    rows = int(min(8192, max(64, 64 * 2.0 / (time.perf_counter() - t0))))  # ~2 s a request
    port, seen = _free_port(), set()
    log = (tmp_path / "server.log").open("w")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_server_cmd(slow_path, port, rows), stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        try:
            return httpx.get(f"{url}/ready").status_code == 200
        except httpx.TransportError:
            return False

    try:
        _until(ready, 90, "the server did not become ready")
        g = torch.Generator().manual_seed(2)
        slow = [_Post(url, name, torch.randn(rows, 256, generator=g)) for _ in range(2)]
        _until(lambda: len(_workers(proc.pid)) == 2, 30, "two workers")
        time.sleep(0.6)  # both workers are running a ~2 s request
        assert all(p.is_alive() for p in slow), "the slow requests ended too soon"
        pids = _workers(proc.pid)
        seen |= pids
        victim = min(pids)
        t_kill = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        burst = [_Post(url, name, torch.randn(1, 256, generator=g)) for _ in range(8)]
        for p in [*slow, *burst]:
            p.join(90)
        codes = sorted(p.response.status_code for p in slow)
        assert codes == [200, 503], [p.response.text[:300] for p in slow]
        crashed = next(p for p in slow if p.response.status_code == 503)
        survivor = next(p for p in slow if p.response.status_code == 200)
        assert crashed.response.json()["error"] == "ReplicaCrashedError"
        assert crashed.response.headers["retry-after"] == "1"
        assert crashed.ended - t_kill < 1.5  # told at once, not after a restart
        assert survivor.ended > t_kill  # in flight when the other worker died
        torch.testing.assert_close(_output(survivor.response.content)[:8],
                                   direct(survivor.x[:8]), rtol=1e-4, atol=1e-5)
        for p in burst:
            assert p.response.status_code == 200, p.response.text[:300]
            torch.testing.assert_close(_output(p.response.content), direct(p.x),
                                       rtol=1e-4, atol=1e-5)
        stall = max(p.ended for p in burst) - max(t_kill, survivor.ended)
        assert stall < 1.5, f"the burst finished {stall:.2f} s after the live worker was free"
        # only the dead worker is replaced
        _until(lambda: len(_workers(proc.pid)) == 2, 60, "the dead worker was not replaced")
        now = _workers(proc.pid)
        seen |= now
        assert victim not in now and pids - {victim} <= now
        assert httpx.get(f"{url}/ready").status_code == 200
        assert metric_values(httpx.get(f"{url}/metrics").text)[
            ("modelopt_serve_replica_restarts_total", ())] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
            direct.close()
    assert proc.returncode == 0, (tmp_path / "server.log").read_text()
    _until(lambda: all(_gone(p) for p in seen), 10, "worker processes outlived the server")


def test_replica_mode_is_refused_with_ray(capsys):
    """--replica-mode is for modelopt serve's own replicas; with --ray it is a typed refusal
    before Ray is touched."""
    from modelopt_core import cli

    rc = cli.main(["serve", "nowhere", "--ray", "--replica-mode", "process"])
    assert rc != 0
    assert "--replica-mode applies to modelopt serve's own replicas" in capsys.readouterr().err
