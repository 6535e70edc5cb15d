"""Bad requests to the serving app get a 4xx naming the problem (the InputSpecError text for
inputs that do not fit the model), and the app keeps serving good requests afterwards; bad
options of the app, the load client and the CLI fail with typed errors."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient
from modelopt_serve import codec
from modelopt_serve.app import create_app
from modelopt_serve.client import check_url, load_test

import modelopt_core as mo


@pytest.fixture(scope="module")
def artifact_path(tmp_path_factory):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    s = mo.Session(m, example_inputs=(torch.randn(1, 4),), progress=False)
    s.export("onnx")
    path = tmp_path_factory.mktemp("bad") / "lin"
    s.current.save(path)
    return path, m


@pytest.fixture(scope="module")
def client(artifact_path):
    app = create_app(artifact_path[0], max_body_mb=0.001, load_in_background=False)
    with TestClient(app) as c:
        yield c


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


J, T, N = codec.JSON, codec.TENSORS, codec.NPZ
CASES = {
    "truncated JSON": (b'{"inputs": {"input": [[1.0,', J, 400, "BadRequestError",
                       "malformed JSON"),
    "JSON not an object": (b"[1, 2]", J, 400, "BadRequestError", '"inputs"'),
    "no inputs key": (b'{"x": 1}', J, 400, "BadRequestError", '"inputs"'),
    "inputs a number": (b'{"inputs": 3}', J, 400, "BadRequestError", "object or a list"),
    "wrong width": (b'{"inputs": {"input": [[1.0, 2.0, 3.0]]}}', J, 422, "InputSpecError",
                    "shape (1, 3) does not match ['batch', 4]"),
    "no batch dim": (b'{"inputs": {"input": [1.0, 2.0, 3.0, 4.0]}}', J, 422, "InputSpecError",
                     "does not match"),
    "ragged rows": (b'{"inputs": {"input": [[1.0, 2.0], [1.0]]}}', J, 422, "InputSpecError",
                    "rectangular"),
    "strings": (b'{"inputs": {"input": [["a", "b", "c", "d"]]}}', J, 422, "InputSpecError",
                "expected numbers"),
    "unknown input": (b'{"inputs": {"input": [[1, 2, 3, 4]], "mask": [[1]]}}', J, 422,
                      "InputSpecError", "unknown ['mask']"),
    "missing input": (b'{"inputs": {"img": [[1, 2, 3, 4]]}}', J, 422, "InputSpecError",
                      "missing ['input']"),
    "too many in list": (b'{"inputs": [[[1, 2, 3, 4]], [[1]]]}', J, 422, "InputSpecError",
                         "expected 1 input"),
    "float64 tensor": (codec.encode_inputs({"input": torch.ones(1, 4, dtype=torch.float64)}), T,
                       422, "InputSpecError", "dtype torch.float64 but the model takes float32"),
    "zero rows": (codec.encode_inputs({"input": torch.ones(0, 4)}), T, 422, "InputSpecError",
                  "0 rows"),
    "garbage safetensors": (b"\x08\x00\x00\x00\x00\x00\x00\x00{}", T, 400, "BadRequestError",
                            "safetensors"),
    "garbage npz": (b"PK\x03\x04nonsense", N, 400, "BadRequestError", "numpy.savez"),
    "npz wrong name": (_npz(x=np.ones((1, 4), np.float32)), N, 422, "InputSpecError",
                       "missing ['input']"),
    "too large": (b"0" * 2000, J, 413, "BadRequestError", "over the limit of 1048 bytes"),
    "content type": (b"1,2,3,4", "text/csv", 415, "BadRequestError", "unsupported Content-Type"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_gets_4xx_with_the_reason_then_good_ones_still_work(client, artifact_path,
                                                                         case):
    body, ctype, status, error, text = CASES[case]
    r = client.post("/predict", content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert r.json()["error"] == error
    assert text in r.json()["detail"], r.json()
    x = torch.randn(2, 4)
    ok = client.post("/predict", json={"inputs": {"input": x.tolist()}})
    assert ok.status_code == 200
    with torch.no_grad():
        want = artifact_path[1](x)
    torch.testing.assert_close(torch.tensor(ok.json()["outputs"]), want, rtol=1e-5, atol=1e-5)


def test_integer_input_refuses_floats_in_json(tmp_path):
    class Ids(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(5, 2)

        def forward(self, ids):
            return self.emb(ids).sum(1)

    s = mo.Session(Ids().eval(), example_inputs=(torch.zeros(1, 3, dtype=torch.long),),
                   progress=False)
    s.export("onnx")
    s.current.save(tmp_path / "ids")
    with TestClient(create_app(tmp_path / "ids", load_in_background=False)) as c:
        r = c.post("/predict", json={"inputs": [[[0.5, 1, 2]]]})
        assert r.status_code == 422 and "send integers" in r.json()["detail"]
        r = c.post("/predict", json={"inputs": [[[0, 1, 2]]]})
        assert r.status_code == 200 and len(r.json()["outputs"][0]) == 2


def test_every_error_is_logged_as_one_json_line(client, caplog):
    with caplog.at_level("INFO", logger="modelopt.serve"):
        client.post("/predict", content=b"{", headers={"content-type": J})
    recs = [json.loads(r.getMessage()) for r in caplog.records if r.name == "modelopt.serve"]
    assert {"method": "POST", "path": "/predict", "status": 400}.items() <= recs[-1].items()
    assert recs[-1]["ms"] >= 0


def test_app_options_and_paths_are_checked(artifact_path, tmp_path):
    with pytest.raises(mo.ConfigError, match="unknown config key 'max_batch' .did you mean "
                                             "'max_batch_size'"):
        create_app(artifact_path[0], max_batch=4)
    with pytest.raises(mo.ConfigError, match="max_batch_size"):
        create_app(artifact_path[0], max_batch_size=0)
    with pytest.raises(mo.ConfigError, match="'mode' must be"):
        create_app(artifact_path[0], mode="fibers")
    with pytest.raises(mo.ArtifactError):
        create_app(tmp_path / "nothing-here")


@pytest.mark.parametrize("url", ["http://example.com:8000", "http://10.0.0.1:8000",
                                 "ftp://127.0.0.1/", "127.0.0.1:8000"])
def test_load_client_refuses_non_loopback_and_bad_urls(url):
    with pytest.raises(mo.ConfigError, match="loopback|not an http"):
        check_url(url)


def test_load_client_bounds(client):
    for kw, msg in [({"requests": 0}, "requests"), ({"concurrency": 0}, "concurrency"),
                    ({"duration_s": -1}, "duration_s"), ({"repeat_fraction": 2}, "repeat"),
                    ({"requests": 10**9}, "requests")]:
        with pytest.raises(mo.ConfigError, match=msg):
            load_test("http://127.0.0.1:9", **kw)
    assert check_url("http://[::1]:8000/") == "http://[::1]:8000"
    assert check_url("http://localhost:8000") == "http://localhost:8000"


def test_cli_rejects_bad_options(artifact_path, capsys):
    from modelopt_core import cli

    rc = cli.main(["serve", str(artifact_path[0]), "--backend-option", "novalue"])
    assert rc == 1 and "KEY=VALUE" in capsys.readouterr().err
    rc = cli.main(["serve", str(artifact_path[0]), "--preferred-batch-sizes", "4,x"])
    assert rc == 1 and "comma-separated" in capsys.readouterr().err
    rc = cli.main(["bench-serve", "http://example.com", "--requests", "1"])
    assert rc == 1 and "loopback" in capsys.readouterr().err


def test_ready_waits_for_the_replicas(artifact_path):
    """With background loading, /ready is 503 ("loading") until the pool exists, then 200."""
    app = create_app(artifact_path[0])
    seen = []
    with TestClient(app) as c:
        deadline = time.monotonic() + 30
        while True:
            r = c.get("/ready")
            seen.append(r.json()["status"])
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            assert r.status_code == 503
            time.sleep(0.005)
    assert seen[-1] == "ready" and set(seen) <= {"loading", "ready"}
