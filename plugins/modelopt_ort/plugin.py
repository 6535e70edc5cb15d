"""Entry point of the built-in ONNX Runtime plugin."""

from __future__ import annotations

import modelopt_core as mo

from .backend import OrtBackend


@mo.hookimpl
def register_backends(register):
    register(OrtBackend)
