"""Entry point of the built-in torch plugin."""

from __future__ import annotations

import modelopt_core as mo

from .backends import TorchBackend, TorchCompileBackend
from .format import TorchFormat


@mo.hookimpl
def register_backends(register):
    register(TorchBackend)
    register(TorchCompileBackend)


@mo.hookimpl
def register_formats(register):
    register(TorchFormat)
