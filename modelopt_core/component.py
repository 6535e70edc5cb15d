"""The base of every component: a name, a typed ``Config``, availability from its
optional dependencies, and the lineage :class:`Step` it adds."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from .artifact import Step
from .config import build_config, config, config_to_data
from .errors import BackendUnavailableError

__all__ = ["Component", "EmptyConfig"]


@config
class EmptyConfig:
    """A component with no options."""


class Component:
    """Base of every component. Subclasses set ``name`` and, if they have options, ``Config``."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    Config: ClassVar[type] = EmptyConfig
    #: importable modules this component needs; missing ones make it unavailable (the
    #: distributions providing them are recorded in every report's environment)
    requires: ClassVar[tuple[str, ...]] = ()
    #: more distributions whose versions the reports record (beyond those of ``requires``)
    libraries: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str] = ""

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        if config is None:
            config = build_config(self.Config, kwargs, f"{self.kind} {self.name!r}")
        elif kwargs:
            raise TypeError("pass either a Config instance or keyword options, not both")
        self.config = config

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """(available, reason): missing optional dependencies or hardware make it unavailable.

        A dotted entry of ``requires`` (``"tensorrt.plugins"``) is missing when any of its
        parent packages is; a package that is installed but fails to import makes the
        component unavailable too, with the error as the reason. Never raises."""
        import sys

        missing, broken = [], []
        for mod in cls.requires:
            parts = str(mod).split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                try:  # find_spec imports the parents of a dotted name
                    found = importlib.util.find_spec(name) is not None
                except ModuleNotFoundError:
                    found = False
                except ValueError as e:  # imported without a __spec__, or not a module name
                    if name not in sys.modules:
                        broken.append(f"{name} ({type(e).__name__}: {str(e)[:160]})")
                        break
                    found = True
                except ImportError as e:
                    broken.append(f"{name} ({type(e).__name__}: {str(e)[:160]})")
                    break
                except Exception as e:  # a parent package whose import raises
                    broken.append(f"{name} (import failed: {type(e).__name__}: {str(e)[:160]})")
                    break
                if not found:
                    missing.append(mod if name == mod else f"{mod} (no package {name!r})")
                    break
        if missing or broken:
            hint = f" Install with: {cls.install_hint}" if cls.install_hint else ""
            why = []
            if missing:
                why.append(f"missing module(s) {', '.join(missing)}")
            if broken:
                why.append(f"module(s) that fail to import: {', '.join(broken)}")
            return False, "; ".join(why) + f".{hint}"
        return True, ""

    @classmethod
    def ensure_available(cls) -> None:
        """Raise :class:`BackendUnavailableError` with the reason when unavailable."""
        ok, why = cls.availability()
        if not ok:
            raise BackendUnavailableError(f"{cls.kind} {cls.name!r} is unavailable here: {why}")

    @classmethod
    def describe(cls) -> str:
        """First line of the class docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def step(self, kind: str | None = None, notes: Sequence[str] = (),
             restore: Mapping[str, Any] | None = None) -> Step:
        """The lineage Step this component adds (the session fills plugin, version, duration).

        ``restore`` is this step's own restore record (plain JSON data, saved in the
        manifest): what :meth:`Optimizer.rebuild` needs to re-create the step's structure
        when the artifact is loaded, e.g. ``{"shared_layers": {...}}``."""
        import json

        restore = dict(restore or {})
        try:
            json.dumps(restore, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{self.kind} {self.name!r}: the restore record must be plain JSON "
                            f"data (dicts, lists, str, int, float, bool, None): {e}") from e
        return Step(self.name, kind or self.kind, config=config_to_data(self.config),
                    notes=tuple(notes), restore=restore)
