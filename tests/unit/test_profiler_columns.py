"""Profilers declare their columns (``Profiler.columns``): a third-party profiler's metric shows
with its header and format in the Markdown report, the terminal table and the HTML page; two
profilers declaring one column is an error at registration naming both (issue 25, item 5).

The plugin manager is fed fake entry points, as in ``test_core_plugins.py``.
"""

from __future__ import annotations

import importlib.metadata as md
import types

import pytest
import torch

from helpers import terminal_text

import modelopt_core as mo


class FakeDist:
    def __init__(self, name: str, version: str = "1.0") -> None:
        self.name, self.version = name, version


class FakeEntryPoint:
    group = "modelopt_core"

    def __init__(self, name: str, obj, dist: str = "fake-dist") -> None:
        self.name, self.value, self._obj, self.dist = name, f"fake_{name}", obj, FakeDist(dist)

    def load(self):
        return self._obj


def make_profiler(name: str, *columns: mo.Column) -> type:
    class P(mo.Profiler):
        """A third-party profiler."""

        def profile(self, runner, artifact, ctx):
            return {c.name: 1.0 for c in columns}

    P.name, P.columns = name, tuple(columns)
    return P


def plugin(modname: str, *profilers: type) -> types.ModuleType:
    mod = types.ModuleType(modname)

    def register_profilers(register):
        for p in profilers:
            register(p)

    mod.register_profilers = mo.hookimpl(register_profilers)
    return mod


WIDGETS = mo.Column("widgets_per_s", header="widgets/s", unit="1/s", format="{:,.1f} w",
                    better="higher")


def fresh(*eps, strict: bool = False, builtins: bool = False) -> mo.PluginManager:
    pm = mo.PluginManager(load_entry_points=False, strict=strict)
    pm.load_entry_points([*(md.entry_points(group="modelopt_core") if builtins else []), *eps])
    return pm


@pytest.fixture(scope="module")
def widgets_pm():
    """The installed plugins plus a third party's ``widgets`` profiler."""
    mod = plugin("widgets_plugin", make_profiler("acme.widgets", WIDGETS))
    pm = fresh(FakeEntryPoint("widgets", mod, dist="acme-widgets"), builtins=True)
    assert not pm.failed and pm.columns()["widgets_per_s"] is WIDGETS
    return pm


ROWS = [{"step": "original", "format": "torch", "backend": "torch", "accuracy": 97.5,
         "latency_p50_ms": 2.0, "size_mb": 4.0, "widgets_per_s": 12345.67, "note": "n"},
        {"step": "1:onnx", "format": "onnx", "backend": "onnxruntime", "accuracy": 97.0,
         "latency_p50_ms": 1.0, "size_mb": 4.0, "widgets_per_s": 23456.0}]
BUILTIN_HEADER = ["step", "format", "backend", "accuracy", "Δ accuracy", "p50 ms", "speedup",
                  "size MB", "smaller"]


def _header(md_text: str) -> list[str]:
    line = next(x for x in md_text.splitlines() if x.startswith("| step"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_plugin_metric_shows_in_the_markdown_report(widgets_pm):
    rep = mo.Report(ROWS, plugins=widgets_pm)
    text = rep.to_markdown()
    # the built-in columns keep their headers and order; the plugin's follows them, before
    # the note
    assert _header(text) == BUILTIN_HEADER + ["widgets/s", "note"]
    assert "| 12,345.7 w |" in text and "| 23,456.0 w |" in text
    assert rep.columns[-2:] == ["widgets_per_s", "note"]
    assert "widgets_per_s" in rep.to_dict()["columns"]


def test_undeclared_metric_stays_out_of_the_table():
    """The same rows under a registry without the widgets plugin: JSON only, as before."""
    rep = mo.Report(ROWS, plugins=fresh(builtins=True))
    assert _header(rep.to_markdown()) == BUILTIN_HEADER + ["note"]
    assert "widgets_per_s" in rep.to_dict()["columns"]


def test_plugin_metric_shows_in_the_terminal_table(widgets_pm, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = terminal_text(mo.Report(ROWS, plugins=widgets_pm))
    assert "widgets/s" in text and "12,345.7 w" in text and "p50 ms" in text
    monkeypatch.setenv("COLUMNS", "60")  # too narrow: hidden, and said so by its header
    narrow = terminal_text(mo.Report(ROWS, plugins=widgets_pm))
    assert "12,345.7 w" not in narrow and "hidden" in narrow and "widgets/s" in narrow
    assert "p50 ms" in narrow


def test_plugin_metric_shows_in_the_html_report(widgets_pm):
    page = mo.Report(ROWS, plugins=widgets_pm).to_html(pareto=False)
    table = page[page.index('<table id="comparison">'):page.index("</table>")]
    assert "<th>widgets/s</th>" in table and ">12,345.7 w</td>" in table
    assert table.index("<th>smaller</th>") < table.index("<th>widgets/s</th>")


def test_builtin_profilers_declare_the_report_formats():
    pm = fresh(builtins=True)
    cols = pm.columns()
    assert cols["latency_p50_ms"].title == "p50 ms" and cols["latency_p50_ms"].better == "lower"
    assert cols["throughput_per_s"].better == "higher"
    rep = mo.Report([], plugins=pm)
    assert rep.cell("sparsity", 0.3) == "30.0%"
    assert rep.cell("joules_per_inference", 0.0123) == "12.300"
    assert rep.header("joules_per_inference") == "mJ/inference"


def test_two_profilers_one_column_names_both():
    first = plugin("widgets_plugin", make_profiler("acme.widgets", WIDGETS))
    clash = make_profiler("other.gadgets", mo.Column("widgets_per_s"), mo.Column("gadgets"))
    second = plugin("gadgets_plugin", clash)
    eps = (FakeEntryPoint("widgets", first, dist="acme-widgets"),
           FakeEntryPoint("gadgets", second, dist="other-gadgets"))
    pm = fresh(*eps)  # the first is kept, the second recorded as failed
    assert [p.name for p in pm.components("profiler")] == ["acme.widgets"]
    assert pm.columns()["widgets_per_s"] is WIDGETS and "gadgets" not in pm.columns()
    (failed,) = pm.failed
    assert failed.name == "gadgets" and failed.distribution == "other-gadgets"
    for part in ("DuplicateComponentError", "'widgets_per_s'", "'acme.widgets'",
                 "acme-widgets", "'other.gadgets'", "other-gadgets"):
        assert part in failed.error
    with pytest.raises(mo.DuplicateComponentError,
                       match=r"'widgets_per_s'.*'acme\.widgets'.*acme-widgets.*"
                             r"'other\.gadgets'.*other-gadgets"):
        fresh(*eps, strict=True)


def test_a_builtin_column_or_the_reports_own_cannot_be_declared_again():
    p50 = plugin("p50_plugin", make_profiler("acme.p50", mo.Column("latency_p50_ms")))
    pm = fresh(FakeEntryPoint("p50", p50, dist="acme-p50"), builtins=True)
    assert "acme.p50" not in [p.name for p in pm.components("profiler")]
    assert "'latency' from modelopt-core" in pm.failed[-1].error
    own = plugin("own_plugin", make_profiler("acme.speed", mo.Column("speedup")))
    with pytest.raises(mo.DuplicateComponentError, match="'speedup'.*the report's own"):
        fresh(FakeEntryPoint("own", own), strict=True)


def test_columns_must_be_column_records():
    bad = make_profiler("acme.bad")
    bad.columns = ("widgets_per_s",)
    pm = fresh(FakeEntryPoint("bad", plugin("bad_plugin", bad)))
    assert pm.components("profiler") == [] and "tuple of modelopt_core.Column" in \
        pm.failed[0].error
    twice = make_profiler("acme.twice", WIDGETS, WIDGETS)
    pm = fresh(FakeEntryPoint("twice", plugin("twice_plugin", twice)))
    assert pm.components("profiler") == [] and "twice" in pm.failed[0].error
    with pytest.raises(ValueError, match="not a str.format template"):
        mo.Column("x", format=".3f")
    with pytest.raises(ValueError):
        mo.Column("x", better="up")


def test_energy_profiler_declares_what_it_returns(tmp_path):
    """The energy profiler is unavailable on most machines (the contract test skips it):
    its keys, measured on a fake RAPL tree, and unavailable, are declared."""
    from modelopt_profilers.energy import EnergyProfiler

    zone = tmp_path / "powercap" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text("0\n")
    (zone / "max_energy_range_uj").write_text("1000000000\n")
    model = torch.nn.Linear(4, 2).eval()
    s = mo.Session(model, (torch.randn(2, 4),), progress=False)

    class Costly:
        device = "cpu"

        def __init__(self, runner):
            self.runner = runner

        def __call__(self, *xs):
            (zone / "energy_uj").write_text(f"{int((zone / 'energy_uj').read_text()) + 100}\n")
            return self.runner(*xs)

        def synchronize(self):
            pass

    declared = {c.name for c in EnergyProfiler.columns}
    prof = EnergyProfiler(sysfs_root=str(tmp_path / "powercap"), min_time_s=0.0, min_calls=3,
                          warmup=0, subtract_idle=True, idle_s=0.01)
    with s.runner("torch") as r:
        measured = prof.profile(Costly(r), s.current, s.context())
        missing = EnergyProfiler(sysfs_root=str(tmp_path / "none"), source="rapl").profile(
            r, s.current, s.context())
    assert "idle_watts" in measured and "energy_unavailable" in missing
    assert set(measured) <= declared and set(missing) <= declared
