"""`modelopt run RECIPE`: a pipeline from a file, and clear errors for bad recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import modelopt_core as mo
from modelopt_core.cli import main
from modelopt_demo.models import SmallCNN

DOCS = Path(__file__).resolve().parents[2] / "docs" / "recipes"


def test_recipe_runs_steps_and_writes_outputs(tmp_path):
    torch.manual_seed(0)
    save_file(SmallCNN(width=8).state_dict(), str(tmp_path / "w.safetensors"))
    recipe = {
        "model": "modelopt_demo.models:SmallCNN", "model_kwargs": {"width": 8},
        "weights": "w.safetensors", "example_inputs": [[1, 1, 8, 8]],
        "data": "modelopt_demo.recipes:digits_data",
        "steps": [{"export": "onnx"}, {"apply": "onnx.quantize_static", "per_channel": True}],
        "compare": {"backends": ["torch", "onnxruntime"], "profilers": ["size", "accuracy"]},
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    assert main(["run", str(tmp_path / "r.json"), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["rows"]
    assert [r["step"] for r in rows] == ["original", "1:onnx", "2:onnx.quantize_static"]
    art = mo.load_artifact(tmp_path / "out" / "final-artifact")
    assert art.format == "onnx"


def test_shipped_recipe_is_valid():
    r = mo.recipe.load_recipe(DOCS / "digits-int8.toml")
    assert r["steps"][0] == {"export": "onnx"}


@pytest.mark.parametrize("recipe, match", [
    ({"model": "x:y"}, "missing required key 'example_inputs'"),
    ({"model": "x:y", "example_inputs": [[1, 3]], "stepz": []}, "did you mean 'steps'"),
    ({"model": "x:y", "example_inputs": [[0, 3]]}, "example_inputs must be a list of shapes"),
    ({"model": "x:y", "example_inputs": [[1, 3]], "steps": [{"run": "onnx"}]}, "step 1 needs"),
])
def test_bad_recipes_name_the_field(tmp_path, recipe, match):
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    with pytest.raises(mo.ConfigError, match=match):
        mo.recipe.load_recipe(tmp_path / "r.json")


def test_bad_step_config_names_the_step(tmp_path, capsys):
    recipe = {"model": "modelopt_demo.models:SmallCNN", "example_inputs": [[1, 1, 8, 8]],
              "steps": [{"export": "onnx"}, {"apply": "onnx.optimize", "passes": ["nope"]}]}
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    assert main(["run", str(tmp_path / "r.json"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "recipe step 2" in err and "nope" in err


# the detection recipes train for minutes (mobile) or need TensorRT on a GPU (server): they are
# dry-run by tests/integration/test_detection.py; the search recipe is run by test_search.py
@pytest.mark.parametrize("recipe", [p for p in sorted(DOCS.glob("*.toml"))
                                    if not p.name.startswith(("detect-", "digits-search"))],
                         ids=lambda p: p.name)
def test_every_shipped_recipe_runs(recipe, tmp_path, capsys):
    """Every recipe under docs/recipes runs end to end; the bar for digits-int8.toml: exit 0
    with accuracy >= 95 on every row (the recipe trains the model first)."""
    assert main(["run", str(recipe), "--json", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["rows"]
    assert rows and not any("error" in r for r in rows), rows
    if recipe.name == "digits-int8.toml":
        assert [r["step"] for r in rows] == ["original", "1:onnx", "2:onnx.optimize",
                                             "3:onnx.quantize_static"]
    if any("accuracy" in r for r in rows):
        assert all(r["accuracy"] >= 95 for r in rows), [r["accuracy"] for r in rows]
    assert report["environment"]["cores"] >= 1
    assert (tmp_path / "report.md").is_file()
    assert (tmp_path / "final-artifact" / "manifest.json").is_file()
    assert (tmp_path / "report.html").is_file()


def test_dry_run_checks_without_running(tmp_path, capsys):
    assert main(["run", str(DOCS / "digits-int8.toml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "recipe OK (nothing was run)" in out and "onnx.quantize_static" in out
    assert not (tmp_path / "modelopt-recipe-out").exists()


def _write(tmp_path, recipe, name="r.json"):
    (tmp_path / name).write_text(json.dumps(recipe))
    return tmp_path / name


BASE = {"model": "modelopt_demo.models:SmallCNN", "example_inputs": [[1, 1, 8, 8]]}


@pytest.mark.parametrize("extra, match", [
    ({"compare": {"backend": ["torch"]}}, r"\[compare\]: unknown key\(s\) 'backend' \(did you "
                                          r"mean 'backends'\?\)"),
    ({"output": {"folder": "x"}}, r"\[output\]: unknown key\(s\) 'folder'.*Valid keys: dir"),
    ({"compare": {"backends": ["onnxruntime"]}}, "backend 'onnxruntime' runs \\['onnx'\\]"),
    ({"steps": [{"apply": "quantize.static"}]}, "needs \\['calibration_data'\\]"),
    ({"steps": [{"apply": "onnx.optimize"}]}, "add an export step before it"),
    ({"steps": [{"export": "openvino-typo"}]}, "no exporter chain"),
    ({"train": {"epoch": 3}, "data": "modelopt_demo.recipes:digits_data"}, "did you mean 'epochs'"),
    ({"train": {"epochs": 3}}, "\\[train\\] needs training data"),
    ({"compare": {"profilers": ["latency"], "profiler_options": {"latency": {"warm": 1}}}},
     "warm"),
])
def test_dry_run_finds_problems_before_anything_runs(tmp_path, extra, match):
    path = _write(tmp_path, {**BASE, **extra})
    with pytest.raises(mo.ConfigError, match=match):
        mo.recipe.plan_recipe(path)


def test_dry_run_names_a_component_this_machine_cannot_run(tmp_path, capsys):
    pm = mo.get_plugin_manager()
    ok, why = pm.get("backend", "tensorrt").cls.availability()
    if ok:
        pytest.skip("TensorRT runs on this machine")
    path = _write(tmp_path, {**BASE, "steps": [{"export": "onnx"}],
                             "compare": {"backends": ["torch", "tensorrt"]}})
    # the recipe is valid (it runs on a GPU machine); the plan says what this one lacks
    lines = mo.recipe.plan_recipe(path)
    assert lines[-1] == f"not available here: [compare] backends: backend 'tensorrt' ({why})"
    assert main(["run", str(path), "--dry-run"]) == 1  # valid, but it cannot run here
    assert "not available here: [compare] backends: backend 'tensorrt'" in \
        capsys.readouterr().out


def test_recipe_folder_is_importable_for_the_model(tmp_path, capsys):
    (tmp_path / "my_models.py").write_text(
        "import torch\n\ndef tiny():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
        "torch.nn.Linear(64, 10))\n")
    path = _write(tmp_path, {"model": "my_models:tiny", "example_inputs": [[1, 1, 8, 8]],
                             "steps": [{"export": "onnx"}],
                             "compare": {"backends": ["torch", "onnxruntime"],
                                         "profilers": ["size"], "title": "tiny"}})
    assert main(["run", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "1:onnx" in out and "step 1" not in out  # --quiet: results only
