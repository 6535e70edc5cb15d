"""Issue 26 item 7, read as a user reads the command's output: ``modelopt run`` on a search
recipe says to use ``modelopt optimize``; ``modelopt run`` writes report.html beside
report.md/report.json and its final artifact in ``final-artifact/`` as the demo does (the old
name ``artifact`` still works); a training bar says what its best is (metric or loss)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import modelopt_core as mo
from modelopt_core.cli import main
from modelopt_core.training import _Progress

DOCS = Path(__file__).resolve().parents[2] / "docs" / "recipes"


def test_run_on_a_search_recipe_says_use_optimize(capsys):
    recipe = DOCS / "digits-search.toml"
    for extra in ([], ["--dry-run"]):
        assert main(["run", str(recipe), *extra]) == 1
        err = capsys.readouterr().err
        assert "is a search recipe" in err and f"`modelopt optimize {recipe}`" in err, err
        assert "unknown key" not in err


def test_run_writes_the_reports_and_final_artifact_as_the_demo_does(tmp_path, capsys):
    torch.manual_seed(0)
    recipe = {"model": "modelopt_demo.models:SmallCNN", "model_kwargs": {"width": 8},
              "example_inputs": [[1, 1, 8, 8]], "steps": [{"export": "onnx"}],
              "compare": {"backends": ["torch", "onnxruntime"], "profilers": ["size"]}}
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "r.json"), "--no-progress", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    script = next(out.glob("plotly-*.min.js")).name  # report.html's script, beside it
    assert (f"wrote {out}/: report.md, report.json, report.html, {script}, final-artifact/"
            in said)
    html = (out / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "1:onnx" in html
    assert mo.load_artifact(out / "final-artifact").format == "onnx"
    assert mo.load_artifact(out / "artifact").format == "onnx"  # the old name still loads
    # the same names as the demo's (modelopt_demo/demo.py): report.* and final-artifact/
    from modelopt_core.outputs import FINAL, REPORTS

    assert FINAL == "final-artifact" and all((out / n).is_file() for n in REPORTS)


def test_a_training_bar_says_whether_its_best_is_the_metric_or_the_loss():
    ctx = mo.Context(show_progress=True)
    for has_metric, best, shown in ((True, 97.5, "best_metric=97.5"),
                                    (False, -0.25, "best_loss=0.2500")):
        bar = _Progress(10, ctx, 0, 0, has_metric=has_metric)
        try:
            bar.step(0, 0.3, best)
            text = str(bar.bar)  # the bar's line, as the terminal shows it
        finally:
            bar.close()
        assert shown in text and "best=" not in text, text


def test_optimize_on_a_pipeline_recipe_says_to_use_run(capsys):
    """The mirror of `modelopt run` on a search recipe (issue 26, item 7)."""
    from modelopt_core.cli import main

    recipe = Path(__file__).resolve().parents[2] / "docs" / "recipes" / "digits-int8.toml"
    assert main(["optimize", str(recipe), "--trials", "1"]) == 1
    err = capsys.readouterr().err
    assert "is a pipeline recipe" in err and f"modelopt run {recipe}" in err
