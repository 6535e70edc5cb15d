"""Optimizer ``quantize.static``: post-training INT8 quantization of a torch model.

BatchNorm is folded, every Conv/Linear gets a weight quantizer (per-channel symmetric INT8 by
default) and every float tensor feeding a Conv/Linear/add/concat/pool gets a per-tensor
activation quantizer (uint8 affine by default), calibrated on the session's calibration data
with the chosen observer. The result runs in torch (simulated) and exports through the ``onnx``
exporter to a QDQ graph that ONNX Runtime executes with INT8 kernels (QLinearConv, QLinearAdd,
MatMulInteger...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import modelopt_core as mo

if TYPE_CHECKING:  # torch (fx) is imported on use, never at plugin discovery
    from .graph import QuantSpec

__all__ = ["StaticQuantize", "StaticConfig", "noop", "quant_metadata", "quant_props"]

Observer = Literal["minmax", "percentile", "mse", "entropy"]


@mo.config
class StaticConfig:
    """Options of ``quantize.static``."""

    observer: Observer = mo.field("minmax", search=mo.choice("minmax", "percentile"), help="activation range calibration method")
    percentile: float = mo.field(99.99, validator=mo.in_range(50, 100, lo_open=True),
                                 help="percentile for observer='percentile'")
    per_channel: bool = mo.field(True, help="per-output-channel weight scales (else per-tensor)",
                                 search=mo.choice(True, False))
    activation_dtype: Literal["uint8", "int8"] = mo.field(
        "uint8", help="activation grid: uint8 affine (best ORT kernels) or int8")
    symmetric_activations: bool = mo.field(False, help="zero point at mid-grid / 0")
    fold_bn: bool = mo.field(True, help="fold BatchNorm into the preceding Conv/Linear")
    skip_layers: tuple[str, ...] = mo.field((), help="Conv/Linear module names kept in float")
    calibration_batches: int = mo.field(32, validator=mo.positive,
                                        help="at most this many calibration batches")


def spec_from(cfg: StaticConfig, skip: tuple[str, ...] = ()) -> QuantSpec:
    """The QuantSpec described by a static/QAT/auto config."""
    from .graph import QuantSpec

    return QuantSpec(per_channel=cfg.per_channel, act_signed=cfg.activation_dtype == "int8",
                     act_symmetric=cfg.symmetric_activations, observer=cfg.observer,
                     percentile=cfg.percentile, skip=tuple(cfg.skip_layers) + tuple(skip))


def noop(opt: mo.Optimizer, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
    """The explicit no-op step for a model with nothing to quantize (a copy, with a warning)."""
    import copy

    msg = (f"{opt.name}: the model has no Conv/Linear layer to quantize; returned it "
           "unchanged (no-op)")
    ctx.warn(msg)
    return artifact.evolve(step=opt.step(notes=[msg]), model=copy.deepcopy(artifact.model),
                           metadata={"quantized_layers": [], "noop": True})


class StaticQuantize(mo.Optimizer):
    """Post-training static INT8 quantization (BN folding, per-channel weights, calibrated)."""

    name = "quantize.static"
    stage = "precision"
    accepts = ("torch",)
    needs = ("calibration_data",)
    Config = StaticConfig

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        from .prepare import prepare_calibrated

        cfg = self.config
        batches = ctx.calibration_batches(self.name, cfg.calibration_batches)
        model, layers, notes = prepare_calibrated(artifact.model, batches, spec_from(cfg), ctx,
                                                  self.name, fold=cfg.fold_bn)
        if not layers:
            return noop(self, artifact, ctx)
        notes.append(f"quantized {len(layers)} Conv/Linear layer(s) to INT8 "
                     f"({'per-channel' if cfg.per_channel else 'per-tensor'} weights, "
                     f"{cfg.activation_dtype} activations, {cfg.observer} calibration on "
                     f"{len(batches)} batch(es))")
        return artifact.evolve(step=self.step(notes=notes), model=model,
                               metadata=quant_metadata(model, layers, cfg.skip_layers),
                               props=quant_props(model, batches[0]))

    def rebuild(self, model: Any, example_inputs: tuple[Any, ...], metadata: Any,
                restore: Any = None) -> Any:
        """Traced graph + quantizers (scales come from the saved weights; everything else
        from the step's config, so no restore record is needed)."""
        from .prepare import replay

        return replay(model, example_inputs, spec_from(self.config), self.name,
                      fold=self.config.fold_bn)


def quant_metadata(model: Any, layers: Sequence[str],
                   float_layers: Sequence[str]) -> dict[str, Any]:
    """Metadata shared by the quantizing optimizers (what was quantized, how large)."""
    from .prepare import quantized_size_bytes

    return {"quantized_layers": list(layers), "float_layers": list(float_layers),
            "quantization": "int8-qdq", "int8_size_bytes": quantized_size_bytes(model)}


def quant_props(model: Any, batch: tuple[Any, ...]) -> dict[str, Any]:
    """Typed artifact properties of a fake-quantized torch model: INT8 is simulated, the QDQ
    graph exports through TorchScript, and the export's numerics check should allow a few
    output quantization steps (ONNX Runtime's integer kernels requantize with their own
    rounding)."""
    import torch

    with torch.no_grad():
        out = model.eval()(*batch)
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    amax = max(float(o.abs().max()) for o in outs if o.numel())
    return {"simulated": "int8", "onnx_exporter": "torchscript", "check_rtol": 0.1,
            "check_atol": round(0.1 * max(amax, 1e-6), 6)}
