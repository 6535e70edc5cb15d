"""A/B comparison of two saved artifacts on onnxruntime: a much slower model is reported
slower with a CI that excludes 1; an artifact against itself shows no significant difference;
bad paths fail naming the file. Plus properties of the bootstrap helper."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from modelopt_search.ab import (
    bootstrap_ratio_ci,
    compare_artifacts,
    run_compare,
    setup_compare,
)

import modelopt_core as mo


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A narrow and a wide MLP with the same input spec, saved as ONNX artifacts (the wide
    one is ~100x the work per call), and the narrow one as a weights-only torch artifact."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ab")
    narrow = torch.nn.Sequential(torch.nn.Linear(64, 10)).eval()
    wide = torch.nn.Sequential(torch.nn.Linear(64, 1024), torch.nn.ReLU(),
                               torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                               torch.nn.Linear(1024, 10)).eval()
    x = torch.randn(1, 64)
    paths = {}
    for name, model in (("narrow", narrow), ("wide", wide)):
        s = mo.Session(model, (x,), progress=False)
        s.export("onnx")
        paths[name] = s.current.save(root / name)
    paths["torch"] = mo.Session(narrow, (x,), progress=False).original.save(root / "torch")
    paths["narrow_model"] = narrow
    return paths


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    setup_compare(p)
    return p.parse_args(list(argv))


def test_slower_artifact_is_reported_slower(artifacts):
    res = compare_artifacts(artifacts["narrow"], artifacts["wide"], runs=60, warmup=5)
    lat = res["latency"]
    assert lat["verdict"] == "B slower"
    lo, hi = lat["ci95"]
    assert 1 < lo <= lat["ratio_b_over_a"] <= hi
    assert res["a"]["backend"] == res["b"]["backend"] == "onnxruntime"
    assert res["a"]["latency_n"] == res["b"]["latency_n"] == 60
    assert res["size"]["verdict"] == "B larger" and res["size"]["ratio_b_over_a"] > 50
    assert res["inputs"] and res["environment"]["cpu"]
    json.dumps(res, allow_nan=False)
    # swapped: the same difference, seen from the other side
    back = compare_artifacts(artifacts["wide"], artifacts["narrow"], runs=60, warmup=5)
    assert back["latency"]["verdict"] == "B faster" and back["latency"]["ci95"][1] < 1


def test_artifact_against_itself_is_no_difference(artifacts):
    res = compare_artifacts(artifacts["narrow"], artifacts["narrow"], runs=400, warmup=20)
    lo, hi = res["latency"]["ci95"]
    # interleaved blocks keep the two sides alike; a busy shared machine may still shift one
    # side's median by a few percent, so allow a small margin around 1
    assert lo <= 1.1 and hi >= 0.9
    assert 0.8 < res["latency"]["ratio_b_over_a"] < 1.25
    assert res["size"] == {"ratio_b_over_a": 1.0, "verdict": "same size"}


def test_torch_artifacts_need_their_skeleton(artifacts):
    with pytest.raises(mo.ArtifactError, match="artifact A.*model_a="):
        compare_artifacts(artifacts["torch"], artifacts["narrow"], runs=2)
    res = compare_artifacts(artifacts["torch"], artifacts["narrow"], runs=20, warmup=2,
                            model_a=artifacts["narrow_model"], backend_b="onnxruntime")
    assert res["a"]["backend"] == "torch" and res["b"]["backend"] == "onnxruntime"


def test_cli_compares_torch_artifacts_with_the_architecture_named(tmp_path, capsys):
    from modelopt_demo.models import SmallCNN

    torch.manual_seed(0)
    s = mo.Session(SmallCNN(width=16).eval(), (torch.randn(1, 1, 8, 8),), progress=False)
    a = s.original.save(tmp_path / "orig")
    s.apply("prune.structured", ratio=0.5, round_to=4)  # B's lineage reshapes the skeleton
    b = s.current.save(tmp_path / "pruned")
    argv = [str(a), str(b), "--runs", "20", "--warmup", "2", "--json",
            "--model", "modelopt_demo.models:SmallCNN"]
    assert run_compare(_args(*argv, "--model-kwargs", '{"width": 16}')) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["a"]["backend"] == res["b"]["backend"] == "torch"
    assert res["size"]["ratio_b_over_a"] < 0.5  # the pruned weights, loaded into their shape
    with pytest.raises(mo.ArtifactError, match="--model package.module:Class"):
        run_compare(_args(str(a), str(b)))
    with pytest.raises(mo.ConfigError, match="unexpected keyword argument 'widht'"):
        run_compare(_args(*argv, "--model-kwargs", '{"widht": 16}'))


def test_bad_inputs_name_the_file(artifacts, tmp_path):
    missing = tmp_path / "no-such-artifact"
    with pytest.raises(mo.ArtifactError, match="artifact B.*no-such-artifact"):
        compare_artifacts(artifacts["narrow"], missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(mo.ArtifactError, match="artifact A.*empty"):
        compare_artifacts(tmp_path / "empty", artifacts["narrow"])
    with pytest.raises(mo.FormatError, match="artifact A"):
        compare_artifacts(artifacts["narrow"], artifacts["wide"], backend_a="torch")
    with pytest.raises(mo.ConfigError, match="runs"):
        compare_artifacts(artifacts["narrow"], artifacts["wide"], runs=1)


def test_cli_table_and_verdict(artifacts, capsys):
    assert run_compare(_args(str(artifacts["narrow"]), str(artifacts["wide"]), "--runs",
                             "40", "--warmup", "3")) == 0
    out = capsys.readouterr().out
    assert "p50 ms" in out and "size MB" in out and "onnxruntime" in out
    assert "verdict: B is slower" in out and "Size: B larger." in out
    assert run_compare(_args(str(artifacts["narrow"]), str(artifacts["wide"]), "--runs",
                             "20", "--warmup", "1", "--backend", "onnxruntime",
                             "--json")) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["latency"]["verdict"] == "B slower" and res["runs"] == 20


def test_modelopt_compare_command(artifacts, capsys):
    from modelopt_core.cli import main

    assert main(["compare", str(artifacts["narrow"]), str(artifacts["wide"]), "--runs", "20",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency"]["verdict"] == "B slower"
    assert main(["compare", str(artifacts["narrow"]), "/nonexistent/b"]) == 1
    assert "/nonexistent/b" in capsys.readouterr().err


times = st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(times, times, st.integers(0, 2**16))
def test_bootstrap_ci_contains_the_estimate(a, b, seed):
    point, lo, hi = bootstrap_ratio_ci(a, b, n=200, seed=seed)
    assert point == pytest.approx(float(np.median(b) / np.median(a)))
    assert lo <= point <= hi
    assert bootstrap_ratio_ci(a, b, n=200, seed=seed) == (point, lo, hi)  # seeded


@settings(max_examples=30, deadline=None)
@given(st.floats(min_value=1e-3, max_value=1e3), st.integers(1, 30))
def test_bootstrap_of_identical_samples_is_degenerate_at_one(v, n):
    assert bootstrap_ratio_ci([v] * n, [v] * n, n=200) == (1.0, 1.0, 1.0)


def test_bootstrap_rejects_bad_samples():
    for a, b in (([], [1.0]), ([1.0, 0.0], [1.0]), ([1.0], [float("nan")])):
        with pytest.raises(mo.DataError):
            bootstrap_ratio_ci(a, b)
