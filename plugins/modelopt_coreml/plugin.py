"""Entry point of the Core ML plugin (``pip install 'modelopt-core[coreml]'``)."""

from __future__ import annotations

import modelopt_core as mo

from .backend import CoremlBackend
from .exporter import CoremlExporter
from .format import CoremlFormat


@mo.hookimpl
def register_exporters(register):
    register(CoremlExporter)


@mo.hookimpl
def register_backends(register):
    register(CoremlBackend)


@mo.hookimpl
def register_formats(register):
    register(CoremlFormat)
