"""Scale-out on Ray Serve: ``ray_app(path, num_replicas=2)`` on a local Ray started by the test;
answers over Ray's HTTP proxy equal the direct runner's; shut down in the fixture. Skipped
(with the reason) when Ray Serve is not installed (the ``[serve-ray]`` extra)."""

from __future__ import annotations

import socket
import time

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[serve-ray]'")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed: "
                            "pip install -e '.[serve-ray]'")
httpx = pytest.importorskip("httpx")

from modelopt_serve import codec, ray_app
from modelopt_serve.replicas import load_runner

import modelopt_core as mo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifact_path(tmp_path_factory):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Tanh()).eval()
    s = mo.Session(m, example_inputs=(torch.randn(1, 16),), progress=False)
    s.export("onnx")
    path = tmp_path_factory.mktemp("ray") / "mlp"
    s.current.save(path)
    return path


@pytest.fixture(scope="module")
def ray_url(artifact_path):
    port = _free_port()
    # address="local": a Ray of its own, never a cluster another test runs on this machine
    # (ray.init() alone joins the newest cluster started here)
    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True,
             log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(ray_app(artifact_path, num_replicas=2, num_cpus=0.5, max_batch_size=8,
                          cache_size=16), route_prefix="/", name="modelopt")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_ray_serve_two_replicas_answer_like_the_runner(artifact_path, ray_url):
    art = mo.load_artifact(artifact_path)
    name = art.inputs[0].name
    runner = load_runner(art, "onnxruntime")
    deadline = time.monotonic() + 60
    while True:  # serve.run returned: the replicas are up; the proxy may lag a moment
        replicas = serve.status().applications["modelopt"].deployments["modelopt"] \
            .replica_states
        try:
            ready = httpx.get(f"{ray_url}/ready", timeout=10).status_code == 200
        except httpx.TransportError:
            ready = False
        if ready and replicas.get("RUNNING") == 2:
            break
        assert time.monotonic() < deadline, f"not ready: replicas {replicas}"
        time.sleep(0.2)
    with httpx.Client(base_url=ray_url, timeout=30) as c:
        for seed in range(12):
            x = torch.randn(1, 16, generator=torch.Generator().manual_seed(seed))
            want = runner(x)
            r = c.post("/predict", content=codec.encode_inputs({name: x}),
                       headers={"content-type": codec.TENSORS})
            assert r.status_code == 200, r.text
            torch.testing.assert_close(codec.decode_outputs(r.content, codec.TENSORS)["output"],
                                       want, rtol=1e-5, atol=1e-5)
            r = c.post("/predict", json={"inputs": {name: x.tolist()}})
            torch.testing.assert_close(torch.tensor(r.json()["outputs"]), want, rtol=1e-5,
                                       atol=1e-5)
        bad = c.post("/predict", json={"inputs": {name: [[0.0] * 3]}})
        assert bad.status_code == 422 and bad.json()["error"] == "InputSpecError"
        assert "modelopt_serve_requests_total" in c.get("/metrics").text
    runner.close()


def test_modelopt_serve_ray_command_answers_then_stops_on_sigterm(artifact_path):
    """The CLI path (`modelopt serve --ray`): its own local Ray, Serve's HTTP proxy on the
    port given, the same answers, and SIGTERM shuts Serve and Ray down with exit status 0."""
    import os
    import signal
    import subprocess
    import sys

    art = mo.load_artifact(artifact_path)
    runner = load_runner(art, "onnxruntime")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "modelopt_core", "serve", str(artifact_path),
                             "--ray", "--workers", "1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            try:
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "modelopt serve --ray not ready in 180 s"
            time.sleep(0.5)
        x = torch.randn(2, 16, generator=torch.Generator().manual_seed(7))
        r = httpx.post(f"{url}/predict", content=codec.encode_inputs({art.inputs[0].name: x}),
                       headers={"content-type": codec.TENSORS}, timeout=30)
        assert r.status_code == 200, r.text
        torch.testing.assert_close(codec.decode_outputs(r.content, codec.TENSORS)["output"],
                                   runner(x), rtol=1e-5, atol=1e-5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        err = proc.stderr.read()
    assert rc == 0, err[-3000:]
    assert '"event": "ray serve ready"' in err
