"""The live verdict of ``GET /variants`` says what ``modelopt compare`` says about the same two
artifacts: an FP32 ResNet-18-shaped model against its ONNX Runtime INT8 version (several
times faster here) is "B faster" both ways, live split and shadow; an artifact against itself
is "no significant difference".

Statistical design (a loaded 2-core CI box must not flip these): the FP32/INT8 gap is large
(the model alone: about 8x; per request over HTTP, about 3x) against the request-to-request
noise, so the 95% interval of the ratio of medians lies far from 1 at a few hundred requests.
A vs A cannot be asserted on one interval: a 95% interval excludes the truth 1 time in 20 by
construction, and more often when bursts of machine load hit a run of requests that a random
split gave mostly to one side (the bootstrap takes requests as independent: measured here at
load 7-8, 4 windows in 20 said "significant"). So the client alternates the two sides with
``X-Variant`` (as ``modelopt compare`` interleaves its blocks: a burst hits both alike; 1 in
20 windows at load 7), and the assertion is the majority of 7 disjoint windows (``GET
/variants?window=N`` after each batch), wrong about 1 time in 4000 at a 5% miss rate per
window (P(>= 4 of 7) ~ 35 * 0.05^4), plus the median ratio near 1.
"""

from __future__ import annotations

import statistics

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from modelopt_search.ab import compare_artifacts
from modelopt_serve import codec
from modelopt_serve.client import load_test, make_inputs
from modelopt_serve.server import serve_in_thread

import modelopt_core as mo
from modelopt_core.cli import main
from modelopt_demo.models import ResNet18

FAST = {"stats_interval_s": None, "max_delay_ms": 1.0}
RES = 64  # ResNet-18's layers on 64x64 images: the gap of 224x224, a CI-sized cost


@pytest.fixture(scope="module")
def fp32_int8(tmp_path_factory):
    """ResNet-18-shaped classifier (BatchNorm fitted to the data, as a trained net's):
    ONNX FP32, and ONNX Runtime INT8 (static, per channel)."""
    root = tmp_path_factory.mktemp("verdict")
    torch.manual_seed(0)
    model = ResNet18(num_classes=10).train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, RES, RES))
    model.eval()
    calib = [torch.randn(4, 3, RES, RES) for _ in range(4)]
    s = mo.Session(model, (torch.randn(1, 3, RES, RES),), calibration_data=calib,
                   progress=False)
    s.export("onnx")
    fp32 = s.current.save(root / "fp32")
    s.apply("onnx.optimize")
    s.apply("onnx.quantize_static", per_channel=True, calibrate_method="minmax")
    return fp32, s.current.save(root / "int8")


def test_live_and_shadow_verdicts_agree_with_modelopt_compare(fp32_int8, capsys):
    fp32, int8 = fp32_int8
    offline = compare_artifacts(fp32, int8, runs=60, warmup=5)["latency"]
    assert offline["verdict"] == "B faster", offline  # the premise: INT8 is faster here
    with serve_in_thread(fp32, name="fp32", variants={"int8": (int8, 50)}, split_seed=0,
                         **FAST) as url:
        res = load_test(url, concurrency=2, requests=300)
        assert res["errors"] == 0 and min(res["variant_counts"].values()) > 100
        assert main(["bench-serve", url, "--requests", "20", "--compare-variants"]) == 0
        live = httpx.get(f"{url}/variants").json()["variants"]["int8"]["vs_primary"]
    out = capsys.readouterr().out
    assert "verdict int8 vs fp32: faster" in out and "p50 ms (95% CI)" in out
    assert live["verdict"] == offline["verdict"], (live, offline)
    assert live["ci95"][1] < 1 and live["basis"].startswith("request latency")
    with serve_in_thread(fp32, name="fp32", variants={"int8": int8}, shadow=["int8"],
                         **FAST) as url:
        assert load_test(url, concurrency=2, requests=150)["variant_counts"] == {"fp32": 150}
        rep = httpx.get(f"{url}/variants").json()["variants"]["int8"]
    assert rep["vs_primary"]["verdict"] == offline["verdict"], rep["vs_primary"]
    assert rep["vs_primary"]["basis"].startswith("model time")
    ag = rep["agreement"]
    assert ag["compared"] + ag["dropped"] == 150 and ag["compared"] > 100
    assert 0 < ag["max_abs_error"] and 0 <= ag["top1_agreement"] <= 1
    assert -1 <= ag["cosine_min"] <= ag["cosine_mean"] <= 1


def test_an_artifact_against_itself_is_no_significant_difference(fp32_int8):
    _, int8 = fp32_int8
    verdicts, ratios = [], []
    with serve_in_thread(int8, name="a", variants={"again": (int8, 50)}, **FAST) as url, \
            httpx.Client() as c:
        spec = c.get(f"{url}/spec").json()
        bodies = [codec.encode_inputs(make_inputs(spec["inputs"], i)) for i in range(50)]
        for _ in range(7):  # 7 disjoint windows of 100 answers per side
            for i in range(200):  # a, again, a, again...: a burst of load hits both alike
                r = c.post(f"{url}/predict", content=bodies[i % 50],
                           headers={"content-type": codec.TENSORS,
                                    "x-variant": ("a", "again")[i % 2]})
                assert r.status_code == 200
            v = c.get(f"{url}/variants?window=100").json()["variants"]["again"]["vs_primary"]
            assert v["n_a"] >= 95 and v["n_b"] >= 95
            verdicts.append(v["verdict"])
            ratios.append(v["ratio_b_over_a"])
        bad = c.get(f"{url}/variants?window=3")
    assert verdicts.count("no significant difference") >= 4, (verdicts, ratios)
    assert 0.8 < statistics.median(ratios) < 1.25, ratios
    assert bad.status_code == 422 and "window=3" in bad.json()["detail"]
