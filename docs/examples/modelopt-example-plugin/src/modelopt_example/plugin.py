"""Entry point module (``modelopt_core`` group): registers this distribution's components."""

from __future__ import annotations

import modelopt_core as mo

from .flops import FlopsProfiler
from .fuse_bn import FuseBatchNorm
from .npz import NpzExporter, NpzFormat, NumpyBackend


@mo.hookimpl
def register_optimizers(register):
    """Register ``example.fuse_bn``."""
    register(FuseBatchNorm)


@mo.hookimpl
def register_profilers(register):
    """Register ``example.flops``."""
    register(FlopsProfiler)


@mo.hookimpl
def register_exporters(register):
    """Register ``example.npz`` (torch -> example.npz)."""
    register(NpzExporter)


@mo.hookimpl
def register_formats(register):
    """Register the ``example.npz`` format (graph.json + weights/*.npy)."""
    register(NpzFormat)


@mo.hookimpl
def register_backends(register):
    """Register ``example.numpy``."""
    register(NumpyBackend)
