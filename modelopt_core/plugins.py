"""Plugin manager: entry-point discovery (group ``modelopt_core``), registry, availability.

Each entry point loads in isolation: one that fails to import or register (any exception,
``SystemExit`` and other ``BaseException`` subclasses included; only ``KeyboardInterrupt``
propagates) is recorded with its distribution and error and the others still load
(``strict=True`` re-raises instead). Two components of one kind with one name, or two
plugins with one name, are an error naming both distributions: the first registration is
kept (built-ins load first), the second is recorded as failed and loading continues
(``strict=True`` raises :class:`DuplicateComponentError`). Two profilers declaring one column
(``Profiler.columns``) are such an error too.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
import traceback
from collections import deque
from typing import Any

import pluggy

from . import _registry, hookspecs
from .errors import (ArtifactError, BackendUnavailableError, DuplicateComponentError,
                     FormatError, NoExportPathError,
                     PluginLoadError, UnknownComponentError, close_names)
from .interfaces import (Backend, BytesFormat, Column, Component, Context, Exporter, Format,
                         Optimizer, Profiler, Runner)
from .plugin_records import (CORE_DISTRIBUTION, CommandInfo, ComponentInfo, FailedPlugin,
                             ServiceInfo, column_clash, summarize)

__all__ = ["PluginManager", "FailedPlugin", "ComponentInfo", "CommandInfo", "ServiceInfo",
           "ENTRY_POINT_GROUP", "get_plugin_manager", "load_runner"]

ENTRY_POINT_GROUP = "modelopt_core"
KINDS = {"optimizer": Optimizer, "exporter": Exporter, "backend": Backend, "profiler": Profiler,
         "format": Format}
#: the core's own ``modelopt`` subcommands; a plugin cannot replace them
BUILTIN_COMMANDS = ("plugins", "describe", "run")
_HOOKS = {"optimizer": "register_optimizers", "exporter": "register_exporters",
          "backend": "register_backends", "profiler": "register_profilers",
          "format": "register_formats"}


class PluginManager:
    """Discovers plugins and holds the component registry. Build a fresh one per test."""

    def __init__(self, *, load_entry_points: bool = True, strict: bool = False) -> None:
        self.strict = strict
        self.pm = pluggy.PluginManager("modelopt_core")
        self.pm.add_hookspecs(hookspecs)
        self.failed: list[FailedPlugin] = []
        self._registry: dict[str, dict[str, ComponentInfo]] = {k: {} for k in KINDS}
        self._origin: dict[int, tuple[str, str, str]] = {}  # id(plugin obj) -> name, dist, ver
        self._commands: dict[str, CommandInfo] = {}
        self._services: dict[str, ServiceInfo] = {}
        if load_entry_points:
            self.load_entry_points()

    # ---- loading -------------------------------------------------------------------------

    def load_entry_points(self, entry_points: Any = None) -> None:
        """Load every entry point of group ``modelopt_core`` (or the given ones), isolated."""
        eps = entry_points if entry_points is not None else md.entry_points(
            group=ENTRY_POINT_GROUP)
        # built-ins first (stable otherwise): a clash keeps the built-in, whatever sys.path says
        eps = sorted(eps, key=lambda ep: getattr(getattr(ep, "dist", None), "name", None)
                     != CORE_DISTRIBUTION)
        for ep in eps:
            dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown"
            ver = getattr(getattr(ep, "dist", None), "version", None) or ""
            try:
                obj = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # a broken plugin (even sys.exit()) must not take the
                self._fail(ep.name, dist, e)  # others down
                continue
            self.register_plugin(obj, name=ep.name, distribution=dist, version=ver)
        try:  # every hook implemented has a spec (register_plugin unregistered the others)
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            self._fail(getattr(e.plugin, "__name__", repr(e.plugin)), "unknown", e)

    def register_plugin(self, obj: Any, name: str | None = None, distribution: str = "local",
                        version: str = "") -> None:
        """Register a plugin module/object implementing hooks, and collect its components."""
        name = name or getattr(obj, "__name__", repr(obj))
        if self.pm.is_registered(obj):
            return
        if self.pm.has_plugin(name):  # another object under this name: never drop it silently
            other = self._origin.get(id(self.pm.get_plugin(name)), (name, "unknown", ""))
            self._duplicate(name, distribution, DuplicateComponentError(
                f"two plugins are named {name!r}: {other[1]} and {distribution}. Kept the one "
                f"from {other[1]}; the one from {distribution} is not loaded. Uninstall one, "
                "or give its entry point another name."))
            return
        try:
            self.pm.register(obj, name=name)
            self._origin[id(obj)] = (name, distribution, version)
            self._check_hook_names(obj, name)
            for kind, hook in _HOOKS.items():
                impls = [i for i in getattr(self.pm.hook, hook).get_hookimpls() if i.plugin is obj]
                for impl in impls:
                    impl.function(register=self._registrar(kind, name, distribution, version))
            for impl in self.pm.hook.register_commands.get_hookimpls():
                if impl.plugin is obj:
                    impl.function(register=self._command_registrar(name, distribution))
            for impl in self.pm.hook.register_services.get_hookimpls():
                if impl.plugin is obj:
                    impl.function(register=self._service_registrar(name, distribution))
        except DuplicateComponentError:  # strict mode only: the plugin is rolled back
            self._unregister(obj, name)
            raise
        except KeyboardInterrupt:
            self._unregister(obj, name)
            raise
        except BaseException as e:
            self._unregister(obj, name)
            self._fail(name, distribution, e)

    def _check_hook_names(self, obj: Any, name: str) -> None:
        """pluggy's ``check_pending`` for one plugin: a hook implementation without a spec (a
        misspelled ``register_optimiser``) would otherwise register nothing without a word."""
        unknown = sorted({hc.name for hc in self.pm.get_hookcallers(obj) or []
                          if not hc.has_spec() and any(
                              i.plugin is obj and not i.optionalhook
                              for i in hc.get_hookimpls())})
        if unknown:
            known = [n for n in dir(hookspecs) if n.startswith("register_")]
            hints = "; ".join(f"{u!r}" + (f" (did you mean {close_names(u, known)[0]!r}?)"
                                          if close_names(u, known) else "") for u in unknown)
            raise PluginLoadError(
                f"plugin {name!r} implements unknown hook(s): {hints}. The hooks are: "
                f"{', '.join(known)} (modelopt_core.hookspecs).")

    def _unregister(self, obj: Any, name: str) -> None:
        if self.pm.is_registered(obj):
            self.pm.unregister(obj)
        for reg in self._registry.values():
            for k in [k for k, v in reg.items() if v.plugin == name]:
                del reg[k]
        for k in [k for k, v in self._commands.items() if v.plugin == name]:
            del self._commands[k]
        for k in [k for k, v in self._services.items() if v.plugin == name]:
            del self._services[k]

    def _fail(self, name: str, dist: str, e: BaseException) -> None:
        msg = "".join(traceback.format_exception_only(type(e), e)).strip()
        self.failed.append(FailedPlugin(name, dist, msg))
        if self.strict:
            raise PluginLoadError(f"plugin {name!r} from {dist} failed to load: {msg}") from e
        print(f"modelopt: plugin {name!r} ({dist}) failed to load and is skipped: {msg}",
              file=sys.stderr)

    def _duplicate(self, name: str, dist: str, err: DuplicateComponentError) -> None:
        """A second registration under a taken name: raise in strict mode, else record it as
        failed (the first registration is kept) and go on loading the others."""
        if self.strict:
            raise err
        msg = f"{type(err).__name__}: {err}"
        self.failed.append(FailedPlugin(name, dist, msg))
        print(f"modelopt: plugin {name!r} ({dist}): {msg}", file=sys.stderr)

    def _registrar(self, kind: str, plugin: str, dist: str, version: str):
        base = KINDS[kind]

        def register(cls: type) -> None:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"plugin {plugin!r}: register_{kind}s got {cls!r}, which is not "
                                f"a {base.__name__} subclass (register classes, not instances).")
            if not cls.name:
                raise TypeError(f"plugin {plugin!r}: {cls.__qualname__} has no `name`.")
            prev = self._registry[kind].get(cls.name)
            if prev is not None and prev.cls is not cls:
                self._duplicate(plugin, dist, DuplicateComponentError(
                    f"two plugins register {kind} {cls.name!r}: {prev.distribution} (plugin "
                    f"{prev.plugin!r}, {prev.cls.__module__}.{prev.cls.__qualname__}) and {dist} "
                    f"(plugin {plugin!r}, {cls.__module__}.{cls.__qualname__}). Kept the one "
                    f"from {prev.distribution}; the one from {dist} is skipped. Uninstall one."))
                return  # keep the first; the plugin's other components still register
            if prev is not None:
                return
            if kind == "profiler" and not self._columns_free(cls, plugin, dist):
                return  # keep the profiler that declared the column first
            self._registry[kind][cls.name] = ComponentInfo(cls, plugin, dist, version)

        return register

    def _columns_free(self, cls: type[Profiler], plugin: str, dist: str) -> bool:
        """Check the columns profiler ``cls`` declares (see :func:`column_clash`): a clash is
        recorded as a duplicate (False), or raised in strict mode."""
        err = column_clash(cls, plugin, dist, self._registry["profiler"].values())
        if err:
            self._duplicate(plugin, dist, DuplicateComponentError(err))
            return False
        return True

    def _command_registrar(self, plugin: str, dist: str):
        def register(name: str, *, help: str, setup: Any, run: Any, examples: str = "") -> None:
            if not (isinstance(name, str) and name.replace("-", "").isalnum()):
                raise TypeError(f"plugin {plugin!r}: command name {name!r} must be letters, "
                                "digits and dashes.")
            if not callable(setup) or not callable(run):
                raise TypeError(f"plugin {plugin!r}: command {name!r} needs callable `setup` "
                                "and `run`.")
            prev = self._commands.get(name)
            if name in BUILTIN_COMMANDS or prev is not None:
                owner = CORE_DISTRIBUTION if prev is None else prev.distribution
                self._duplicate(plugin, dist, DuplicateComponentError(
                    f"two plugins add the command `modelopt {name}`: {owner} and {dist}. Kept "
                    f"the one from {owner}; the one from {dist} is skipped. Uninstall one."))
                return
            self._commands[name] = CommandInfo(name, help, setup, run, examples, plugin, dist)

        return register

    def _service_registrar(self, plugin: str, dist: str):
        def register(name: str, obj: Any, *, help: str = "") -> None:
            prev = self._services.get(name)
            if prev is not None and prev.obj is not obj:
                self._duplicate(plugin, dist, DuplicateComponentError(
                    f"two plugins offer the service {name!r}: {prev.distribution} (plugin "
                    f"{prev.plugin!r}) and {dist} (plugin {plugin!r}). Kept the one from "
                    f"{prev.distribution}; the one from {dist} is skipped. Uninstall one."))
                return
            self._services[name] = ServiceInfo(name, obj, help, plugin, dist)

        return register

    def service(self, name: str, hint: str = "") -> Any:
        """The object a plugin offered as service ``name`` (hook ``register_services``);
        :class:`UnknownComponentError` with ``hint`` (what to install) when none did."""
        if name not in self._services:
            failed = f" Plugins that failed to load: {[f.name for f in self.failed]}." \
                if self.failed else ""
            raise UnknownComponentError(
                f"no installed plugin offers the {name!r} service. {hint}".rstrip() + failed)
        return self._services[name].obj

    def columns(self) -> dict[str, Column]:
        """The columns the registered profilers declare (``Profiler.columns``), by name: what
        the reports' headers, number formats and column order come from."""
        return {c.name: c for info in self.components("profiler") for c in info.cls.columns}

    def commands(self) -> list[CommandInfo]:
        """The subcommands plugins added, sorted by name."""
        return [self._commands[n] for n in sorted(self._commands)]

    def services(self) -> list[ServiceInfo]:
        """The services plugins offer (hook ``register_services``), sorted by name."""
        return [self._services[n] for n in sorted(self._services)]

    # ---- lookup --------------------------------------------------------------------------

    def components(self, kind: str | None = None) -> list[ComponentInfo]:
        """All registered components, optionally of one kind, sorted by kind and name."""
        kinds = [kind] if kind else list(KINDS)
        return [self._registry[k][n] for k in kinds for n in sorted(self._registry[k])]

    def get(self, kind: str, name: str) -> ComponentInfo:
        """Look up a component; unknown names raise with the closest registered names."""
        reg = self._registry[kind]
        if name in reg:
            return reg[name]
        hint = close_names(name, reg)
        failed = f" Plugins that failed to load: {[f.name for f in self.failed]}." \
            if self.failed else ""
        raise UnknownComponentError(
            f"no {kind} named {name!r}"
            + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else ".")
            + f" Registered {kind}s: {', '.join(sorted(reg)) or '(none)'}.{failed}")

    def backend_for(self, artifact: Any, name: str, options: dict[str, Any] | None = None
                    ) -> Backend:
        """Backend ``name`` configured with ``options`` for ``artifact``: it must run the
        artifact's format (FormatError), the config is typed (ConfigError) and the backend
        available here (BackendUnavailableError)."""
        cls = self.get("backend", name).cls
        if artifact.format not in cls.accepts:
            raise FormatError(f"backend {name!r} runs {list(cls.accepts)} artifacts, not "
                              f"{artifact.format!r} ({artifact.name}). Export first, or pick a "
                              "backend for that format.")
        inst = cls(**dict(options or {}))
        cls.ensure_available()
        return inst

    def format_for(self, name: str, model: Any = None) -> Format:
        """An instance of the Format registered as ``name``; raw bytes of an unregistered
        format (an engine blob) fall back to :class:`BytesFormat`. ArtifactError when nothing
        fits."""
        try:
            return self.get("format", name).cls()
        except UnknownComponentError:
            if model is None or isinstance(model, (bytes, bytearray)):
                return BytesFormat()
            known = ", ".join(i.name for i in self.components("format")) or "(none)"
            raise ArtifactError(
                f"no installed plugin saves or loads format {name!r} (formats here: {known}); "
                "install the plugin that provides it.") from None

    def reference_backend(self, fmt: str) -> str | None:
        """The available backend that declares itself the reference for format ``fmt``
        (``Backend.reference_for``), else any available backend that runs it; None if
        none does."""
        infos = [i for i in self.components("backend")
                 if fmt in i.cls.accepts and i.cls.availability()[0]]
        ref = [i for i in infos if fmt in i.cls.reference_for]
        return (ref or infos)[0].name if infos else None

    def runtime_for(self, artifact: Any, backend: str | None = None,
                    options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """The backend and config options ``artifact`` runs with: ``backend`` when given, else
        the runtime it carries (``props.runtime``, e.g. the search's best), else its format's
        :meth:`reference_backend`. The options are the artifact's own
        (``props.runtime_options``, when that backend is its runtime) updated with
        ``options``. :class:`BackendUnavailableError` when nothing runs the format here."""
        props = artifact.props
        name = backend or props.runtime or self.reference_backend(artifact.format)
        if name is None:
            raise BackendUnavailableError(
                f"no available backend runs {artifact.format!r} artifacts "
                f"({artifact.name}); see `modelopt plugins`, or pass a backend.")
        own = dict(props.runtime_options or {}) if name == props.runtime else {}
        return name, {**own, **dict(options or {})}

    def export_path(self, source: str, target: str) -> list[ComponentInfo]:
        """Shortest chain of exporters from ``source`` to ``target`` format (BFS)."""
        if source == target:
            return []
        exporters = self.components("exporter")
        prev: dict[str, tuple[str, ComponentInfo] | None] = {source: None}
        queue = deque([source])
        while queue:
            fmt = queue.popleft()
            for info in exporters:
                if info.cls.source == fmt and info.cls.target not in prev:
                    prev[info.cls.target] = (fmt, info)
                    queue.append(info.cls.target)
        if target not in prev:
            known = sorted({f"{i.cls.source}->{i.cls.target}" for i in exporters})
            raise NoExportPathError(
                f"no exporter chain leads from format {source!r} to {target!r}. Registered "
                f"exporters: {', '.join(known) or '(none)'}. Install a plugin that provides one.")
        chain = []
        fmt = target
        while prev[fmt] is not None:
            fmt, info = prev[fmt]  # type: ignore[misc]
            chain.append(info)
        return chain[::-1]

    def summary(self) -> dict[str, Any]:
        """Plain-data description of plugins, components and availability, and the
        commands and services plugins add (name, plugin, distribution, help; for the CLI)."""
        return summarize(self, self._origin.values())


_default: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, built on first use."""
    global _default
    if _default is None:
        _default = PluginManager()
    return _default


_registry.install(get_plugin_manager)  # the default manager, for the modules below this one


def load_runner(artifact: Any, backend: str | None = None, *,
                plugins: PluginManager | None = None, **options: Any) -> Runner:
    """A runner of ``artifact`` on ``backend`` (config ``options``) without a Session: what
    ``Session.runner`` does, for a saved artifact served or compared on its own. Without a
    backend it runs on the runtime the artifact carries, with its options (see
    :meth:`PluginManager.runtime_for`)."""
    pm = plugins or get_plugin_manager()
    backend, options = pm.runtime_for(artifact, backend, options)
    return pm.backend_for(artifact, backend, options).load(
        artifact, Context(plugins=pm, show_progress=False))


def component_origin(pm: PluginManager, cls: type[Component]) -> tuple[str, str]:
    """(plugin name, version) of a registered class, for lineage steps."""
    for info in pm.components(cls.kind):
        if info.cls is cls:
            return info.plugin, info.version
    return "", ""
