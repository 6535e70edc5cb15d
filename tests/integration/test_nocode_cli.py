"""A first step without Python (issue 26 item 9): ``modelopt optimize --model m.onnx
--calibration calib.npz`` on an ONNX model the project did not export (built by hand with
onnx.helper), read as a user would: exit 0, best/ and final-artifact/ written, the report names
the targets (every runtime here that takes ONNX) and the accuracy metric, and best/ runs on
the runtime it carries. The same with --eval labels, with a torch.export program and a
``module:factory``; ``modelopt run --model`` runs the default pipeline; bad input is one
typed error line naming the file or field."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from modelopt_search.space import targets
from nocode_files import (INPUT, exported_program, factory_module, hand_built_onnx,
                          onnx_labels, samples)

import modelopt_core as mo
from modelopt_core.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("nocode_cli")
    m = hand_built_onnx(d / "m.onnx")
    np.savez(d / "calib.npz", pixels=samples(32))
    x = samples(24, seed=5)
    np.savez(d / "eval.npz", pixels=x, labels=onnx_labels(m, x))
    return d


def _cli(*argv, cwd=None):
    """The real console script, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "modelopt_core", *map(str, argv)],
                          capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def test_optimize_an_onnx_file_with_no_recipe(files, tmp_path):
    out = tmp_path / "D"
    r = _cli("optimize", "--model", files / "m.onnx", "--calibration", files / "calib.npz",
             "--trials", 3, "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "best").is_dir() and (out / "final-artifact").is_dir()
    here = sorted(targets(source="onnx"))  # every runtime here that takes ONNX
    assert {"onnxruntime", "openvino"} <= set(here) and "torch" not in here
    md = (out / "report.md").read_text()
    assert f"modelopt optimize: {'/'.join(here)}, latency" in md
    assert "original (onnx on onnxruntime)" in md
    assert "accuracy: top-1 agreement with the original model (%) on 8 held-out calibration " \
           "samples" in md
    assert "prune.structured left out of the search's prune stage" in md
    assert "accuracy: top-1 agreement with the original model" in r.stdout
    rows = json.loads((out / "trials.json").read_text())["trials"]
    done = [t for t in rows if t.get("state") == "complete"]
    assert len(done) == 3 and {t["backend"] for t in done} >= {"onnxruntime", "openvino"}
    assert not any(t["recipe"].startswith("export onnx") for t in done)  # it is ONNX already
    best = json.loads((out / "best.json").read_text())
    art = mo.load_artifact(out / "best")
    assert art.props.runtime == best["recipe"]["backend"]  # carried: runs as measured
    x = torch.from_numpy(samples(4, seed=9))
    with mo.load_runner(art) as run, mo.load_runner(mo.load_artifact(files / "m.onnx")) as ref:
        assert type(run).__module__.split(".")[0] == {
            "onnxruntime": "modelopt_ort", "openvino": "modelopt_openvino"}.get(
                art.props.runtime, type(run).__module__.split(".")[0])
        assert (run(x).argmax(1) == ref(x).argmax(1)).float().mean() >= 0.75


def test_optimize_with_eval_labels_reports_top1(files, tmp_path, capsys):
    out = tmp_path / "E"
    code = main(["optimize", "--model", str(files / "m.onnx"), "--calibration",
                 str(files / "calib.npz"), "--eval", str(files / "eval.npz"), "--trials", "2",
                 "--target", "onnxruntime", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "trials.json").read_text())
    assert data["target"] == ["onnxruntime"] and data["baseline"]["accuracy"] == 100.0
    assert "accuracy: top-1 accuracy (%) on 24 labelled samples" in \
        (out / "report.md").read_text()


def test_optimize_a_pt2_program_and_a_factory(files, tmp_path, capsys, monkeypatch):
    pt2 = exported_program(tmp_path / "m.pt2")
    code = main(["optimize", "--model", str(pt2), "--calibration", str(files / "calib.npz"),
                 "--trials", "2", "--target", "onnxruntime,openvino", "--out",
                 str(tmp_path / "P"), "--no-progress"])
    said = capsys.readouterr()
    assert code == 0, said.err
    md = (tmp_path / "P" / "report.md").read_text()
    assert "original (torch fp32)" in md and "export onnx" in md
    assert (tmp_path / "P" / "final-artifact").is_dir()
    monkeypatch.chdir(tmp_path)  # the working directory is importable, as for recipes
    ref = factory_module(tmp_path)
    code = main(["optimize", "--model", ref, "--model-kwargs", '{"width": 4}',
                 "--calibration", str(files / "calib.npz"), "--trials", "1", "--target",
                 "onnxruntime", "--out", "F", "--no-progress", "--json"])
    got = json.loads(capsys.readouterr().out)
    assert code == 0 and got["best"]["backend"] == "onnxruntime"
    assert (tmp_path / "F" / "best").is_dir()


def test_run_an_onnx_file_with_the_default_pipeline(files, tmp_path, capsys):
    np.save(tmp_path / "y.npy", onnx_labels(files / "m.onnx", np.load(files / "calib.npz")[
        INPUT]))
    code = main(["run", "--model", str(files / "m.onnx"), "--calibration",
                 str(files / "calib.npz"), "--eval", str(tmp_path / "y.npy"), "--out",
                 str(tmp_path / "R"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    md = (tmp_path / "R" / "report.md").read_text()
    assert "1:onnx.quantize_static" in md and "| original | onnx | onnxruntime |" in md
    assert "accuracy: top-1 accuracy (%) on 8 labelled samples" in md
    assert (tmp_path / "R" / "final-artifact").is_dir()
    assert main(["run", "--model", str(files / "m.onnx"), "--calibration",
                 str(files / "calib.npz"), "--dry-run"]) == 0
    assert "apply onnx.quantize_static" in capsys.readouterr().out


def test_run_a_recipes_steps_on_an_onnx_file(files, tmp_path, capsys):
    steps = tmp_path / "steps.toml"
    steps.write_text('[[steps]]\napply = "onnx.optimize"\n[[steps]]\nexport = "openvino"\n'
                     '[output]\nfinal = "last"\n')
    code = main(["run", "--model", str(files / "m.onnx"), "--calibration",
                 str(files / "calib.npz"), str(steps), "--out", str(tmp_path / "S"),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    md = (tmp_path / "S" / "report.md").read_text()
    # [compare] backends default to the reference runtime of each format the steps make
    assert "| 2:openvino.from_onnx | openvino | openvino |" in md
    assert "| 1:onnx.optimize | onnx | onnxruntime |" in md
    steps.write_text('model = "x:y"\n[[steps]]\napply = "onnx.optimize"\n')
    assert main(["run", "--model", str(files / "m.onnx"), "--calibration",
                 str(files / "calib.npz"), str(steps)]) == 1
    assert "drop ['model'] from it, or run it without --model" in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["optimize", "--model", "{d}/nope.onnx", "--calibration", "{d}/calib.npz"],
     r"ConfigError: --model .*nope\.onnx: no such file"),
    (["optimize", "--model", "{d}/m.onnx"], r"ConfigError: --model .*m\.onnx needs "
                                           r"--calibration"),
    (["optimize", "--calibration", "{d}/calib.npz", "docs/recipes/digits-search.toml"],
     r"ConfigError: --calibration go\(es\) with --model"),
    (["optimize", "docs/recipes/digits-search.toml", "--model", "{d}/m.onnx",
      "--calibration", "{d}/calib.npz"], r"SearchError: optimize: give a recipe .* or "
                                         r"--model, not both"),
    (["optimize", "--model", "{d}/m.onnx", "--calibration", "{d}/bad_name.npz"],
     r"DataError: --calibration .*bad_name\.npz: arrays \['image'\] .*\['pixels'\]"),
    (["optimize", "--model", "{d}/m.onnx", "--calibration", "{d}/bad_dtype.npz"],
     r"DataError: --calibration .*bad_dtype\.npz: array 'pixels': dtype uint8"),
    (["run", "--model", "{d}/m.onnx", "--calibration", "{d}/calib.npz", "--eval",
      "{d}/short.npy"], r"DataError: --eval .*short\.npy: expected one label per sample, "
                        r"shape \(32,\), got \(5,\)"),
    (["optimize", "--model", "{d}/m.onnx", "--calibration", "{d}/calib.npz", "--target",
      "torch"], r"SearchError: optimize: unknown target 'torch' \(torch: no available "
                r"exporter chain from onnx\)"),
    (["run"], r"ConfigError: run: give a recipe, or a model"),
])
def test_bad_input_is_one_typed_line(files, tmp_path, capsys, argv, match):
    np.savez(tmp_path / "bad_name.npz", image=samples(16))
    np.savez(tmp_path / "bad_dtype.npz", pixels=(samples(16) > 0).astype(np.uint8))
    np.save(tmp_path / "short.npy", np.zeros(5, np.int64))
    for name in ("m.onnx", "calib.npz"):
        (tmp_path / name).write_bytes((files / name).read_bytes())
    code = main([a.format(d=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    import re

    assert re.search(match, err), err
