"""Issue 25's proof, as a user runs it: the third-party example plugin pip-installed (its folder
put on PYTHONPATH, no edit anywhere else), then ``modelopt optimize`` on the shipped digits
search recipe (``docs/recipes/digits-search.toml``, target "all") in a subprocess. The plugin's
runtime ``example.numpy`` is one of the search's targets and its trials are measured; the
plugin's profiler column (``example.flops``: GFLOPs, MACs) is expected in the search's tables.
A model the runtime cannot run skips that target, with the reason, and the search goes on.

One CLI run (module fixture) serves every test here: two trials instead of the recipe's 20
(the first trials of a new study are each target's plain export, targets in sorted order, so
``example.numpy``'s comes first), the recipe's own 8 training epochs (a few seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_example_plugin import (
    _install,
    _mlp_and_data,
    installed,  # noqa: F401 (a fixture)
)

RECIPE = Path(__file__).resolve().parents[2] / "docs" / "recipes" / "digits-search.toml"
TRIALS = 2


def _cli() -> list[str]:
    """The ``modelopt`` console script of this interpreter's environment (what a user types),
    else ``python -m modelopt_core``."""
    script = Path(sys.executable).with_name("modelopt")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "modelopt_core"]


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """``modelopt optimize docs/recipes/digits-search.toml --trials 2 --out OUT`` with the
    example plugin installed: (the finished process, OUT)."""
    tmp = tmp_path_factory.mktemp("example-cli")
    site = tmp / "site"
    _install(site, tmp)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per worker, as conftest.py does
        env["OMP_NUM_THREADS"] = "1"
    out = tmp / "out"
    done = subprocess.run([*_cli(), "optimize", str(RECIPE), "--trials", str(TRIALS),
                           "--out", str(out), "--no-progress"], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, out


def test_the_cli_search_measures_the_example_runtime(search):
    done, out = search
    data = json.loads((out / "trials.json").read_text())
    assert "example.numpy" in data["target"]  # target "all": the installed runtime joined
    rows = data["trials"]
    assert len(rows) == TRIALS and all(r["state"] == "complete" for r in rows), rows
    ours = [r for r in rows if r["backend"] == "example.numpy"]
    assert ours, rows
    base = data["baseline"]["accuracy"]
    for r in ours:  # measured on its runtime: the digits CNN in NumPy, FP32
        assert r["format"] == "example.npz" and r["lineage"][-1] == "example.npz"
        assert r["latency_p50_ms"] > 0 and r["size_mb"] > 0
        assert isinstance(r["accuracy"], float) and abs(r["accuracy"] - base) <= 1.0
        assert r["feasible"] is True and "error" not in r and "skipped" not in r
        assert "num_threads=1" in r["recipe"]  # [search] threads through its thread_option
    # a user sees it: the terminal table, report.md and report.html list its trials, and no
    # note says the target was skipped
    md = (out / "report.md").read_text()
    for text in (done.stdout, md, (out / "report.html").read_text()):
        assert "example.numpy" in text
    assert "skipped" not in md and "does not export" not in md
    assert "Trial 0 failed" not in done.stderr and "Traceback" not in done.stderr
    # best/: the fastest feasible trial's artifact, in its runtime's format
    best = json.loads((out / "best.json").read_text())
    manifest = json.loads((out / "best" / "manifest.json").read_text())
    assert manifest["format"] == best["row"]["format"]
    assert f"{out}/: study.db, trials.json, report.md" in done.stdout and "best/" in done.stdout


def test_the_example_profilers_column_shows_in_the_search_tables(search):
    """Every trial runs the installed plugin's profiler too (optimize's ``profilers``
    default), so its declared columns reach the three tables."""
    done, out = search
    rows = json.loads((out / "trials.json").read_text())["trials"]
    assert any(isinstance(r.get("gflops"), (int, float)) or isinstance(r.get("macs"), int)
               for r in rows), rows
    for where, text in [("terminal", done.stdout), ("report.md", (out / "report.md").read_text()),
                        ("report.html", (out / "report.html").read_text())]:
        assert "GFLOPs" in text and "MACs" in text, where


def test_a_model_the_example_runtime_cannot_run_skips_that_target_with_the_reason(
        installed, tmp_path):  # noqa: F811 (the imported fixture)
    """The original does not export to example.npz (a Sigmoid has no NumPy form there): its
    plain-export trial records the FormatError, the report says the target was skipped and
    why, and the search ends normally with a best on the other target."""
    import torch

    import modelopt_core as mo

    mlp, xs, accuracy = _mlp_and_data()
    net = torch.nn.Sequential(mlp, torch.nn.Sigmoid()).eval()  # same argmax, same accuracy
    s = mo.Session(net, (xs[0][:2],), eval_fn=accuracy, plugins=mo.PluginManager(strict=True),
                   progress=False)
    res = s.optimize(target=["example.numpy", "torch"], budget_trials=2, out_dir=tmp_path,
                     threads=1, space={"prune": ["none"], "precision": ["none"]})
    rows = json.loads((tmp_path / "trials.json").read_text())["trials"]
    ours = [r for r in rows if r["backend"] == "example.numpy"]
    assert ours and all("FormatError" in r["error"] and "Sigmoid" in r["error"]
                        for r in ours if "error" in r), rows
    assert not any(r["backend"] == "example.numpy" and r["state"] == "complete" for r in rows)
    md = (tmp_path / "report.md").read_text()
    assert "target 'example.numpy' skipped: the original model does not export to it" in md
    assert res.best_row is not None and res.best_row["backend"] == "torch"
