"""Entry point of the built-in pipeline plugin."""

from __future__ import annotations

import modelopt_core as mo

from .backend import PipelineBackend


@mo.hookimpl
def register_backends(register):
    register(PipelineBackend)
