"""modelopt-example-plugin: ``example.fuse_bn`` (optimizer) and ``example.flops`` (profiler)."""

from __future__ import annotations

__version__ = "0.1.0"
