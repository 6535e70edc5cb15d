"""Entry point of the built-in ONNX plugin."""

from __future__ import annotations

import modelopt_core as mo

from .exporter import OnnxExporter
from .format import OnnxFormat
from .optimize import OnnxOptimize
from .quantize import OnnxQuantizeDynamic, OnnxQuantizeStatic


@mo.hookimpl
def register_exporters(register):
    register(OnnxExporter)


@mo.hookimpl
def register_optimizers(register):
    register(OnnxOptimize)
    register(OnnxQuantizeStatic)
    register(OnnxQuantizeDynamic)


@mo.hookimpl
def register_formats(register):
    register(OnnxFormat)
