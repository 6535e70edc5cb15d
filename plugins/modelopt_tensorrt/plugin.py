"""Entry point of the built-in TensorRT plugin (importable everywhere; usable on NVIDIA GPUs)."""

from __future__ import annotations

import modelopt_core as mo

from .engine import TrtBackend, TrtExporter


@mo.hookimpl
def register_exporters(register):
    register(TrtExporter)


@mo.hookimpl
def register_backends(register):
    register(TrtBackend)


@mo.hookimpl
def register_formats(register):
    class TrtFormat(mo.BytesFormat):
        """Serialized TensorRT engines (model.bin): built for one GPU and TensorRT version."""

        name = "tensorrt"

    register(TrtFormat)
