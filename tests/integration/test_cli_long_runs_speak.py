"""Issue 26 item 5, read as a user reads the command's output: a long run says how it goes
(one line per training epoch and per search trial, with elapsed time and ETA, ``--no-progress``
or not), and ``modelopt run`` stops before building (and training) the model when a step of
the recipe cannot run on this machine; ``--dry-run`` exits non-zero for such a recipe."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import modelopt_core as mo
from modelopt_core.cli import main

HELPER = '''
import pathlib

import torch
from modelopt_demo.data import accuracy_fn, load_digits_data
from modelopt_demo.models import SmallCNN


def model(marker=None):
    if marker:  # the factory was called: the model was built (a real factory trains here)
        pathlib.Path(marker).write_text("built")
    torch.manual_seed(0)
    return SmallCNN(width=8)


def data():
    torch.set_num_threads(1)
    d = load_digits_data()
    return {"calibration_data": d.calibration[:4], "train_data": d.train[:6],
            "eval_fn": accuracy_fn(d.test)}
'''

EPOCH_LINE = re.compile(r"^  train epoch (\d+)/(\d+): loss \d+\.\d+ \(best loss \d+\.\d+\); "
                        r"elapsed \d+:\d\d, ETA \d+:\d\d$")


def _recipe(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    (tmp_path / "lr_helper.py").write_text(HELPER)
    path = tmp_path / name
    path.write_text('model = "lr_helper:model"\nexample_inputs = [[1, 1, 8, 8]]\n'
                    'data = "lr_helper:data"\n' + text)
    return path


def _tensorrt_missing() -> None:
    ok, _ = mo.get_plugin_manager().get("exporter", "tensorrt").cls.availability()
    if ok:
        pytest.skip("TensorRT runs on this machine: no step of the recipe is unavailable")


def test_a_step_that_cannot_run_here_stops_the_run_before_the_model_is_built(tmp_path,
                                                                               capsys):
    _tensorrt_missing()
    marker = tmp_path / "built.txt"
    path = _recipe(tmp_path, f'model_kwargs = {{marker = "{marker}"}}\n[train]\nepochs = 30\n'
                             '[[steps]]\nexport = "onnx"\n[[steps]]\nexport = "tensorrt"\n'
                             'fp16 = true\n[compare]\nbackends = ["torch", "onnxruntime"]\n')
    assert main(["run", str(path), "--no-progress", "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "modelopt run: BackendUnavailableError" in err
    assert "recipe step 2 (export 'tensorrt'): exporter 'tensorrt'" in err
    assert "nothing was run (the model was not built or trained)" in err
    assert "train epoch" not in err and "training" not in captured.out
    assert not marker.exists() and not (tmp_path / "out").exists()

    # --dry-run says the same before anyone waits: the plan, the line naming the step, exit 1
    assert main(["run", str(path), "--dry-run"]) == 1
    captured = capsys.readouterr()
    assert "not available here: recipe step 2 (export 'tensorrt'): exporter 'tensorrt'" \
        in captured.out
    assert "recipe valid but not runnable here (nothing was run)" in captured.out
    assert "cannot run on this machine" in captured.err
    assert main(["run", str(path), "--dry-run", "--json"]) == 1
    plan = json.loads(capsys.readouterr().out)
    assert plan["valid"] and not plan["runnable"] and not plan["ok"]
    assert plan["unavailable"][0].startswith("recipe step 2 (export 'tensorrt')")
    assert not marker.exists()


def test_the_shipped_server_recipe_fails_its_dry_run_without_tensorrt(capsys):
    _tensorrt_missing()
    recipe = Path(__file__).resolve().parents[2] / "docs" / "recipes" / "detect-server.toml"
    assert main(["run", str(recipe), "--dry-run"]) == 1
    assert "not available here: recipe step 2 (export 'tensorrt')" in capsys.readouterr().out


def test_no_progress_training_says_one_line_per_epoch(tmp_path, capsys):
    path = _recipe(tmp_path, '[train]\nepochs = 3\nlr = 0.003\n[compare]\nbackends = ["torch"]\n'
                             'profilers = ["size"]\n')
    assert main(["run", str(path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    lines = [m for m in map(EPOCH_LINE.match, err.splitlines()) if m]
    assert [(m[1], m[2]) for m in lines] == [("1", "3"), ("2", "3"), ("3", "3")], err
    # --quiet: results and errors only
    assert main(["run", str(path), "--quiet"]) == 0
    assert "train epoch" not in capsys.readouterr().err


def test_a_search_says_one_line_per_trial(tmp_path, capsys):
    pytest.importorskip("optuna")
    path = _recipe(tmp_path, '[train]\nepochs = 2\n[search]\ntarget = "torch"\ntrials = 2\n'
                             'threads = 1\nmax_accuracy_drop = 100.0\n'
                             '[search.space]\nprune = ["none"]\n')
    out = tmp_path / "o"
    assert main(["optimize", str(path), "--no-progress", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    trials = re.findall(r"^  trial (\d+) \[(\d)/2\]: .+: .+; elapsed \d+:\d\d, ETA (\S+)$",
                        captured.err, re.M)
    assert [t[1] for t in trials] == ["1", "2"], captured.err
    assert "; best: trial " in captured.err and "ms)" in captured.err
    assert len([x for x in captured.err.splitlines() if "train epoch" in x]) == 2
    # the final artifact has the name every command gives it
    assert (out / "final-artifact").resolve() == (out / "best").resolve()
    assert "best/, final-artifact/" in captured.out
