"""Entry point of the built-in quantization plugin."""

from __future__ import annotations

import modelopt_core as mo


@mo.hookimpl
def register_optimizers(register):
    from .auto import AutoQuantize
    from .dynamic import DynamicQuantize
    from .half import BF16, FP16, OnnxFP16
    from .qat import QATQuantize
    from .static import StaticQuantize

    for cls in (StaticQuantize, QATQuantize, DynamicQuantize, BF16, FP16, OnnxFP16,
                AutoQuantize):
        register(cls)
