"""Knowledge distillation for modelopt: ``distill.logits`` (Hinton KD), ``distill.features``
(intermediate features with automatic adapters) and ``distill.self_ema`` (EMA self-distillation).
All of them train with the shared loop :func:`modelopt_core.training.fit`."""

from __future__ import annotations

from typing import Any

from .common import kd_loss, register_teacher
from .features import FeatureDistill, auto_layers, probe_layers
from .logits import LogitsDistill, mix_inputs
from .self_ema import EMA, SelfEMADistill

__all__ = ["LogitsDistill", "FeatureDistill", "SelfEMADistill", "EMA", "FeatureAdapter",
           "make_adapter", "kd_loss", "mix_inputs", "register_teacher", "probe_layers", "auto_layers"]


def __getattr__(name: str) -> Any:
    # the adapters subclass nn.Module: importing them imports torch, so only on first use
    # (plugin discovery imports this package and must stay light)
    if name in ("FeatureAdapter", "make_adapter"):
        from . import adapters

        return getattr(adapters, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
