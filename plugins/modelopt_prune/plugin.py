"""Entry point of the built-in compression plugin (pruning, weight sharing, low-rank, arch)."""

from __future__ import annotations

import modelopt_core as mo

from .structured import StructuredPrune
from .unstructured import GlobalPrune, UnstructuredPrune


@mo.hookimpl
def register_optimizers(register):
    for cls in (UnstructuredPrune, GlobalPrune, StructuredPrune):
        register(cls)
