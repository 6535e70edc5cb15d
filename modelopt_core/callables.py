"""The user's callables a recipe or a command names: ``"package.module:callable"`` imported
(:func:`import_callable`) and a model built from one (:func:`build_model`)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["build_model", "import_callable"]


def import_callable(ref: str, field: str, folder: Path | None = None,
                    where: str = "recipe") -> Any:
    """The callable named by ``ref`` (``"package.module:callable"``), importing its module
    with ``folder`` and the working directory on ``sys.path``; a :class:`ConfigError` that
    names ``where`` and ``field`` when it is malformed, missing or not callable."""
    mod, _, attr = ref.partition(":") if isinstance(ref, str) else ("", "", "")
    if not mod or not attr:
        raise ConfigError(f"{where}: {field} must look like 'package.module:callable', "
                          f"got {ref!r}.")
    extra = [str(x) for x in (folder, Path.cwd()) if x is not None
             and str(x) not in sys.path]
    sys.path[:0] = extra  # the recipe's folder and the working directory are importable
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{where}: cannot import {field} {ref!r}: {e}") from e
    finally:
        for x in extra:
            sys.path.remove(x)
    if not callable(obj):
        raise ConfigError(f"{where}: {field} {ref!r} is not callable.")
    return obj


def build_model(model: Any, kwargs: Any = None, where: str = "recipe") -> Any:
    """An architecture to load a torch-format artifact's weights into: ``model`` itself (an
    ``nn.Module``, or None), or what the ``"package.module:callable"`` it names returns when
    called with ``kwargs`` (a mapping)."""
    if not isinstance(model, str):
        if kwargs:
            raise ConfigError(f"{where}: model_kwargs go with model='package.module:callable'; "
                              f"pass a built model without them.")
        return model
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ConfigError(f"{where}: model_kwargs must be a mapping of keyword arguments, got "
                          f"{type(kwargs).__name__}.")
    try:
        return import_callable(model, "model", where=where)(**(kwargs or {}))
    except TypeError as e:
        raise ConfigError(f"{where}: model {model!r} with {kwargs or {}}: {e}") from e
