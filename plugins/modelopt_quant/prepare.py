"""Shared preparation for static PTQ, QAT and auto: copy, trace, fold BN, insert quantizers,
calibrate from the session's calibration batches."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

import modelopt_core as mo

from .fake_quant import FakeQuant, QuantConv, QuantLinear
from .graph import CONVS, QuantSpec, act_quantizers, fold_bn, insert_quantizers

__all__ = ["prepare", "prepare_calibrated", "calibrate", "check_calibration",
           "quantized_size_bytes", "replay"]


def prepare(model: nn.Module, example: tuple[Any, ...], spec: QuantSpec, ctx: mo.Context,
            who: str, fold: bool = True) -> tuple[nn.Module, list[str], list[str]]:
    """A quantizer-instrumented copy of ``model`` (never touching ``model``).

    Returns ``(module, quantized layer names, notes)``; an empty layer list means nothing
    could be quantized."""
    src = copy.deepcopy(model).eval()
    _check_weights(src)
    notes: list[str] = []
    try:
        gm = fx.symbolic_trace(src)
    except Exception as e:  # dynamic control flow: quantize module by module instead
        msg = (f"{who}: torch.fx could not trace the model ({type(e).__name__}: "
               f"{str(e).splitlines()[0][:160]}); used module-level quantizers (inputs of "
               "Conv/Linear only; fewer ONNX Runtime fusions)")
        ctx.warn(msg)
        return _module_level(src, spec, fold), _names(src), [msg]
    if fold:
        n = fold_bn(gm)
        if n:
            notes.append(f"folded {n} BatchNorm layer(s) into the preceding Conv/Linear")
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        ShapeProp(gm).propagate(*example)
    layers = insert_quantizers(gm, spec)
    return gm, layers, notes


def prepare_calibrated(model: nn.Module, batches: list[tuple[Any, ...]], spec: QuantSpec,
                       ctx: mo.Context, who: str, fold: bool = True
                       ) -> tuple[nn.Module, list[str], list[str]]:
    """:func:`prepare` on ``ctx.example_inputs`` (or the first batch), then :func:`calibrate`
    on ``batches`` (checked first); an empty layer list means nothing could be quantized."""
    check_calibration(batches, who)
    example = ctx.example_inputs or batches[0]
    gm, layers, notes = prepare(model, example, spec, ctx, who, fold=fold)
    if layers:
        calibrate(gm, batches, ctx, who)
    return gm, layers, notes


def replay(model: nn.Module, example: tuple[Any, ...], spec: QuantSpec, who: str,
           fold: bool = True) -> nn.Module | None:
    """The structure :func:`prepare` builds, with every quantizer marked calibrated, for
    loading saved scales and weights into (no data; ``None`` when nothing is quantized, or
    when ``model`` already is such a quantized model, e.g. the artifact's own module)."""
    if any(isinstance(m, FakeQuant) for m in model.modules()):
        return None
    ctx = mo.Context(show_progress=False)
    gm, layers, _ = prepare(model, example, spec, ctx, who, fold=fold)
    if not layers:
        return None
    for m in gm.modules():
        if isinstance(m, FakeQuant):
            m.calibrated = True
    return gm


def _names(m: nn.Module) -> list[str]:
    return [n for n, x in m.named_modules() if isinstance(x, (QuantConv, QuantLinear))]


class _InputQuant(nn.Module):
    """Module-level fallback: quantize the input, then run the weight-quantized layer."""

    def __init__(self, fq: FakeQuant, layer: nn.Module) -> None:
        super().__init__()
        self.input_quant, self.inner = fq, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.input_quant(x))


def _module_level(m: nn.Module, spec: QuantSpec, fold: bool) -> nn.Module:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from .graph import BNS

    for name, child in list(m.named_children()):
        if isinstance(child, nn.Sequential) and fold:
            kids = list(child)
            for i in range(len(kids) - 1):
                if isinstance(kids[i], CONVS) and isinstance(kids[i + 1], BNS):
                    child[i] = fuse_conv_bn_eval(kids[i], kids[i + 1])
                    child[i + 1] = nn.Identity()
        if name in spec.skip:
            continue
        if isinstance(child, CONVS + (nn.Linear,)):
            wrap = QuantConv if isinstance(child, CONVS) else QuantLinear
            setattr(m, name, _InputQuant(
                spec.act_quant(f"activation (input of {name!r})"),
                wrap(child, spec.per_channel, f"layer {name!r}")))
        else:
            _module_level(child, QuantSpec(per_channel=spec.per_channel,
                                           act_signed=spec.act_signed,
                                           act_symmetric=spec.act_symmetric,
                                           observer=spec.observer, percentile=spec.percentile,
                                           skip={s.split(".", 1)[1] for s in spec.skip
                                                 if s.startswith(name + ".")}), fold)
    return m


def _check_weights(m: nn.Module) -> None:
    for name, p in list(m.named_parameters()) + list(m.named_buffers()):
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            layer = name.rpartition(".")[0] or name
            raise mo.NumericalError(
                f"layer {layer!r}: {name} holds NaN or Inf; fix or retrain the model before "
                "quantizing.")


def check_calibration(batches: list[tuple[Any, ...]], who: str) -> None:
    """:class:`DataError` when the calibration inputs are constant (one value everywhere);
    the check the ONNX quantizer shares (:func:`modelopt_core.data.check_not_constant`)."""
    mo.data.check_not_constant(batches, who)


def calibrate(model: nn.Module, batches: list[tuple[Any, ...]], ctx: mo.Context,
              who: str) -> None:
    """Observe activations on ``batches`` and set every activation quantizer's scale."""
    quants = list(act_quantizers(model).values())
    for q in quants:
        q.start_observing()
    model.eval()
    try:
        with torch.no_grad():
            for b in ctx.progress(batches, total=len(batches), desc=f"{who}: calibrating"):
                model(*b)
        for q in quants:
            q.finish_observing()
    finally:
        for q in quants:
            q.observing = False


def quantized_size_bytes(model: nn.Module) -> int:
    """Deployed size estimate: INT8 weights for quantized layers, float32 for the rest."""
    total = 0
    seen = set()
    for name, mod in model.named_modules():
        if isinstance(mod, (QuantConv, QuantLinear)) and mod.weight_quant.enabled:
            total += mod.layer.weight.numel()
            seen.add(id(mod.layer.weight))
    for p in model.parameters():
        if id(p) not in seen:
            total += p.numel() * p.element_size()
    return total
