"""Entry point module (``modelopt_core`` group): registers this distribution's components."""

from __future__ import annotations

import modelopt_core as mo

from .flops import FlopsProfiler
from .fuse_bn import FuseBatchNorm


@mo.hookimpl
def register_optimizers(register):
    """Register ``example.fuse_bn``."""
    register(FuseBatchNorm)


@mo.hookimpl
def register_profilers(register):
    """Register ``example.flops``."""
    register(FlopsProfiler)
