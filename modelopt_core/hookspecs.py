"""The plugin contract: pluggy hook specifications, project name ``modelopt_core``.

A plugin module implements any of these with ``@modelopt_core.hookimpl`` and calls
``register`` once per component class.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("modelopt_core")
hookimpl = pluggy.HookimplMarker("modelopt_core")


@hookspec
def register_optimizers(register: Callable[[type], None]) -> None:
    """Register Optimizer classes by calling register(cls)."""


@hookspec
def register_exporters(register: Callable[[type], None]) -> None:
    """Register Exporter classes by calling register(cls)."""


@hookspec
def register_backends(register: Callable[[type], None]) -> None:
    """Register Backend classes by calling register(cls)."""


@hookspec
def register_profilers(register: Callable[[type], None]) -> None:
    """Register Profiler classes by calling register(cls)."""


@hookspec
def register_formats(register: Callable[[type], None]) -> None:
    """Register Format classes (how a model format is saved and loaded) by calling
    register(cls)."""


@hookspec
def register_commands(register: Callable[..., None]) -> None:
    """Add ``modelopt`` subcommands by calling
    ``register(name, help=..., setup=fn(parser), run=fn(args) -> int, examples="")``."""


@hookspec
def register_services(register: Callable[..., None]) -> None:
    """Offer a named service the core and other plugins look up through the plugin manager
    instead of importing a plugin, by calling ``register(name, obj, help="")``. Known names:
    ``"search"``: ``fn(session, target, objective, max_accuracy_drop, budget_trials,
    time_budget_s, **options)``, what ``Session.optimize`` runs."""
