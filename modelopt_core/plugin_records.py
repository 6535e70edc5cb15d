"""The records the plugin manager keeps (components, commands, services, failed plugins) and
the check of a profiler's declared columns against the registered ones."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from .interfaces import Column, Profiler
from .tables import RESERVED_COLUMNS

#: the distribution of the core and its built-in plugins: loaded first, so on a name clash the
#: built-in component is the one kept (and the owner of the report's own columns)
CORE_DISTRIBUTION = "modelopt-core"


@attrs.define(frozen=True)
class FailedPlugin:
    """An entry point that could not be loaded or registered."""

    name: str
    distribution: str
    error: str


@attrs.define(frozen=True)
class CommandInfo:
    """A ``modelopt`` subcommand added by a plugin (hook ``register_commands``)."""

    name: str
    help: str
    setup: Any  # fn(argparse.ArgumentParser) -> None: adds the command's arguments
    run: Any  # fn(argparse.Namespace) -> int: the exit status
    examples: str
    plugin: str
    distribution: str


@attrs.define(frozen=True)
class ServiceInfo:
    """An object a plugin offers under a name (hook ``register_services``), e.g. ``search``."""

    name: str
    obj: Any
    help: str
    plugin: str
    distribution: str


@attrs.define(frozen=True)
class ComponentInfo:
    """A registered component class and where it came from."""

    cls: type
    plugin: str
    distribution: str
    version: str

    @property
    def name(self) -> str:
        return self.cls.name

    @property
    def kind(self) -> str:
        return self.cls.kind



def column_clash(cls: type[Profiler], plugin: str, dist: str,
                 registered: Iterable[ComponentInfo]) -> str:
    """The columns profiler ``cls`` declares must be :class:`Column` records, one per name
    (TypeError otherwise), none the report's own or one of the ``registered`` profilers'
(the message naming both; "" when there is no clash)."""
    cols = cls.columns
    if not isinstance(cols, (tuple, list)) or not all(isinstance(c, Column) for c in cols):
        raise TypeError(f"plugin {plugin!r}: profiler {cls.name!r}: `columns` must be a "
                        f"tuple of modelopt_core.Column, not {cols!r}.")
    names = [c.name for c in cols]
    if len(set(names)) < len(names):
        raise TypeError(f"plugin {plugin!r}: profiler {cls.name!r} declares the column(s) "
                        f"{sorted({n for n in names if names.count(n) > 1})} twice.")
    taken = {c.name: info for info in registered
             for c in info.cls.columns}
    for name in names:
        if name in RESERVED_COLUMNS:
            err = (f"profiler {cls.name!r} from {dist} (plugin {plugin!r}) declares the "
                   f"column {name!r}, which is the report's own ({CORE_DISTRIBUTION}). The "
                   f"profiler is skipped; rename its metric.")
        elif name in taken:
            prev = taken[name]
            err = (f"two profilers declare the column {name!r}: {prev.name!r} from "
                   f"{prev.distribution} (plugin {prev.plugin!r}, {prev.cls.__module__}."
                   f"{prev.cls.__qualname__}) and {cls.name!r} from {dist} (plugin "
                   f"{plugin!r}, {cls.__module__}.{cls.__qualname__}). Kept {prev.name!r} "
                   f"from {prev.distribution}; {cls.name!r} from {dist} is skipped. Rename "
                   "the metric, or uninstall one.")
        else:
            continue
        return err
    return ""


def summarize(pm: Any, origins: Iterable[tuple[str, str, str]]) -> dict[str, Any]:
    """What ``PluginManager.summary`` returns: plugins (from ``origins``: name, distribution,
    version) with their components and availability, failed plugins, commands, services."""
    plugins: dict[str, dict[str, Any]] = {}
    for name, dist, ver in origins:
        plugins[name] = {"distribution": dist, "version": ver, "components": []}
    for info in pm.components():
        ok, why = info.cls.availability()
        entry = {"kind": info.kind, "name": info.name, "available": ok,
                 "reason": why, "description": info.cls.describe()}
        # the same keys and types for every kind: formats taken, format made (exporters)
        if info.kind == "exporter":
            entry["accepts"], entry["produces"] = [info.cls.source], info.cls.target
        else:
            entry["accepts"] = list(getattr(info.cls, "accepts", ())) or (
                [info.name] if info.kind == "format" else [])
            entry["produces"] = None
        plugins.setdefault(info.plugin, {"distribution": info.distribution,
                                         "version": info.version, "components": []})
        plugins[info.plugin]["components"].append(entry)
    added = {kind: [{"name": i.name, "plugin": i.plugin, "distribution": i.distribution,
                     "help": i.help} for i in infos]
             for kind, infos in (("commands", pm.commands()),
                                 ("services", pm.services()))}
    return {"plugins": plugins, "failed": [attrs.asdict(f) for f in pm.failed], **added}
