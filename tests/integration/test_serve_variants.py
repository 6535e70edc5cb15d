"""Several variants behind one server, over real loopback sockets: the weighted split, sticky
client keys, X-Variant, shadow mode (a shadow's answers never reach a client, a failing shadow
fails nobody), promotion under load without a failed request, per-variant /metrics equal to
what the clients saw, the admin token, feedback accuracy, and variants with other inputs
refused at start."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from modelopt_serve.app import create_app
from modelopt_serve.client import load_test, variants_table
from modelopt_serve.errors import VariantConfigError, VariantSpecError
from modelopt_serve.server import serve_in_thread
from serve_helpers import ServeProcess, metric_values

import modelopt_core as mo

#: B's outputs are A's plus this: same top-1 class, told apart at a glance
OFFSET = 1000.0
FAST = {"stats_interval_s": None, "max_delay_ms": 1.0}


class _MLP(torch.nn.Sequential):
    def __init__(self, n_in: int = 8) -> None:
        super().__init__(torch.nn.Linear(n_in, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


class _Exploding(_MLP):
    """The MLP's weights, a forward that always fails: a broken shadow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this shadow always fails")


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    """A: a 4-class MLP (ONNX); B: the same plus OFFSET on every output; C: other inputs;
    T: A's weights as a torch-format artifact (served through _Exploding as a failing shadow)."""
    root = tmp_path_factory.mktemp("variants")
    torch.manual_seed(0)
    a = _MLP().eval()
    b = _MLP().eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b[2].bias += OFFSET
    out = {"model_a": a}
    for key, model, n_in in (("A", a, 8), ("B", b, 8), ("C", _MLP(6).eval(), 6)):
        s = mo.Session(model, (torch.randn(1, n_in),), progress=False)
        s.export("onnx")
        out[key] = s.current.save(root / key)
    out["T"] = mo.Session(a, (torch.randn(1, 8),), progress=False).original.save(root / "T")
    out["name"] = mo.load_artifact(out["A"]).inputs[0].name
    return out


def _post(c: httpx.Client, url: str, arts, x: torch.Tensor | None = None,
          **headers: str) -> httpx.Response:
    x = torch.randn(1, 8) if x is None else x
    return c.post(f"{url}/predict", json={"inputs": {arts["name"]: x.tolist()}},
                  headers={k.replace("_", "-"): v for k, v in headers.items()})


def test_weighted_split_and_metrics_match_the_clients(arts):
    with serve_in_thread(arts["A"], name="A", variants={"B": (arts["B"], 10)}, split_seed=0,
                         **FAST) as url:
        res = load_test(url, concurrency=8, requests=2000)
        m = metric_values(httpx.get(f"{url}/metrics").text, "B")
        m_a = metric_values(httpx.get(f"{url}/metrics").text, "A")
        report = httpx.get(f"{url}/variants").json()
    assert res["errors"] == 0 and res["ok"] == 2000
    counts = res["variant_counts"]
    assert set(counts) == {"A", "B"} and sum(counts.values()) == 2000
    assert abs(counts["B"] / 2000 - 0.10) <= 0.03, counts  # 90/10 within 3 points
    # what the server counted per variant is what the clients saw
    assert m[("modelopt_serve_requests_total", (("status", "200"),))] == counts["B"]
    assert m_a[("modelopt_serve_requests_total", (("status", "200"),))] == counts["A"]
    assert m[("modelopt_serve_request_latency_seconds_count", ())] == counts["B"]
    assert m[("modelopt_serve_variant_weight", ())] == 10
    assert m_a[("modelopt_serve_variant_weight", ())] == 90
    assert {n: v["requests"] for n, v in report["variants"].items()} == counts
    assert report["weights"] == {"A": 90.0, "B": 10.0}
    lat = report["variants"]["B"]["latency_ms"]
    assert lat["n"] == counts["B"] and lat["p50"][1] <= lat["p50"][0] <= lat["p50"][2]
    assert report["variants"]["B"]["vs_primary"]["verdict"] in mo.stats.VERDICTS
    assert any(line.startswith("verdict B vs A:") for line in variants_table(report))


def test_sticky_keys_and_forced_variants(arts):
    with serve_in_thread(arts["A"], name="A", variants={"B": arts["B"]}, **FAST) as url, \
            httpx.Client() as c:
        seen: dict[str, set[str]] = {}
        for i in range(40):
            for _ in range(4):
                r = _post(c, url, arts, x_client_key=f"user-{i}")
                assert r.status_code == 200
                seen.setdefault(f"user-{i}", set()).add(r.headers["x-variant"])
        assert all(len(v) == 1 for v in seen.values()), seen  # each key: one variant
        assert {next(iter(v)) for v in seen.values()} == {"A", "B"}  # 50/50 over the keys
        for _ in range(10):  # X-Variant wins over the key
            r = _post(c, url, arts, x_variant="B", x_client_key="user-0")
            assert r.headers["x-variant"] == "B" and min(r.json()["outputs"][0]) > OFFSET / 2
            r = _post(c, url, arts, x_variant="A")
            assert r.headers["x-variant"] == "A" and max(r.json()["outputs"][0]) < OFFSET / 2
        r = _post(c, url, arts, x_variant="nope")
        assert r.status_code == 400 and r.json()["error"] == "UnknownVariantError"
        assert "'nope'" in r.json()["detail"] and "['A', 'B']" in r.json()["detail"]
        assert len(r.headers["x-request-id"]) == 32


def _wait_compared(url: str, name: str, total: int) -> dict:
    deadline = time.monotonic() + 60
    while True:
        rep = httpx.get(f"{url}/variants").json()
        ag = rep["variants"][name]["agreement"]
        if ag["compared"] + ag["dropped"] + ag["failed"] + ag["mismatched"] >= total:
            return rep
        assert time.monotonic() < deadline, ag
        time.sleep(0.05)


def test_shadow_answers_never_reach_clients(arts):
    boom = {"artifact": arts["T"], "backend": "torch", "model": _Exploding()}
    with serve_in_thread(arts["A"], name="A", variants={"B": arts["B"], "X": boom},
                         shadow=["B", "X"], **FAST) as url, httpx.Client() as c:
        xs = torch.randn(150, 8)
        for i in range(150):
            r = _post(c, url, arts, xs[i:i + 1], x_client_key=f"k{i}")
            assert r.status_code == 200 and r.headers["x-variant"] == "A"
            got = torch.tensor(r.json()["outputs"])  # A's answer, never B's
            torch.testing.assert_close(got, arts["model_a"](xs[i:i + 1]).detach(),
                                       rtol=1e-4, atol=1e-4)
        r = _post(c, url, arts, x_variant="B")
        assert r.status_code == 400 and "shadow" in r.json()["detail"]
        rep = _wait_compared(url, "B", 150)
        _wait_compared(url, "X", 150)
        rep = httpx.get(f"{url}/variants").json()
        m = metric_values(httpx.get(f"{url}/metrics").text, "B")
        text = httpx.get(f"{url}/metrics").text
    b, x = rep["variants"]["B"], rep["variants"]["X"]
    assert b["role"] == "shadow" and b["weight"] == 0 and b["requests"] == 0
    ag = b["agreement"]
    assert ag["compared"] == 150 and ag["failed"] == ag["dropped"] == 0, ag
    assert ag["top1_agreement"] == 1.0  # B = A + a constant: same classes
    assert abs(ag["max_abs_error"] - OFFSET) < 0.01
    ya = arts["model_a"](xs).detach()
    cos = torch.nn.functional.cosine_similarity(ya, ya + OFFSET, dim=1)
    assert ag["cosine_mean"] == pytest.approx(float(cos.mean()), abs=1e-4)
    assert ag["cosine_min"] == pytest.approx(float(cos.min()), abs=1e-4)
    assert b["vs_primary"]["basis"].startswith("model time")
    assert x["agreement"]["failed"] == 150 and x["agreement"]["compared"] == 0  # nobody
    # saw it fail: every client got A's answer above
    # no client answer was counted for a shadow; its comparisons are
    assert 'modelopt_serve_requests_total{status="200",variant="B"}' not in text
    assert m[("modelopt_serve_shadow_requests_total", (("outcome", "compared"),))] == \
        ag["compared"]
    assert m[("modelopt_serve_shadow_top1_agreement", ())] == 1.0


def test_promote_and_rollback_under_load_without_a_failed_request(arts):
    log: list[tuple[float, float, str, int]] = []  # (sent, answered, variant, status)
    stop = threading.Event()

    def client(url: str) -> None:
        with httpx.Client() as c:
            while not stop.is_set():
                t0 = time.monotonic()
                r = _post(c, url, arts)
                log.append((t0, time.monotonic(), r.headers.get("x-variant", ""),
                            r.status_code))

    with serve_in_thread(arts["A"], name="A", variants={"B": (arts["B"], 0)},
                         admin_token="s3cret", **FAST) as url:
        threads = [threading.Thread(target=client, args=(url,)) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            auth = {"Authorization": "Bearer s3cret"}
            switches = []
            for target in ("B", "A", "B"):
                time.sleep(0.4)
                t_ask = time.monotonic()
                r = httpx.post(f"{url}/variants", json={"promote": target}, headers=auth)
                assert r.status_code == 200, r.text
                assert r.json()["weights"][target] == 100.0
                switches.append((t_ask, time.monotonic(), target))
            time.sleep(0.4)
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert len(log) > 100 and all(status == 200 for *_, status in log)
    bounds = [(0.0, 0.0, "A")] + switches + [(float("inf"), float("inf"), "")]
    for (_, settled, who), (asked, _, _) in itertools.pairwise(bounds):
        # sent after a switch was answered and answered before the next was asked: its variant
        inside = [v for sent, done, v, _ in log if sent > settled and done < asked]
        assert inside and set(inside) == {who}, (who, Counter(inside))


def test_admin_token_guards_post_variants(arts, monkeypatch):
    body = {"weights": {"A": 50, "B": 50}}
    monkeypatch.delenv("MODELOPT_ADMIN_TOKEN", raising=False)
    with serve_in_thread(arts["A"], name="A", variants={"B": arts["B"]}, **FAST) as url:
        r = httpx.post(f"{url}/variants", json=body, headers={"X-Admin-Token": "anything"})
        assert r.status_code == 403 and r.json()["error"] == "AdminDisabledError"
        assert "--admin-token" in r.json()["detail"]
    monkeypatch.setenv("MODELOPT_ADMIN_TOKEN", "from-env")
    with serve_in_thread(arts["A"], name="A", variants={"B": (arts["B"], 10)},
                         **FAST) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Admin-Token": "from-en"}):
            r = httpx.post(f"{url}/variants", json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"] == "AdminAuthError", headers
        assert httpx.get(f"{url}/variants").json()["weights"] == {"A": 90.0, "B": 10.0}
        ok = {"X-Admin-Token": "from-env"}
        for bad, word in (({"weights": {"Z": 10}}, "'Z'"), ({"weights": {"B": 120}}, "120"),
                          ({"weights": {"A": 0, "B": 0}}, "no live variant"),
                          ({"promote": "B", "extra": 1}, "extra")):
            r = httpx.post(f"{url}/variants", json=bad, headers=ok)
            assert r.status_code == 422 and word in r.json()["detail"], (bad, r.text)
        r = httpx.post(f"{url}/variants", json=body, headers=ok)
        assert r.status_code == 200 and r.json()["version"] == 1
        assert httpx.get(f"{url}/variants").json()["weights"] == {"A": 50.0, "B": 50.0}


def test_feedback_accuracy_per_variant(arts):
    with serve_in_thread(arts["A"], name="A", variants={"B": arts["B"]}, shadow=["B"],
                         feedback_max=30, **FAST) as url, httpx.Client() as c:
        ids = []
        for i in range(40):
            r = _post(c, url, arts)
            top = max(range(4), key=lambda k: r.json()["outputs"][0][k])
            ids.append((r.headers["x-request-id"], top))
        _wait_compared(url, "B", 40)
        old = c.post(f"{url}/feedback", json={"request_id": ids[0][0], "label": 0})
        assert old.status_code == 404 and old.json()["error"] == "UnknownRequestIdError"
        assert "newest 30" in old.json()["detail"]
        for j, (rid, top) in enumerate(ids[10:]):  # right for 3 of every 4
            label = top if j % 4 else (top + 1) % 4
            r = c.post(f"{url}/feedback", json={"request_id": rid, "label": label})
            assert r.status_code == 200, r.text
        again = c.post(f"{url}/feedback", json={"request_id": ids[-1][0], "label": 0})
        assert again.status_code == 409
        bad = c.post(f"{url}/feedback", json={"request_id": ids[-1][0], "label": "cat"})
        assert bad.status_code == 422 and bad.json()["error"] == "FeedbackError"
        rep = httpx.get(f"{url}/variants").json()
        m = metric_values(httpx.get(f"{url}/metrics").text, "A")
    fa = rep["variants"]["A"]["feedback"]
    assert fa == {"labelled_rows": 30, "correct_rows": 22, "accuracy": 22 / 30}
    # the shadow predicted the same classes (B = A + a constant), scored on the same labels
    assert rep["variants"]["B"]["feedback"] == fa
    assert m[("modelopt_serve_feedback_total", ())] == 30
    assert m[("modelopt_serve_feedback_correct_total", ())] == 22
    assert m[("modelopt_serve_feedback_accuracy", ())] == pytest.approx(22 / 30)


def test_variants_that_take_other_inputs_are_refused_at_start(arts, capsys):
    with pytest.raises(VariantSpecError, match=r"variant 'C'.*C.*primary 'A'.*A\b"):
        create_app(arts["A"], name="A", variants={"C": arts["C"]})
    with pytest.raises(VariantConfigError, match="more than 100%"):
        create_app(arts["A"], variants={"B": (arts["B"], 60), "D": (arts["B"], 50)})
    with pytest.raises(VariantConfigError, match="not the primary"):
        create_app(arts["A"], name="A", variants={"B": arts["B"]}, shadow=["A"])
    from modelopt_core.cli import main

    assert main(["serve", str(arts["A"]), "--variant", f"C={arts['C']}", "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert "VariantSpecError" in err or "takes other inputs" in err
    assert str(arts["C"]) in err and str(arts["A"]) in err


def test_cli_serves_variants(arts):
    with ServeProcess(arts["A"], "--name", "A", "--variant", f"B={arts['B']}:25",
                      "--split-seed", "3", "--admin-token", "tok",
                      "--stats-interval-s", "0") as server:
        res = load_test(server.url, concurrency=4, requests=400)
        assert res["errors"] == 0 and set(res["variant_counts"]) == {"A", "B"}
        assert abs(res["variant_counts"]["B"] / 400 - 0.25) < 0.08
        r = httpx.post(f"{server.url}/variants", json={"promote": "A"},
                       headers={"X-Admin-Token": "tok"})
        assert r.status_code == 200
        assert load_test(server.url, requests=50)["variant_counts"] == {"A": 50}
        m = server.metrics()
        assert m[("modelopt_serve_requests_total", (("status", "200"),))] == 450


def test_capture_keeps_only_the_primarys_inputs(arts, tmp_path):
    from modelopt_core.captured import read_captured

    cap = tmp_path / "capture"
    sent_a = []
    with serve_in_thread(arts["A"], name="A", variants={"B": arts["B"]}, shadow=[],
                         capture={"folder": cap, "rate": 1.0, "max_samples": 1000, "seed": 0},
                         **FAST) as url, httpx.Client() as c:
        for i in range(60):
            x = torch.randn(1, 8)
            who = ("A", "B")[i % 3 == 0]  # 40 to A, 20 to B
            assert _post(c, url, arts, x, x_variant=who).headers["x-variant"] == who
            if who == "A":
                sent_a.append(x)
    got = read_captured(cap, mo.load_artifact(arts["A"]).inputs)  # closed: flushed
    assert got.count == 40  # B's requests were not captured
    rows = torch.from_numpy(got.arrays[arts["name"]])
    want = torch.cat(sent_a)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, want.tolist()))


def test_a_slow_shadow_with_a_full_queue_drops_copies_not_requests(arts, tmp_path):
    """A shadow ~100x the primary's work with a queue of 1: copies that find it busy are
    dropped and counted; every client request is still answered by the primary."""
    wide = torch.nn.Sequential(torch.nn.Linear(8, 2048), torch.nn.ReLU(),
                               torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
                               torch.nn.Linear(2048, 4)).eval()
    s = mo.Session(wide, (torch.randn(1, 8),), progress=False)
    s.export("onnx")
    slow = {"artifact": s.current.save(tmp_path / "wide"), "max_queue": 1,
            "max_batch_size": 1}
    with serve_in_thread(arts["A"], name="A", variants={"S": slow}, shadow=["S"],
                         **FAST) as url:
        res = load_test(url, concurrency=8, requests=300)
        rep = _wait_compared(url, "S", 300)
    assert res["ok"] == 300 and res["variant_counts"] == {"A": 300}
    ag = rep["variants"]["S"]["agreement"]
    assert ag["compared"] + ag["dropped"] == 300 and ag["failed"] == 0
    assert ag["compared"] >= 1, ag
