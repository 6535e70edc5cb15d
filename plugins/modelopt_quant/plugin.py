"""Entry point of the built-in quantization plugin."""

from __future__ import annotations

import modelopt_core as mo


@mo.hookimpl
def register_optimizers(register):
    from .static import StaticQuantize

    for cls in (StaticQuantize,):
        register(cls)
