"""Entry point of the built-in compression plugin (pruning, weight sharing, low-rank, arch)."""

from __future__ import annotations

import modelopt_core as mo

from .depthwise import DepthwiseSeparable
from .iterative import IterativePrune
from .low_rank import LowRank
from .slimming import Slimming
from .structured import StructuredPrune
from .unstructured import GlobalPrune, UnstructuredPrune
from .weight_sharing import WeightSharing


@mo.hookimpl
def register_optimizers(register):
    for cls in (UnstructuredPrune, GlobalPrune, StructuredPrune, Slimming, IterativePrune,
                WeightSharing, LowRank,
                DepthwiseSeparable):
        register(cls)
