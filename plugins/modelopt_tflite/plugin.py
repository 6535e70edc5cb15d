"""Entry point of the LiteRT / TensorFlow Lite plugin (``pip install 'modelopt-core[tflite]'``)."""

from __future__ import annotations

import modelopt_core as mo

from .backend import TfliteBackend
from .exporter import TfliteExporter
from .format import TfliteFormat


@mo.hookimpl
def register_exporters(register):
    register(TfliteExporter)


@mo.hookimpl
def register_backends(register):
    register(TfliteBackend)


@mo.hookimpl
def register_formats(register):
    register(TfliteFormat)
