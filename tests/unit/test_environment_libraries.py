"""Issue 25 (traits, not name tables): the library versions a report records come from the
registry (each component's ``requires`` / ``libraries``), so a third-party runtime's library
is recorded with no edit in the core."""

from __future__ import annotations

import types

import modelopt_core as mo
from modelopt_core.environment import component_libraries


def _pm_with(cls: type) -> mo.PluginManager:
    pm = mo.PluginManager(load_entry_points=False, strict=True)
    mod = types.ModuleType("thirdparty_rt")
    mod.register_profilers = mo.hookimpl(lambda register: register(cls))
    pm.register_plugin(mod, name="thirdparty_rt", distribution="x", version="1")
    return pm


def test_built_in_runtimes_record_their_libraries():
    versions = mo.describe_environment(mo.get_plugin_manager())["versions"]
    for dist in ("modelopt-core", "torch", "onnxruntime", "openvino", "nncf", "onnx"):
        assert dist in versions, versions


def test_a_plugins_requires_and_libraries_are_recorded():
    class Needs(mo.Profiler):
        name = "thirdparty.needs"
        requires = ("attrs",)  # a module: its distribution is recorded
        libraries = ("pluggy",)  # a distribution named outright

    pm = _pm_with(Needs)
    assert component_libraries(pm) == ["attrs", "pluggy"]
    versions = mo.describe_environment(pm)["versions"]
    assert versions["attrs"] and versions["pluggy"] and "onnxruntime" not in versions


def test_a_missing_library_is_left_out():
    class Gone(mo.Profiler):
        name = "thirdparty.gone"
        requires = ("no_such_module_here",)
        libraries = ("no-such-distribution",)

    versions = mo.describe_environment(_pm_with(Gone))["versions"]
    assert "no-such-distribution" not in versions and "modelopt-core" in versions
