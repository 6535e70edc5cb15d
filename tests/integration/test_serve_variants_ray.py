"""Variants on Ray Serve: two replicas each serve both variants with the same split; a
promotion posted to whichever replica reaches every replica (through the shared weights
actor) without a restart. Skipped when Ray Serve is not installed (``[serve-ray]``)."""

from __future__ import annotations

import socket
import time
from collections import Counter

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[serve-ray]'")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed: "
                            "pip install -e '.[serve-ray]'")
httpx = pytest.importorskip("httpx")

from modelopt_serve import ray_app
from modelopt_serve.errors import VariantSpecError

import modelopt_core as mo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-variants")
    torch.manual_seed(0)
    out = {}
    for key, n_in, shift in (("A", 8, 0.0), ("B", 8, 1000.0), ("C", 6, 0.0)):
        m = torch.nn.Sequential(torch.nn.Linear(n_in, 4)).eval()
        with torch.no_grad():
            m[0].bias += shift
        s = mo.Session(m, (torch.randn(1, n_in),), progress=False)
        s.export("onnx")
        out[key] = s.current.save(root / key)
    out["name"] = mo.load_artifact(out["A"]).inputs[0].name
    return out


def _answers(c: httpx.Client, arts, n: int) -> Counter:
    got: Counter = Counter()
    for _ in range(n):
        r = c.post("/predict", json={"inputs": {arts["name"]: torch.randn(1, 8).tolist()}})
        assert r.status_code == 200, r.text
        big = min(r.json()["outputs"][0]) > 500  # B's answers are A's + 1000
        assert big == (r.headers["x-variant"] == "B")
        got[r.headers["x-variant"]] += 1
    return got


def test_ray_replicas_share_the_split_and_a_promotion(arts):
    with pytest.raises(VariantSpecError, match="variant 'C'"):
        ray_app(arts["A"], variants={"C": arts["C"]})  # refused before any replica
    port = _free_port()
    # address="local": a Ray of its own, never a cluster another test runs on this machine
    # (ray.init() alone joins the newest cluster started here)
    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True,
             log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(ray_app(arts["A"], num_replicas=2, num_cpus=0.5, name="A",
                          variants={"B": (arts["B"], 50)}, admin_token="tok",
                          stats_interval_s=None), route_prefix="/", name="modelopt")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            deadline = time.monotonic() + 60
            while c.get("/ready").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert set(_answers(c, arts, 60)) == {"A", "B"}
            r = c.post("/variants", json={"promote": "B"}, headers={"X-Admin-Token": "tok"})
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 30  # each replica polls the shared table (0.5 s)
            while _answers(c, arts, 20) != {"B": 20}:
                assert time.monotonic() < deadline, "the promotion did not reach every replica"
            assert _answers(c, arts, 60) == {"B": 60}  # whichever replica answered
            assert c.post("/variants", json={"promote": "A"}).status_code == 401
    finally:
        serve.shutdown()
        ray.shutdown()
