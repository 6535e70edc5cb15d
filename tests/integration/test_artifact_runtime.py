"""Issue 26, item 1: the deployable artifact carries its runtime (backend + options) as typed
properties, and runners, `modelopt compare`, `modelopt serve` (so `bench-serve` against it)
use them unless told otherwise: a saved best is measured the same way everywhere."""

from __future__ import annotations

import json
import urllib.request

import pytest
import torch
from helpers import trained_digits_cnn

import modelopt_core as mo
from modelopt_demo.data import accuracy_fn

#: the OpenVINO options the tests carry: a thread count and a hint other than the default
OV_OPTIONS = {"inference_num_threads": 1, "performance_hint": "LATENCY"}


@pytest.fixture(scope="module")
def digits():
    return trained_digits_cnn(epochs=2)


@pytest.fixture(scope="module")
def ov_art(digits):
    m, d = digits
    s = mo.Session(m, (d.example,), progress=False)
    return s.export("openvino")


def test_props_round_trip_through_the_manifest_and_are_checked(ov_art, tmp_path):
    art = ov_art.with_runtime("openvino", OV_OPTIONS)
    assert ov_art.props.runtime is None  # a new artifact: the original is unchanged
    assert art.props.runtime == "openvino" and art.props.runtime_options == OV_OPTIONS
    assert art.lineage == ov_art.lineage and art.model is ov_art.model
    back = mo.load_artifact(art.save(tmp_path / "a"))
    assert back.props.runtime == "openvino" and back.props.runtime_options == OV_OPTIONS
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["props"]["runtime"] == "openvino"
    # hand-edited nonsense in the manifest is a typed error naming the field
    manifest["props"]["runtime_options"] = {"x": [1, 2]}
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(mo.ArtifactError, match="runtime_options"):
        mo.load_artifact(tmp_path / "a")
    with pytest.raises(mo.ArtifactError, match="backend must be a backend name"):
        ov_art.with_runtime("")


def test_a_later_step_drops_the_runtime(digits):
    m, d = digits
    s = mo.Session(m, (d.example,), calibration_data=d.calibration[:2], progress=False)
    onnx = s.export("onnx").with_runtime("onnxruntime", {"intra_op_num_threads": 1})
    after = onnx.evolve(step=mo.Step("x", "optimizer"))
    assert after.props.runtime is None and after.props.runtime_options is None


def test_runners_use_the_carried_runtime_unless_told_otherwise(ov_art, digits):
    pm = mo.get_plugin_manager()
    art = ov_art.with_runtime("openvino", OV_OPTIONS)
    assert pm.runtime_for(art) == ("openvino", OV_OPTIONS)
    # an option given wins over the carried one; another backend gets none of them
    assert pm.runtime_for(art, options={"inference_num_threads": 2}) == (
        "openvino", {**OV_OPTIONS, "inference_num_threads": 2})
    onnx = mo.Session(digits[0], (digits[1].example,), progress=False).export("onnx")
    assert pm.runtime_for(onnx) == ("onnxruntime", {})  # the format's reference backend
    with mo.load_runner(art) as r:  # no backend named: the carried one
        assert type(r).__module__.startswith("modelopt_openvino")
        out = r(digits[1].example)
    assert out.shape[-1] == 10
    with pytest.raises(mo.ConfigError, match="no_such_option"):
        mo.load_runner(art.with_runtime("openvino", {"no_such_option": 1}))


def test_search_best_carries_the_runtime_it_was_measured_on(digits, tmp_path):
    m, d = digits
    s = mo.Session(m, (d.example,), calibration_data=d.calibration[:4],
                   eval_fn=accuracy_fn(d.test), progress=False)
    res = s.optimize(target="openvino", budget_trials=2, out_dir=tmp_path / "o", threads=1,
                     space={"prune": ["none"], "precision": {"openvino": ["none"]}})
    rec = res.best_recipe
    assert rec["backend"] == "openvino" and rec["backend_options"]
    assert res.best.props.runtime == "openvino"
    assert res.best.props.runtime_options == rec["backend_options"]
    saved = mo.load_artifact(tmp_path / "o" / "best")
    assert (saved.props.runtime, saved.props.runtime_options) == ("openvino",
                                                                  rec["backend_options"])
    # the session's runner, with no backend, runs the best as the search measured it
    assert s.pm.runtime_for(saved) == ("openvino", rec["backend_options"])
    with s.runner(artifact=saved) as r:
        assert abs(accuracy_fn(d.test)(r) - res.best_row["accuracy"]) < 1e-6


def test_compare_measures_each_side_on_its_carried_runtime(ov_art, tmp_path, capsys):
    from modelopt_core.cli import main

    plain = ov_art.save(tmp_path / "plain")
    tuned = ov_art.with_runtime("openvino", OV_OPTIONS).save(tmp_path / "tuned")
    args = ["compare", str(plain), str(tuned), "--runs", "20", "--warmup", "2", "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["a"]["backend"] == res["b"]["backend"] == "openvino"
    assert res["a"]["backend_options"] == {} and res["b"]["backend_options"] == OV_OPTIONS
    # --backend-option overrides both sides' options
    assert main(args + ["--backend-option", "inference_num_threads=2"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["b"]["backend_options"] == {**OV_OPTIONS, "inference_num_threads": 2}
    assert res["a"]["backend_options"] == {"inference_num_threads": 2}
    # the table says which options each side ran with
    assert main(args[:-1]) == 0
    table = capsys.readouterr().out
    assert "inference_num_threads=1, performance_hint=LATENCY" in table and "(defaults)" in table
    assert main(args + ["--backend-option", "oops"]) == 1
    assert "--backend-option 'oops': expected KEY=VALUE" in capsys.readouterr().err


def test_serve_runs_the_carried_runtime_over_a_real_socket(ov_art, digits, tmp_path):
    from modelopt_serve.replicas import ReplicaPool
    from modelopt_serve.server import serve_in_thread

    path = ov_art.with_runtime("openvino", OV_OPTIONS).save(tmp_path / "best")
    pool = ReplicaPool(mo.load_artifact(path), workers=1, cores=2)
    try:  # the carried hint is kept; the thread count is serving's split, said so
        assert pool.backend == "openvino"
        assert pool.options == {"performance_hint": "LATENCY", "inference_num_threads": 2}
        assert any("measured with inference_num_threads=1" in n for n in pool.notes)
    finally:
        pool.close()
    x = digits[1].example
    with serve_in_thread(path, workers=1, max_batch_size=1) as url:  # no backend named
        ready = json.loads(urllib.request.urlopen(f"{url}/ready", timeout=30).read())
        assert ready["backend"] == "openvino"
        req = urllib.request.Request(f"{url}/predict", method="POST",
                                     data=json.dumps({"inputs": [x.tolist()]}).encode(),
                                     headers={"Content-Type": "application/json"})
        got = json.loads(urllib.request.urlopen(req, timeout=30).read())
    with mo.load_runner(mo.load_artifact(path)) as r:
        want = r(x)
    assert torch.allclose(torch.tensor(got["outputs"]).reshape(want.shape), want, atol=1e-4)


def test_compare_of_best_runs_it_as_the_searchs_confirmation_did(digits, tmp_path):
    """The search's end re-times its contenders side by side and writes the winner's recipe
    (its fastest thread count included) to best.json; best/ carries exactly that runtime, so
    `modelopt compare` of best/ against another artifact (here a hand-written ORT INT8, as
    the demo's final) measures best/ as the confirmation ranked it."""
    from modelopt_search.ab import compare_artifacts

    m, d = digits
    s = mo.Session(m, (d.example,), calibration_data=d.calibration[:4],
                   eval_fn=accuracy_fn(d.test), progress=False)
    out = tmp_path / "o"
    s.optimize(target=["onnxruntime", "openvino"], budget_trials=4, out_dir=out, threads=2,
               space={"prune": ["none"]})
    recipe = json.loads((out / "best.json").read_text())["recipe"]
    props = json.loads((out / "best" / "manifest.json").read_text())["props"]
    assert props["runtime"] == recipe["backend"]
    assert props.get("runtime_options", {}) == recipe["backend_options"]
    hand = mo.Session(m, (d.example,), calibration_data=d.calibration[:4], progress=False)
    hand.export("onnx")
    demo = hand.apply("onnx.quantize_static").with_runtime("onnxruntime",
                                                           {"intra_op_num_threads": 1})
    demo.save(tmp_path / "demo-final")
    res = compare_artifacts(tmp_path / "demo-final", out / "best", runs=20, warmup=2)
    assert (res["b"]["backend"], res["b"]["backend_options"]) == (recipe["backend"],
                                                                  recipe["backend_options"])
    assert (res["a"]["backend"], res["a"]["backend_options"]) == (
        "onnxruntime", {"intra_op_num_threads": 1})
    assert res["latency"]["verdict"] in ("B faster", "B slower", "no significant difference")
