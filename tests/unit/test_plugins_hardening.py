"""Plugin loading under hostile plugins (issue 10, item 10).

- an entry point raising ``SystemExit`` or another ``BaseException`` on import (or in its
  register hook) is recorded as failed and the rest load; ``KeyboardInterrupt`` propagates;
- a duplicate component or plugin name is recorded (naming both distributions), the first
  registration is kept and later plugins still load; strict mode raises
  ``DuplicateComponentError``; built-ins load first, so a clash keeps the built-in;
- a dotted ``requires`` entry whose parent package is missing (or fails to import) reports
  the component unavailable instead of raising from ``importlib.util.find_spec``;
- ``modelopt plugins`` shows the duplicate and failed entries.

Fresh ``PluginManager(load_entry_points=False)`` per test, fed fake entry points.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from test_core_plugins import FakeEntryPoint, fresh, make_optimizer, plugin_module

import modelopt_core as mo
from modelopt_core import cli
from modelopt_core import plugins as plugins_mod


class PluginPanic(BaseException):
    """A BaseException that is not an Exception (what a careless plugin might raise)."""


def good(name: str = "good") -> FakeEntryPoint:
    mod = plugin_module(name, register_optimizers=[make_optimizer(f"{name}.copy")])
    return FakeEntryPoint(name, mod, dist=f"{name}-dist")


@pytest.mark.parametrize("error", [SystemExit(3), SystemExit("bye"), PluginPanic("panic"),
                                   GeneratorExit()], ids=["exit-code", "exit-msg", "custom",
                                                          "generator-exit"])
def test_base_exception_on_import_is_recorded_and_others_load(error, capsys):
    pm = fresh(FakeEntryPoint("rude", dist="rude-dist", error=error), good())
    assert pm.get("optimizer", "good.copy").distribution == "good-dist"
    [failed] = pm.failed
    assert (failed.name, failed.distribution) == ("rude", "rude-dist")
    assert type(error).__name__ in failed.error
    assert "rude" in capsys.readouterr().err


def test_base_exception_in_register_hook_is_recorded_and_rolled_back():
    def register_optimizers(register):
        register(make_optimizer("rude.one"))
        raise SystemExit(1)

    mod = plugin_module("rude")
    mod.register_optimizers = mo.hookimpl(register_optimizers)
    pm = fresh(FakeEntryPoint("rude", mod, dist="rude-dist"), good())
    assert [f.name for f in pm.failed] == ["rude"] and "SystemExit" in pm.failed[0].error
    assert [c.name for c in pm.components("optimizer")] == ["good.copy"]


def test_base_exception_in_strict_mode_is_a_plugin_load_error():
    with pytest.raises(mo.PluginLoadError, match="'rude'.*rude-dist.*SystemExit") as ei:
        fresh(FakeEntryPoint("rude", dist="rude-dist", error=SystemExit(2)), strict=True)
    assert isinstance(ei.value.__cause__, SystemExit)


def test_keyboard_interrupt_still_propagates():
    with pytest.raises(KeyboardInterrupt):
        fresh(FakeEntryPoint("ctrl-c", error=KeyboardInterrupt()), good())

    def register_optimizers(register):
        raise KeyboardInterrupt

    mod = plugin_module("ctrl_c_hook")
    mod.register_optimizers = mo.hookimpl(register_optimizers)
    pm = mo.PluginManager(load_entry_points=False)
    with pytest.raises(KeyboardInterrupt):
        pm.load_entry_points([FakeEntryPoint("ctrl_c_hook", mod)])
    assert pm.components() == [] and not pm.pm.get_plugins()


def test_duplicate_component_is_recorded_first_kept_later_plugins_load(capsys):
    first = make_optimizer("dup.name")
    a = plugin_module("a", register_optimizers=[first])
    b = plugin_module("b", register_optimizers=[make_optimizer("dup.name"),
                                                make_optimizer("b.other")])
    pm = fresh(FakeEntryPoint("a", a, dist="dist-alpha"), FakeEntryPoint("b", b, dist="dist-beta"),
               good("later"))
    assert pm.get("optimizer", "dup.name").cls is first  # the first registration is kept
    assert pm.get("optimizer", "dup.name").distribution == "dist-alpha"
    assert pm.get("optimizer", "b.other").distribution == "dist-beta"  # b's other component
    assert pm.get("optimizer", "later.copy")  # plugins after the clash still load
    [dup] = pm.failed
    assert (dup.name, dup.distribution) == ("b", "dist-beta")
    assert "DuplicateComponentError" in dup.error and "'dup.name'" in dup.error
    assert "dist-alpha" in dup.error and "dist-beta" in dup.error
    assert "dup.name" in capsys.readouterr().err


def test_duplicate_component_in_strict_mode_raises_and_rolls_back():
    a = plugin_module("a", register_optimizers=[make_optimizer("dup.name")])
    b = plugin_module("b", register_optimizers=[make_optimizer("b.other"),
                                                make_optimizer("dup.name")])
    pm = mo.PluginManager(load_entry_points=False, strict=True)
    with pytest.raises(mo.DuplicateComponentError, match="dist-alpha.*dist-beta"):
        pm.load_entry_points([FakeEntryPoint("a", a, dist="dist-alpha"),
                              FakeEntryPoint("b", b, dist="dist-beta")])
    assert [c.name for c in pm.components("optimizer")] == ["dup.name"]
    assert pm.get("optimizer", "dup.name").distribution == "dist-alpha"


def test_duplicate_plugin_name_is_recorded_and_later_plugins_load():
    a = plugin_module("a", register_optimizers=[make_optimizer("a.one")])
    b = plugin_module("b", register_optimizers=[make_optimizer("b.one")])
    pm = fresh(FakeEntryPoint("same", a, dist="dist-alpha"),
               FakeEntryPoint("same", b, dist="dist-beta"), good("later"))
    assert [c.name for c in pm.components("optimizer")] == ["a.one", "later.copy"]
    [dup] = pm.failed
    assert (dup.name, dup.distribution) == ("same", "dist-beta")
    assert "'same'" in dup.error and "dist-alpha" in dup.error and "dist-beta" in dup.error


def test_builtin_distribution_loads_first_and_wins_a_clash():
    third = make_optimizer("prune.fancy")
    builtin = make_optimizer("prune.fancy")
    pm = fresh(FakeEntryPoint("thirdparty", plugin_module("t", register_optimizers=[third]),
                              dist="shadow-dist"),
               FakeEntryPoint("prune", plugin_module("p", register_optimizers=[builtin]),
                              dist=plugins_mod.CORE_DISTRIBUTION))
    assert pm.get("optimizer", "prune.fancy").cls is builtin
    assert [(f.name, f.distribution) for f in pm.failed] == [("thirdparty", "shadow-dist")]


def test_cli_shows_duplicate_and_failed_entries(monkeypatch, capsys):
    a = plugin_module("a", register_optimizers=[make_optimizer("dup.name")])
    b = plugin_module("b", register_optimizers=[make_optimizer("dup.name")])
    pm = fresh(FakeEntryPoint("a", a, dist="dist-alpha"), FakeEntryPoint("b", b, dist="dist-beta"),
               FakeEntryPoint("rude", dist="rude-dist", error=SystemExit(4)), good("later"))
    monkeypatch.setattr(plugins_mod, "_default", pm)
    capsys.readouterr()
    assert cli.main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    failed = {f["name"]: f for f in data["failed"]}
    assert set(failed) == {"b", "rude"}
    assert "dist-alpha" in failed["b"]["error"] and "dist-beta" in failed["b"]["error"]
    assert "SystemExit" in failed["rude"]["error"]
    assert [c["name"] for c in data["plugins"]["later"]["components"]] == ["later.copy"]
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "FAILED b (dist-beta): DuplicateComponentError" in out
    assert "FAILED rude (rude-dist): SystemExit" in out
    assert "later.copy" in out


# ---- dotted requires -------------------------------------------------------------------------

def _requiring(*mods: str) -> type:
    cls = make_optimizer("needs.dotted")
    cls.requires = mods
    cls.install_hint = "pip install dotted-thing"
    return cls


@pytest.mark.parametrize("mod", ["modelopt_surely_missing_pkg.plugins", "a_missing_pkg_xyz.b.c"])
def test_dotted_requires_with_missing_parent_is_unavailable(mod):
    ok, why = _requiring(mod).availability()
    assert ok is False
    assert mod in why and "pip install dotted-thing" in why


def test_dotted_requires_missing_leaf_and_present_module():
    ok, why = _requiring("json.surely_missing_submodule").availability()
    assert not ok and "json.surely_missing_submodule" in why
    assert _requiring("json.decoder", "importlib.util").availability() == (True, "")


def test_dotted_requires_whose_parent_fails_to_import_is_unavailable(tmp_path, monkeypatch):
    pkg = tmp_path / "modelopt_exploding_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('needs a GPU driver')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ok, why = _requiring("modelopt_exploding_pkg.sub").availability()
    assert not ok and "modelopt_exploding_pkg" in why and "needs a GPU driver" in why
    sys.modules.pop("modelopt_exploding_pkg", None)


def test_dotted_requires_unavailable_in_summary_and_when_used():
    cls = _requiring("modelopt_surely_missing_pkg.plugins")
    pm = fresh(FakeEntryPoint("dotted", plugin_module("dotted", register_optimizers=[cls])))
    [entry] = pm.summary()["plugins"]["dotted"]["components"]
    assert entry["available"] is False and "modelopt_surely_missing_pkg" in entry["reason"]
    s = mo.Session(torch.nn.Linear(3, 2), (torch.randn(1, 3),), plugins=pm, progress=False)
    with pytest.raises(mo.BackendUnavailableError, match="needs.dotted.*modelopt_surely_missing"):
        s.apply("needs.dotted")
    assert len(s.history) == 1
