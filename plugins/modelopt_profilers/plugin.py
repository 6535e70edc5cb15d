"""Entry point of the built-in profilers plugin."""

from __future__ import annotations

import modelopt_core as mo

from .energy import EnergyProfiler
from .profilers import (AccuracyProfiler, LatencyProfiler, MemoryProfiler, SizeProfiler,
                        ThroughputProfiler)


@mo.hookimpl
def register_profilers(register):
    for cls in (LatencyProfiler, ThroughputProfiler, MemoryProfiler, SizeProfiler,
                AccuracyProfiler, EnergyProfiler):
        register(cls)
