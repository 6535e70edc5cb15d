"""The component contract as public checks: run them on your plugin's components.

Each ``check_*`` takes a registered name (or the component class itself) and an optional
:class:`~modelopt_core.PluginManager` (default: the process-wide one), brings its own tiny
models and data (:mod:`modelopt_core.testing.world`: a small CNN and an MLP on synthetic 8x8
images, calibration and training batches, an ``eval_fn``), and raises
:class:`ContractViolation` (an ``AssertionError``) naming the component and the broken rule.
A component that cannot run here (a missing runtime, no exporter chain to its format) raises
:class:`Unavailable`, a ``unittest.SkipTest``: pytest reports it as a skip with the reason.

    from modelopt_core.testing import check_plugin
    def test_my_plugin():
        check_plugin("myplugin")          # every component and command of the plugin

or, without writing a file: ``python -m modelopt_core.testing myplugin``.

Importing this module imports nothing heavy; torch is imported when a check runs.
"""

from __future__ import annotations

import unittest
from typing import Any

from .backends import (
    check_backend,
    check_backend_runner,
    check_backend_thread_safe,
    check_backend_traits,
)
from .contract import (
    REQUIRED,
    ContractViolation,
    Unavailable,
    check_config,
    check_exporter,
    check_optimizer,
    check_optimizer_stage,
    fingerprint,
    small_overrides,
)
from .measure import check_command, check_format, check_profiler

__all__ = [
    "REQUIRED",
    "ContractViolation",
    "Unavailable",
    "check_backend",
    "check_backend_runner",
    "check_backend_thread_safe",
    "check_backend_traits",
    "check_command",
    "check_config",
    "check_exporter",
    "check_format",
    "check_optimizer",
    "check_optimizer_stage",
    "check_plugin",
    "check_profiler",
    "fingerprint",
    "main",
    "small_overrides",
]

#: what check_plugin runs per kind
_CHECKS: dict[str, tuple[Any, ...]] = {
    "optimizer": (check_optimizer,), "exporter": (check_exporter,),
    "backend": (check_backend, check_backend_thread_safe), "profiler": (check_profiler,),
    "format": (check_format,)}


def check_plugin(plugin: str, pm: Any = None, *, raise_first: bool = True
                 ) -> list[tuple[str, str, str, str]]:
    """Run every check on every component and command registered by ``plugin`` (its entry
    point name or its distribution name). Returns ``[(kind, name, "pass" | "skip" | "fail",
    message)]``; with ``raise_first`` (the default) the first violation is raised instead.
    No component at all is a :class:`ContractViolation` (a misspelled plugin name)."""
    import modelopt_core as mo

    pm = pm or mo.get_plugin_manager()
    mine = [i for i in pm.components() if plugin in (i.plugin, i.distribution)]
    commands = [c for c in pm.commands() if plugin in (c.plugin, c.distribution)]
    if not mine and not commands:
        failed = [f"{f.name} ({f.distribution}): {f.error}" for f in pm.failed]
        known = sorted({i.plugin for i in pm.components()} | {c.plugin for c in pm.commands()})
        raise ContractViolation(
            f"plugin {plugin!r}: registers no component and no command here. Plugins: "
            f"{', '.join(known)}." + (f" Failed to load: {'; '.join(failed)}" if failed else ""))
    jobs = [(i.kind, i.name, fn, i.cls) for i in mine for fn in _CHECKS[i.kind]]
    jobs += [("command", c.name, check_command, c.name) for c in commands]
    results = []
    for kind, name, fn, arg in jobs:
        try:
            fn(arg, pm)
        except unittest.SkipTest as e:
            results.append((kind, name, "skip", f"{fn.__name__}: {e}"))
        except (AssertionError, mo.ModeloptError) as e:
            if raise_first:
                raise
            results.append((kind, name, "fail", f"{fn.__name__}: {type(e).__name__}: {e}"))
        else:
            results.append((kind, name, "pass", fn.__name__))
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m modelopt_core.testing PLUGIN [PLUGIN ...]``: run every check on the named
    plugins' components; exit 1 when one breaks the contract, 2 when a plugin is unknown."""
    import argparse

    import modelopt_core as mo

    parser = argparse.ArgumentParser(
        prog="python -m modelopt_core.testing",
        description="Check that a plugin's components keep the modelopt component contract.")
    parser.add_argument("plugins", nargs="+", help="plugin (entry point) or distribution name")
    parser.add_argument("--strict", action="store_true",
                        help="fail when any plugin fails to load (PluginManager(strict=True))")
    args = parser.parse_args(argv)
    try:
        pm = mo.PluginManager(strict=args.strict)
    except mo.ModeloptError as e:
        print(f"error: {e}")
        return 2
    status = 0
    for plugin in args.plugins:
        try:
            results = check_plugin(plugin, pm, raise_first=False)
        except ContractViolation as e:
            print(f"error: {e}")
            status = max(status, 2)
            continue
        for kind, name, outcome, msg in results:
            print(f"{outcome.upper():4} {kind} {name}: {msg}")
        fails = sum(r[2] == "fail" for r in results)
        skips = sum(r[2] == "skip" for r in results)
        print(f"{plugin}: {len(results) - fails - skips} passed, {skips} skipped, "
              f"{fails} failed")
        status = max(status, 1 if fails else 0)
    return status
