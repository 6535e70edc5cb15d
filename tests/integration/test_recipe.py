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
    art = mo.load_artifact(tmp_path / "out" / "artifact")
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
