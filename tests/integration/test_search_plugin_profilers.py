"""Issue 25: a profiler an installed plugin registers is measured on every search trial (its
column reaches the search's tables); one that breaks is dropped with a note, never failing
the search; ``profilers=`` names them explicitly."""

from __future__ import annotations

import json
import types

import pytest
import torch

import modelopt_core as mo


class Params(mo.Profiler):
    """Parameter count of a torch artifact."""

    name = "thirdparty.params"
    columns = (mo.Column("n_params", "params", "", "{:,}", "lower"),)

    def profile(self, runner, artifact, ctx):
        if artifact.format != "torch":
            return {}
        return {"n_params": sum(p.numel() for p in artifact.model.parameters())}


class Broken(mo.Profiler):
    """Raises a library error (not a ModeloptError) on every call."""

    name = "thirdparty.broken"
    columns = (mo.Column("broken_metric"),)

    def profile(self, runner, artifact, ctx):
        raise ZeroDivisionError("a bug in the plugin")


def _pm(*profilers: type) -> mo.PluginManager:
    pm = mo.PluginManager(strict=True)
    mod = types.ModuleType("thirdparty")

    def register_profilers(register):
        for p in profilers:
            register(p)

    mod.register_profilers = mo.hookimpl(register_profilers)
    pm.register_plugin(mod, name="thirdparty", distribution="thirdparty-dist", version="1")
    return pm


def _session(pm: mo.PluginManager) -> mo.Session:
    g = torch.Generator().manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    xs = [torch.randn(8, 1, 4, 4, generator=g) for _ in range(3)]
    with torch.no_grad():
        labelled = [(x, m(x).argmax(1)) for x in xs]

    def acc(runner):
        return 100.0 * sum(int((runner(x).argmax(1) == y).sum()) for x, y in labelled) / 24

    return mo.Session(m, (xs[0][:1],), eval_fn=acc, plugins=pm, progress=False)


def test_an_installed_plugins_profiler_runs_on_every_trial(tmp_path):
    pm = _pm(Params)
    res = _session(pm).optimize(target="torch", budget_trials=2, out_dir=tmp_path, threads=1,
                                space={"prune": ["none"], "precision": {"torch": ["none"]}})
    rows = json.loads((tmp_path / "trials.json").read_text())["trials"]
    done = [r for r in rows if r.get("state") == "complete"]
    assert done and all(r["n_params"] == 68 for r in done)
    header = next(ln for ln in (tmp_path / "report.md").read_text().splitlines()
                  if ln.startswith("| step |"))
    assert "| params |" in header  # the plugin's column, with its own header
    assert res.best_row["n_params"] == 68


def test_a_broken_plugin_profiler_is_dropped_with_a_note(tmp_path):
    pm = _pm(Broken, Params)
    res = _session(pm).optimize(target="torch", budget_trials=2, out_dir=tmp_path, threads=1,
                                space={"prune": ["none"], "precision": {"torch": ["none"]}})
    assert res.best_row is not None and res.best_row["feasible"]
    md = (tmp_path / "report.md").read_text()
    assert "dropped from the search: ZeroDivisionError: a bug in the plugin" in md


def test_profilers_names_them_and_refuses_unknown_ones(tmp_path):
    pm = _pm(Params)
    s = _session(pm)
    res = s.optimize(target="torch", budget_trials=1, out_dir=tmp_path / "a", threads=1,
                     profilers=[], space={"prune": ["none"], "precision": {"torch": ["none"]}})
    assert "n_params" not in res.best_row
    with pytest.raises(mo.UnknownComponentError, match="thirdparty.params"):
        s.optimize(target="torch", budget_trials=1, out_dir=tmp_path / "b",
                   profilers=["thirdparty.parms"])
