"""The process-wide plugin manager, for the modules below :mod:`modelopt_core.plugins`.

Saving and loading an artifact and ``Context.export`` look components up in the registry,
which sits above them (plugins imports interfaces, which imports artifact). They do not
import upwards: they call :func:`default_plugins`, which :mod:`modelopt_core.plugins` wires
to its ``get_plugin_manager`` when it is imported (``import modelopt_core`` imports it, and
importing any ``modelopt_core.*`` module imports ``modelopt_core`` first). This module
imports nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_factory: Callable[[], Any] | None = None


def install(factory: Callable[[], Any]) -> None:
    """Called once by :mod:`modelopt_core.plugins`: ``factory()`` returns the process-wide
    plugin manager."""
    global _factory
    _factory = factory


def default_plugins() -> Any:
    """The process-wide :class:`~modelopt_core.plugins.PluginManager`."""
    if _factory is None:  # only if modelopt_core/__init__ was bypassed
        raise RuntimeError("modelopt_core.plugins was not imported; import modelopt_core first.")
    return _factory()
