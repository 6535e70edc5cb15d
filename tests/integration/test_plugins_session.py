"""The Session driving the built-in plugins: history semantics, lineage provenance, failures
that leave the history alone, warnings in the lineage, compare over every artifact/backend, and
save -> load -> continue."""

from __future__ import annotations

import copy
import json
import types

import pytest
import torch
from helpers import onnx_bytes, state_hash

import modelopt_core as mo
from modelopt_demo.data import accuracy_fn
from modelopt_demo.models import SmallCNN


@pytest.fixture(scope="module")
def model(digits):
    from modelopt_core.training import TrainConfig, fit

    torch.manual_seed(0)
    m = SmallCNN(width=8)
    fit(m, digits.train, config=TrainConfig(epochs=2, lr=3e-3), ctx=mo.Context(show_progress=False))
    return m.eval()


@pytest.fixture(scope="module")
def pipeline(model, digits):
    """torch -> prune.structured -> onnx -> onnx.quantize_static, run once for the module."""
    before = state_hash(model)
    s = mo.Session(model, (digits.example,), calibration_data=digits.calibration[:4],
                   eval_fn=accuracy_fn(digits.test), progress=False)
    s.apply("prune.structured", ratio=0.25)
    s.export("onnx")
    s.apply("onnx.quantize_static", calibration_batches=4)
    assert state_hash(model) == before
    return s


def test_history_original_current(pipeline, model):
    s = pipeline
    assert [a.format for a in s.history] == ["torch", "torch", "onnx", "onnx"]
    assert s.original is s.history[0] and s.current is s.history[-1]
    assert s.original.model is model  # the user's object, untouched (hash checked in fixture)
    for prev, nxt in zip(s.history, s.history[1:]):
        assert nxt.lineage[:-1] == prev.lineage and len(nxt.lineage) == len(prev.lineage) + 1
    steps = s.current.lineage
    assert [st.component for st in steps] == ["original", "prune.structured", "onnx",
                                              "onnx.quantize_static"]
    assert [st.plugin for st in steps[1:]] == ["prune", "onnx", "onnx"]
    assert all(st.version == mo.__version__ and st.duration_s > 0 for st in steps[1:])
    assert steps[1].config["ratio"] == 0.25 and steps[3].config["calibration_batches"] == 4
    with pytest.raises(AttributeError):
        s.history.append(s.original)  # a tuple: the history is read-only


def test_compare_profiles_every_artifact_on_matching_backends(pipeline, tmp_path):
    report = pipeline.compare(backends=["torch", "onnxruntime", "tensorrt"],
                              profilers=["latency", "size", "accuracy"],
                              profiler_options={"latency": {"warmup": 1, "iterations": 3}})
    rows = report.rows
    pairs = [(r["step"], r["backend"]) for r in rows]
    assert pairs == [("original", "torch"), ("1:prune.structured", "torch"),
                     ("2:onnx", "onnxruntime"), ("2:onnx", "tensorrt"),
                     ("3:onnx.quantize_static", "onnxruntime"),
                     ("3:onnx.quantize_static", "tensorrt")]
    for r in rows:
        if r["backend"] == "tensorrt":
            assert r["error"].startswith("unavailable:") and "tensorrt" in r["error"]
            continue
        assert "error" not in r, r
        assert r["accuracy"] > 80 and r["latency_p50_ms"] > 0 and r["speedup"] > 0
    assert rows[0]["speedup"] == 1.0 and rows[0]["accuracy_delta"] == 0
    # INT8 weights vs FP32 ONNX (a tiny net: scales and graph overhead weigh in)
    assert rows[2]["size_mb"] / rows[4]["size_mb"] > 1.5
    assert rows[1]["params"] < rows[0]["params"]  # pruned
    md = report.to_markdown(tmp_path / "r.md")
    assert "onnx.quantize_static" in md and json.loads(report.to_json())["rows"] == rows


def test_runner_default_is_current_and_matches_shape(pipeline, digits):
    x = digits.test[0][0]
    with pipeline.runner("onnxruntime") as q, pipeline.runner("torch", pipeline.original) as t:
        yq, yt = q(x), t(x)
    assert yq.shape == yt.shape == (len(x), 10) and yq.dtype == torch.float32
    assert (yq.argmax(1) == yt.argmax(1)).float().mean() > 0.9


def _fresh_pm_with(*classes) -> mo.PluginManager:
    pm = mo.PluginManager()
    mod = types.ModuleType("local_test_plugin")
    mod.register_optimizers = mo.hookimpl(lambda register: [register(c) for c in classes])
    pm.register_plugin(mod, name="local", distribution="tests", version="9.9")
    return pm


class Explodes(mo.Optimizer):
    """Fails half way through (after copying)."""

    name = "test.explodes"

    def apply(self, artifact, ctx):
        copy.deepcopy(artifact.model)
        raise mo.NumericalError("test.explodes: layer 'features.0.0' produced NaN")


class SameArtifact(mo.Optimizer):
    """Breaks the contract: returns its input."""

    name = "test.same"

    def apply(self, artifact, ctx):
        return artifact


class Warns(mo.Optimizer):
    """Copies the model and records a warning."""

    name = "test.warns"

    def apply(self, artifact, ctx):
        ctx.warn("test.warns: layer 'classifier.3' kept in float")
        return artifact.evolve(step=self.step(notes=["did nothing"]),
                               model=copy.deepcopy(artifact.model))


def test_failed_steps_leave_history_and_model_alone(model, digits):
    pm = _fresh_pm_with(Explodes, SameArtifact, Warns)
    before = state_hash(model)
    s = mo.Session(model, (digits.example,), plugins=pm, progress=False)
    with pytest.raises(mo.NumericalError, match="features.0.0"):
        s.apply("test.explodes")
    with pytest.raises(mo.ModeloptError, match="broke the contract"):
        s.apply("test.same")
    assert len(s.history) == 1 and state_hash(model) == before
    art = s.apply("test.warns")
    assert art.lineage[-1].notes == ("did nothing", "test.warns: layer 'classifier.3' kept in "
                                     "float")
    assert (art.lineage[-1].plugin, art.lineage[-1].version) == ("local", "9.9")


def test_save_load_and_continue(pipeline, model, digits, tmp_path):
    pruned, onnx_art = pipeline.history[1], pipeline.history[2]
    p_torch = pruned.save(tmp_path / "pruned")
    p_onnx = onnx_art.save(tmp_path / "fp32")
    # a pruned model loads into the unpruned architecture: shapes come from the file
    back = mo.load_artifact(p_torch, model=SmallCNN(width=8))
    assert state_hash(back.model) == state_hash(pruned.model)
    loaded = mo.load_artifact(p_onnx)
    assert onnx_bytes(loaded.model) == onnx_bytes(onnx_art.model)
    s = mo.Session(loaded, (digits.example,), calibration_data=digits.calibration[:2],
                   progress=False)
    q = s.apply("onnx.quantize_dynamic")
    assert [st.component for st in q.lineage][-3:] == ["onnx", "load", "onnx.quantize_dynamic"]
    x = digits.test[0][0]
    with s.runner("onnxruntime", loaded) as r1, pipeline.runner("onnxruntime", onnx_art) as r0:
        torch.testing.assert_close(r1(x), r0(x), rtol=0, atol=0)


def test_context_export_runs_the_chain_without_touching_history():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    s = mo.Session(net, (torch.randn(2, 4),), progress=False)
    art = s.context().export(s.current, "onnx", check_numerics=False)
    assert art.format == "onnx" and len(s.history) == 1
    with pytest.raises(mo.ConfigError, match="bad_option"):
        s.context().export(s.current, "onnx", bad_option=1)
