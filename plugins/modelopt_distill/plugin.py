"""Entry point of the built-in distillation plugin."""

from __future__ import annotations

import modelopt_core as mo

from .features import FeatureDistill
from .logits import LogitsDistill
from .self_ema import SelfEMADistill


@mo.hookimpl
def register_optimizers(register):
    for cls in (LogitsDistill, FeatureDistill, SelfEMADistill):
        register(cls)
