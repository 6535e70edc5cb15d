"""Entry point of the built-in OpenVINO plugin (``pip install modelopt-core[openvino]``).

Only ``modelopt_core`` is imported here and by the modules below at load time: openvino,
nncf, torch and numpy are imported inside the components' methods, so discovery stays light
and the components report themselves unavailable (with the install hint) when OpenVINO or
NNCF is missing."""

from __future__ import annotations

import modelopt_core as mo

from .backend import OpenVinoBackend
from .exporter import OnnxToOpenVino, TorchToOpenVino
from .format import OpenVinoFormat
from .quantize import OpenVinoCompressWeights, OpenVinoQuantize


@mo.hookimpl
def register_formats(register):
    register(OpenVinoFormat)


@mo.hookimpl
def register_exporters(register):
    register(TorchToOpenVino)
    register(OnnxToOpenVino)


@mo.hookimpl
def register_backends(register):
    register(OpenVinoBackend)


@mo.hookimpl
def register_optimizers(register):
    register(OpenVinoQuantize)
    register(OpenVinoCompressWeights)
