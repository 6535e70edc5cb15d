"""Plugin manager: entry-point loading in isolation, failures, duplicates, availability, the
lean core import, and the plugin-author contract (every hookspec documented and tested).

Each test builds a fresh ``PluginManager(load_entry_points=False)`` and feeds it fake entry
points, the way pluggy's own tests do.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import modelopt_core as mo
from modelopt_core import cli, hookspecs
from modelopt_core import plugins as plugins_mod

ROOT = Path(__file__).resolve().parents[2]


class FakeDist:
    """Stands in for ``importlib.metadata.Distribution`` (name + version)."""

    def __init__(self, name: str, version: str = "1.0") -> None:
        self.name, self.version = name, version


class FakeEntryPoint:
    """An entry point whose ``load()`` returns ``obj`` or raises ``error``."""

    group = "modelopt_core"

    def __init__(self, name: str, obj=None, dist: str = "fake-dist", error=None) -> None:
        self.name, self.value, self._obj, self._error = name, f"fake_{name}", obj, error
        self.dist = FakeDist(dist)

    def load(self):
        if self._error is not None:
            raise self._error
        return self._obj


def make_optimizer(name: str) -> type:
    """A real (identity-copy) optimizer class called ``name``."""

    class Copy(mo.Optimizer):
        """Return a copy of the model."""

        def apply(self, artifact, ctx):
            import copy
            return artifact.evolve(step=self.step(), model=copy.deepcopy(artifact.model))

    Copy.name = name
    return Copy


def plugin_module(modname: str, **hooks) -> types.ModuleType:
    """A module object implementing the given hooks (name -> list of classes to register)."""
    mod = types.ModuleType(modname)
    for hook, classes in hooks.items():
        def impl(register, _classes=classes):
            for c in _classes:
                register(c)
        impl.__name__ = hook
        setattr(mod, hook, mo.hookimpl(impl))
    return mod


def fresh(*eps, strict: bool = False) -> mo.PluginManager:
    pm = mo.PluginManager(load_entry_points=False, strict=strict)
    pm.load_entry_points(list(eps))
    return pm


def test_lean_import_keeps_heavy_runtimes_out():
    """``import modelopt_core`` (and plugin discovery) import no onnxruntime/tensorrt/pycuda."""
    code = ("import sys, json, modelopt_core as mo\n"
            "heavy = ('onnxruntime', 'tensorrt', 'pycuda')\n"
            "a = [m for m in heavy if m in sys.modules]\n"
            "mo.get_plugin_manager()\n"
            "b = [m for m in heavy if m in sys.modules]\n"
            "print(json.dumps([a, b]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120)
    after_import, after_discovery = json.loads(out.stdout.strip().splitlines()[-1])
    assert after_import == [], f"import modelopt_core pulled in {after_import}"
    assert after_discovery == [], f"plugin discovery pulled in {after_discovery}"


def test_failing_plugin_is_isolated_and_listed(capsys):
    good = plugin_module("good", register_optimizers=[make_optimizer("good.copy")])
    pm = fresh(FakeEntryPoint("broken", dist="broken-dist", error=ImportError("no module xyz")),
               FakeEntryPoint("good", good, dist="good-dist"))
    assert pm.get("optimizer", "good.copy").distribution == "good-dist"
    [failed] = pm.failed
    assert (failed.name, failed.distribution) == ("broken", "broken-dist")
    assert "ImportError" in failed.error and "no module xyz" in failed.error
    assert "broken" in capsys.readouterr().err
    assert pm.summary()["failed"] == [{"name": "broken", "distribution": "broken-dist",
                                       "error": failed.error}]
    with pytest.raises(mo.UnknownComponentError, match="failed to load.*broken"):
        pm.get("optimizer", "broken.thing")


def test_strict_mode_reraises_plugin_load_error():
    with pytest.raises(mo.PluginLoadError, match="'broken'.*broken-dist.*boom") as ei:
        fresh(FakeEntryPoint("broken", dist="broken-dist", error=RuntimeError("boom")),
              strict=True)
    assert isinstance(ei.value.__cause__, RuntimeError)


def test_plugin_whose_hook_raises_leaves_nothing_behind():
    def register_optimizers(register):
        register(make_optimizer("half.one"))
        raise ValueError("second component is broken")

    mod = types.ModuleType("half")
    mod.register_optimizers = mo.hookimpl(register_optimizers)
    pm = fresh(FakeEntryPoint("half", mod, dist="half-dist"))
    assert [f.name for f in pm.failed] == ["half"]
    assert pm.components("optimizer") == []  # the partial registration was rolled back


def test_registering_an_instance_or_wrong_kind_fails_clearly():
    inst = make_optimizer("x.inst")()
    pm = fresh(FakeEntryPoint("inst", plugin_module("inst", register_optimizers=[inst])),
               FakeEntryPoint("kind", plugin_module(
                   "kind", register_backends=[make_optimizer("x.kind")])))
    errors = {f.name: f.error for f in pm.failed}
    assert "register classes, not instances" in errors["inst"]
    assert "not a Backend subclass" in errors["kind"]


def test_two_plugins_one_name_names_both_distributions():
    a = plugin_module("a", register_optimizers=[make_optimizer("dup.name")])
    b = plugin_module("b", register_optimizers=[make_optimizer("dup.name")])
    with pytest.raises(mo.DuplicateComponentError) as ei:  # strict; non-strict: see
        fresh(FakeEntryPoint("a", a, dist="dist-alpha"),  # tests/unit/test_plugins_hardening.py
              FakeEntryPoint("b", b, dist="dist-beta"), strict=True)
    msg = str(ei.value)
    assert "dup.name" in msg and "dist-alpha" in msg and "dist-beta" in msg


def test_two_entry_points_one_plugin_name_is_not_dropped_silently():
    a = plugin_module("a", register_optimizers=[make_optimizer("a.one")])
    b = plugin_module("b", register_optimizers=[make_optimizer("b.one")])
    with pytest.raises(mo.DuplicateComponentError, match="'same'.*dist-alpha.*dist-beta"):
        fresh(FakeEntryPoint("same", a, dist="dist-alpha"),
              FakeEntryPoint("same", b, dist="dist-beta"), strict=True)
    pm = fresh(FakeEntryPoint("same", a, dist="dist-alpha"))
    pm.register_plugin(a, name="same", distribution="dist-alpha")  # the same object: a no-op
    assert [c.name for c in pm.components("optimizer")] == ["a.one"]


def test_unknown_component_lists_close_names():
    mod = plugin_module("m", register_optimizers=[make_optimizer("prune.structured"),
                                                  make_optimizer("prune.unstructured")])
    pm = fresh(FakeEntryPoint("m", mod))
    with pytest.raises(mo.UnknownComponentError) as ei:
        pm.get("optimizer", "prune.structure")
    assert "did you mean 'prune.structured'" in str(ei.value)
    assert isinstance(ei.value, KeyError)


def test_cli_plugins_json_lists_failed_plugin(monkeypatch, capsys):
    good = plugin_module("good", register_optimizers=[make_optimizer("good.copy")])
    pm = fresh(FakeEntryPoint("broken", dist="broken-dist", error=ImportError("missing dep")),
               FakeEntryPoint("good", good, dist="good-dist"))
    monkeypatch.setattr(plugins_mod, "_default", pm)
    capsys.readouterr()
    assert cli.main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["failed"][0]["name"] == "broken" and "missing dep" in data["failed"][0]["error"]
    comps = data["plugins"]["good"]["components"]
    assert [(c["kind"], c["name"], c["available"]) for c in comps] == [
        ("optimizer", "good.copy", True)]
    assert cli.main(["plugins"]) == 0
    assert "FAILED broken (broken-dist)" in capsys.readouterr().out


def test_unavailable_component_registers_and_fails_only_when_used():
    cls = make_optimizer("needs.gpu")
    cls.requires = ("modelopt_surely_missing_module",)
    cls.install_hint = "pip install modelopt-surely-missing"
    pm = fresh(FakeEntryPoint("gpu", plugin_module("gpu", register_optimizers=[cls])))
    [entry] = pm.summary()["plugins"]["gpu"]["components"]
    assert entry["available"] is False and "pip install modelopt-surely-missing" in entry["reason"]
    model = torch.nn.Linear(3, 2)
    s = mo.Session(model, (torch.randn(1, 3),), plugins=pm, progress=False)
    with pytest.raises(mo.BackendUnavailableError, match="needs.gpu.*modelopt_surely_missing"):
        s.apply("needs.gpu")
    assert len(s.history) == 1


def test_export_path_chains_exporters():
    def exporter(src, dst):
        class E(mo.Exporter):
            """Fake format conversion."""
            name, source, target = f"{src}2{dst}", src, dst
        return E

    mod = plugin_module("ex", register_exporters=[exporter("torch", "a"), exporter("a", "b"),
                                                  exporter("b", "c"), exporter("torch", "b")])
    pm = fresh(FakeEntryPoint("ex", mod))
    assert [i.name for i in pm.export_path("torch", "c")] == ["torch2b", "b2c"]
    assert pm.export_path("a", "a") == []
    with pytest.raises(mo.NoExportPathError, match="'c' to 'torch'.*torch->a"):
        pm.export_path("c", "torch")


# ---- every hookspec is documented and has a test (datasette's test_plugins.py habit) ------

def _hookspec_names() -> list[str]:
    return sorted(n for n, f in vars(hookspecs).items()
                  if callable(f) and hasattr(f, "modelopt_core_spec"))


def test_hook_register_optimizers():
    pm = fresh(FakeEntryPoint("o", plugin_module("o", register_optimizers=[
        make_optimizer("o.one")])))
    assert [c.name for c in pm.components("optimizer")] == ["o.one"]


def test_hook_register_exporters():
    class E(mo.Exporter):
        """Fake."""
        name, source, target = "fake_fmt", "torch", "fake"
    pm = fresh(FakeEntryPoint("e", plugin_module("e", register_exporters=[E])))
    assert pm.get("exporter", "fake_fmt").cls is E


def test_hook_register_backends():
    class B(mo.Backend):
        """Fake."""
        name = "fake_backend"
    pm = fresh(FakeEntryPoint("b", plugin_module("b", register_backends=[B])))
    assert pm.get("backend", "fake_backend").cls is B


def test_hook_register_profilers():
    class P(mo.Profiler):
        """Fake."""
        name = "fake_profiler"
    pm = fresh(FakeEntryPoint("p", plugin_module("p", register_profilers=[P])))
    assert pm.get("profiler", "fake_profiler").cls is P


def test_hook_register_formats():
    class F(mo.Format):
        """Fake."""
        name = "fake_format"
    pm = fresh(FakeEntryPoint("f", plugin_module("f", register_formats=[F])))
    assert pm.get("format", "fake_format").cls is F


def _commands_module(modname: str, *names: str, run=None) -> types.ModuleType:
    mod = types.ModuleType(modname)

    def register_commands(register):
        for n in names:
            register(n, help=f"the {n} command", setup=lambda p: p.add_argument("--size", type=int),
                     run=run or (lambda args: args.size))
    setattr(mod, "register_commands", mo.hookimpl(register_commands))
    return mod


def test_hook_register_commands(monkeypatch):
    pm = fresh(FakeEntryPoint("c", _commands_module("c", "hello-world")))
    assert [c.name for c in pm.commands()] == ["hello-world"]
    assert pm.commands()[0].distribution == "fake-dist"
    # the CLI adds it as a subcommand: its arguments parse and its status is the exit code
    monkeypatch.setattr(plugins_mod, "_default", pm)
    assert cli.main(["hello-world", "--size", "7"]) == 7
    help_text = cli._parser().format_help()
    assert "hello-world" in help_text and "the hello-world command" in help_text


def test_plugin_commands_cannot_shadow_builtins_or_each_other(capsys):
    pm = fresh(FakeEntryPoint("a", _commands_module("a", "run", "serve-x")),
               FakeEntryPoint("b", _commands_module("b", "serve-x"), dist="other-dist"))
    # a's "run" clashes with the core's command and is skipped; b's serve-x clashes with a's
    assert [(c.name, c.plugin) for c in pm.commands()] == [("serve-x", "a")]
    err = capsys.readouterr().err
    assert "modelopt run" in err and "serve-x" in err and "other-dist" in err
    with pytest.raises(mo.DuplicateComponentError, match="serve-x"):
        fresh(FakeEntryPoint("a", _commands_module("a", "serve-x")),
              FakeEntryPoint("b", _commands_module("b", "serve-x")), strict=True)


def test_command_registration_is_checked():
    mod = types.ModuleType("bad")
    mod.register_commands = mo.hookimpl(
        lambda register: register("bad name!", help="", setup=print, run=print))
    pm = fresh(FakeEntryPoint("bad", mod))
    assert pm.commands() == [] and "command name" in pm.failed[0].error


def test_hook_register_services():
    def search(session, *args, **kwargs):
        return ("searched", session, args, kwargs)

    mod = plugin_module("svc")
    mod.register_services = mo.hookimpl(lambda register: register("search", search))
    pm = fresh(FakeEntryPoint("svc", mod))
    assert pm.service("search") is search
    with pytest.raises(mo.UnknownComponentError, match="'nothing' service.*pip install x"):
        pm.service("nothing", hint="pip install x")
    # Session.optimize runs the registered service: the core imports no search plugin
    s = mo.Session(torch.nn.Linear(2, 1), (torch.zeros(1, 2),), plugins=pm, progress=False)
    out = s.optimize(target="onnxruntime", budget_trials=3, seed=5)
    assert out[0] == "searched" and out[1] is s and out[3] == {"seed": 5}
    bare = mo.Session(torch.nn.Linear(2, 1), (torch.zeros(1, 2),), plugins=fresh(),
                      progress=False)
    with pytest.raises(mo.UnknownComponentError, match="search plugin.*modelopt-core\\[search\\]"):
        bare.optimize()
    # `modelopt plugins` (PluginManager.summary) lists services and commands with their help
    mod.register_commands = _commands_module("svc", "hello").register_commands
    summary = fresh(FakeEntryPoint("svc", mod)).summary()
    assert summary["services"] == [{"name": "search", "plugin": "svc",
                                    "distribution": "fake-dist", "help": ""}]
    assert summary["commands"] == [{"name": "hello", "plugin": "svc",
                                    "distribution": "fake-dist", "help": "the hello command"}]
    del mod.register_commands
    # two plugins offering one service: the first is kept, both named
    other = plugin_module("svc2")
    other.register_services = mo.hookimpl(lambda register: register("search", print))
    pm = fresh(FakeEntryPoint("svc", mod), FakeEntryPoint("svc2", other, dist="other-dist"))
    assert pm.service("search") is search and "other-dist" in pm.failed[0].error


def test_a_misspelled_hook_is_a_failed_plugin_not_silence(capsys):
    typo = plugin_module("typo")
    typo.register_optimiser = mo.hookimpl(lambda register: register(make_optimizer("t.x")))
    fine = plugin_module("fine", register_optimizers=[make_optimizer("fine.x")])
    pm = fresh(FakeEntryPoint("typo", typo), FakeEntryPoint("fine", fine))
    [failed] = pm.failed
    assert failed.name == "typo"
    assert "'register_optimiser'" in failed.error
    assert "did you mean 'register_optimizers'" in failed.error
    assert [c.name for c in pm.components()] == ["fine.x"]  # the others load
    assert not pm.pm.is_registered(typo)
    pm.pm.check_pending()  # nothing pending is left behind
    assert "typo" in capsys.readouterr().err
    with pytest.raises(mo.PluginLoadError, match="unknown hook.*register_optimiser"):
        fresh(FakeEntryPoint("typo", typo), strict=True)
    # an optional hook (pluggy's optionalhook=True) is the author's explicit choice: allowed
    opt = plugin_module("opt")
    opt.some_future_hook = mo.hookimpl(optionalhook=True)(lambda register: None)
    assert fresh(FakeEntryPoint("opt", opt)).failed == []


def test_the_installed_plugins_have_no_unknown_hook():
    pm = mo.PluginManager(strict=True)  # raises on any misspelled hook of an entry point
    pm.pm.check_pending()
    assert "demo" in [c.name for c in pm.commands()]  # the demo comes as a plugin command


def test_every_hookspec_is_documented_and_tested():
    names = _hookspec_names()
    assert {"register_optimizers", "register_exporters", "register_backends",
            "register_profilers"} <= set(names)
    guide = (ROOT / "docs" / "plugin-authors.md").read_text()
    documented = set(re.findall(r"^#+ .*`(\w+)\(register\)`", guide, flags=re.M))
    for n in names:
        assert n in documented, f"hookspec {n} has no section in docs/plugin-authors.md"
        assert f"test_hook_{n}" in globals(), f"hookspec {n} has no test_hook_{n}"
