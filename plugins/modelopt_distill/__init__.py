"""Knowledge distillation for modelopt: ``distill.logits`` (Hinton KD), ``distill.features``
(intermediate features with automatic adapters) and ``distill.self_ema`` (EMA self-distillation).
All of them train with the shared loop :func:`modelopt_core.training.fit`."""

from __future__ import annotations

from .adapters import FeatureAdapter, make_adapter
from .common import kd_loss, register_teacher
from .features import FeatureDistill, auto_layers, probe_layers
from .logits import LogitsDistill, mix_inputs
from .self_ema import EMA, SelfEMADistill

__all__ = ["LogitsDistill", "FeatureDistill", "SelfEMADistill", "EMA", "FeatureAdapter",
           "make_adapter", "kd_loss", "mix_inputs", "register_teacher", "probe_layers", "auto_layers"]
