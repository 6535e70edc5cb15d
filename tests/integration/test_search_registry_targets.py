"""Search targets come from the registry (issue 25): every registered runtime whose backend is
the reference evaluator of a format, available here, with an available exporter chain from
torch, is a target: TFLite included, with no table naming it; a third-party runtime joins the
same way (its format's precision optimizers are found by their declared stage)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import trained_digits_cnn
from modelopt_search.errors import SearchError
from modelopt_search.space import check_target, default_space, targets, thread_option_of

import modelopt_core as mo
from modelopt_demo.data import accuracy_fn


def test_targets_are_the_available_reference_runtimes():
    have = targets()
    assert {"torch", "onnxruntime", "openvino"} <= set(have)
    assert have["onnxruntime"] == ("onnx", "onnxruntime")
    pm = mo.get_plugin_manager()
    for name, (fmt, backend) in have.items():
        cls = pm.get("backend", backend).cls
        assert fmt in cls.reference_for and cls.availability()[0]
        assert thread_option_of(name) == cls.thread_option
    if pm.get("backend", "tflite").cls.availability()[0]:
        assert have["tflite"] == ("tflite", "tflite")
        assert default_space("tflite")["precision"] == ["none"]  # no optimizer takes tflite
    with pytest.raises(SearchError, match="unknown target 'nope'.*pick one of"):
        check_target("nope")
    if not pm.get("backend", "coreml").cls.availability()[0]:
        with pytest.raises(SearchError, match="coreml: .*macOS"):
            check_target("coreml")


def test_a_third_party_precision_optimizer_joins_its_formats_target_by_its_stage():
    pm = mo.PluginManager()

    class NoopPrecision(mo.Optimizer):
        """A precision step on tflite artifacts (does nothing; registry test)."""

        name = "thirdparty.tflite_precision"
        accepts = ("tflite",)
        stage = "precision"

        def apply(self, artifact, ctx):
            return artifact.evolve(step=self.step())

    import types

    mod = types.ModuleType("thirdparty")
    mod.register_optimizers = mo.hookimpl(lambda register: register(NoopPrecision))
    pm.register_plugin(mod, name="thirdparty", distribution="thirdparty-dist")
    if "tflite" not in targets(pm):
        pytest.skip("the tflite runtime is not available here")
    assert default_space("tflite", pm)["precision"] == ["none", "thirdparty.tflite_precision"]
    # the built-in targets keep their own first choices
    assert default_space("openvino", pm)["precision"] == ["none", "openvino.quantize"]


def test_optimize_measures_tflite_as_a_target(tmp_path):
    pytest.importorskip("ai_edge_litert")
    m, d = trained_digits_cnn()
    s = mo.Session(m, (d.example,), calibration_data=d.calibration[:4],
                   eval_fn=accuracy_fn(d.test), progress=False)
    res = s.optimize(target="tflite", budget_trials=2, out_dir=tmp_path, threads=1,
                     space={"prune": ["none"]})
    rows = json.loads((tmp_path / "trials.json").read_text())["trials"]
    done = [r for r in rows if r.get("state") == "complete"]
    assert done and all(r["backend"] == "tflite" for r in done)
    assert all(r.get("latency_p50_ms", 0) > 0 for r in done)
    assert res.best is not None and res.best.format == "tflite"
    assert res.best_recipe["backend_options"].get("num_threads") in (None, 1)
    x = d.example
    with s.runner("tflite", res.best) as r:
        assert torch.isfinite(r(x)).all()
