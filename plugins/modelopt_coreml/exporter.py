"""Exporter ``coreml``: torch -> Core ML ML Program with coremltools.

The model goes through ``torch.export.export`` (a symbolic batch dim where the artifact has
one) and ``coremltools.convert(exported_program, convert_to="mlprogram", ...)``; when that
fails and ``exporter="auto"``, through ``torch.jit.trace`` instead (the note says why).
Inputs and outputs are named after the artifact's specs, float32 at the boundary whatever the
compute precision. Optional weight compression with ``coremltools.optimize.coreml``: INT8
linear (symmetric, per channel) quantization or n-bit k-means palettization.

Every export is validated without Core ML (spec, MIL program, weights: see
:func:`modelopt_coreml.package.validate_package`); its op count and weight storage land in
the step's notes. Numerics are checked against torch on macOS only, where Core ML predicts.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Sequence
from typing import Any, Literal

import attrs

import modelopt_core as mo

#: upper bound of a flexible dim converted through torch.jit.trace when max_batch is None
#: (ML Programs refuse unbounded ranges there; torch.export conversions may stay unbounded)
TRACE_MAX_BATCH = 1024
TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15",
           "watchOS8", "watchOS9", "watchOS10", "watchOS11", "tvOS15", "tvOS16", "tvOS17",
           "tvOS18")
#: (rtol, atol) of the macOS numerics check: every output element within
#: ``atol + rtol * max|torch output|`` of torch's
TOLERANCES = {"fp32": (1e-3, 1e-4), "fp16": (2e-2, 1e-3), "compressed": (0.1, 1e-3)}


def _target(inst: Any, attr: Any, value: Any) -> None:
    if value is not None and value not in TARGETS:
        raise mo.ConfigError(f"{attr.name}: {value!r} is not a Core ML deployment target; "
                             f"choose one of {list(TARGETS)} (or None for coremltools' "
                             "default).")


def _nbits(inst: Any, attr: Any, value: Any) -> None:
    if value not in (1, 2, 3, 4, 6, 8):
        raise mo.ConfigError(f"{attr.name}: palettization supports 1, 2, 3, 4, 6 or 8 bits, "
                             f"got {value}.")


@mo.config
class CoremlExportConfig:
    """Options of the coreml exporter."""

    compute_precision: Literal["fp16", "fp32"] = mo.field(
        "fp16", help="ML Program compute precision (weights and activations); I/O stay fp32")
    compression: Literal["none", "int8", "palettize"] = mo.field(
        "none", help="weight compression (coremltools.optimize.coreml): 'int8': linear "
                     "symmetric per-channel INT8 weights; 'palettize': k-means look-up table "
                     "of palettize_nbits bits")
    palettize_nbits: int = mo.field(4, validator=_nbits, help="bits per palettized weight")
    compress_min_elements: int = mo.field(
        2048, validator=mo.positive,
        help="compress only weights with at least this many elements (coremltools' "
             "weight_threshold)")
    minimum_deployment_target: str | None = mo.field(
        None, validator=_target,
        help="e.g. 'iOS16', 'macOS13' (default: coremltools' own, raised as compression needs)")
    dynamic_batch: bool = mo.field(True, help="a flexible batch dim (falls back to a fixed "
                                   "one, with a note, when it does not convert)")
    max_batch: int | None = mo.field(
        None, validator=mo.positive,
        help="upper bound of a flexible batch (default: unbounded from torch.export, 1024 "
             "from torch.jit.trace)")
    exporter: Literal["auto", "torch.export", "torch.jit.trace"] = mo.field(
        "auto", help="'auto': torch.export, falling back to torch.jit.trace when it fails")
    check_numerics: bool = mo.field(True, help="on macOS: compare Core ML's prediction with "
                                    "torch (elsewhere Core ML cannot predict: skipped, noted)")
    rtol: float | None = mo.field(
        None, validator=mo.in_range(0, 10),
        help="numerics check: allowed error as a fraction of the largest torch output "
             "magnitude (default fp32 1e-3, fp16 2e-2, compressed 0.1)")
    atol: float | None = mo.field(None, validator=mo.in_range(0, 1e3),
                                  help="numerics check: absolute allowance (default 1e-4 / 1e-3)")


def is_macos() -> bool:
    return sys.platform == "darwin"


class CoremlExporter(mo.Exporter):
    """PyTorch -> Core ML ML Program (coremltools; FP16/FP32, INT8 or palettized weights)."""

    name = "coreml"
    source = "torch"
    target = "coreml"
    Config = CoremlExportConfig
    requires = ("coremltools",)
    install_hint = "pip install 'modelopt-core[coreml]' (coremltools)"

    def export(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        from .package import validate_package

        cfg = self.config
        notes: list[str] = []
        model = copy.deepcopy(artifact.model).eval()
        if artifact.props.compute_dtype:
            model = model.float()
            notes.append(f"converted the {artifact.props.compute_dtype} model from float32 "
                         f"weights; compute precision {cfg.compute_precision}")
        if not ctx.example_inputs:
            raise mo.ExportError("coreml: the session has no example inputs to convert with.")
        example = tuple(x.float() if x.is_floating_point() else x for x in ctx.example_inputs)
        in_specs, out_specs = artifact.inputs, artifact.outputs
        dyn = _dynamic_shapes(model, in_specs, cfg.max_batch) if cfg.dynamic_batch else None
        ctx.status(f"coreml: converting {artifact.name!r} with coremltools...")
        ml, how, flexible = self._convert(model, example, dyn, in_specs, out_specs)
        notes.append(how)
        if not flexible:  # fixed shapes: the specs say so, and the runner refuses others
            in_specs, out_specs = _pin(in_specs, out_specs, example)
        if cfg.compression != "none":
            ml = self._compress(ml)
            notes.append(self._compression_note())
        ctx.status("coreml: validating the package (spec, MIL program, weights)...")
        summary = validate_package(ml)
        notes.append(f"ML Program ({summary['opset']}): {summary['op_count']} ops, layer "
                     f"weights {summary['weights']}")
        meta: dict[str, Any] = {"coreml_op_count": summary["op_count"],
                                "coreml_weights": summary["weights"],
                                "coreml_compute_precision": cfg.compute_precision}
        if cfg.check_numerics:
            if is_macos():
                meta.update(self._check(artifact, ctx, ml, in_specs, out_specs, notes))
            else:
                notes.append("numerics not checked: Core ML prediction runs only on macOS")
        return artifact.evolve(step=self.step(notes=notes), format="coreml", model=ml,
                               metadata=meta, inputs=in_specs, outputs=out_specs)

    # ---- conversion -----------------------------------------------------------------------

    def _convert(self, model: Any, example: tuple, dyn: Any,
                 in_specs: Sequence[mo.TensorSpec],
                 out_specs: Sequence[mo.TensorSpec]) -> tuple[Any, str, bool]:
        """(MLModel, note, flexible batch?): symbolic dims are converted from inputs of 2 rows
        (a size of 1 would specialize them), fixed shapes from the example inputs."""
        cfg = self.config
        tiled = tuple(mo.tile_batch(x, 2) for x in example) if dyn is not None else example
        errors = []
        if cfg.exporter in ("auto", "torch.export"):
            for shapes in ([dyn, None] if dyn is not None else [None]):
                try:
                    ml = self._from_export(model, tiled if shapes is not None else example,
                                           shapes, in_specs, out_specs)
                    return ml, ("from torch.export" + (", flexible batch" if shapes else
                                                       ", fixed shapes")
                                + (f" (a flexible batch failed: {errors[-1]})" if errors
                                   else "")), shapes is not None
                except mo.ModeloptError:
                    raise
                except Exception as e:  # noqa: BLE001 - any failure falls back (noted)
                    errors.append(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
                                  if str(e).strip() else type(e).__name__)
            if cfg.exporter == "torch.export":
                raise mo.ExportError(f"coreml: conversion from torch.export failed: "
                                     f"{errors[-1]}")
        try:
            ml = self._from_trace(model, tiled, dyn is not None, in_specs, out_specs)
        except Exception as e:
            first = f" torch.export failed first: {errors[-1]}." if errors else ""
            raise mo.ExportError(f"coreml: conversion failed.{first} torch.jit.trace: "
                                 f"{type(e).__name__}: {str(e)[:400]}") from e
        why = f" (torch.export conversion failed: {errors[-1]})" if errors else ""
        return ml, "from torch.jit.trace" + why, dyn is not None

    def _common(self) -> dict[str, Any]:
        import coremltools as ct

        cfg = self.config
        kw: dict[str, Any] = {
            "convert_to": "mlprogram",
            "compute_precision": (ct.precision.FLOAT16 if cfg.compute_precision == "fp16"
                                  else ct.precision.FLOAT32),
            "skip_model_load": not is_macos()}
        if cfg.minimum_deployment_target:
            kw["minimum_deployment_target"] = getattr(ct.target,
                                                      cfg.minimum_deployment_target)
        return kw

    def _from_export(self, model: Any, args: tuple, dyn: Any,
                     in_specs: Sequence[mo.TensorSpec],
                     out_specs: Sequence[mo.TensorSpec]) -> Any:
        import coremltools as ct
        import torch

        with quiet():
            ep = torch.export.export(model, args, dynamic_shapes=dyn).run_decompositions({})
            return ct.convert(ep, inputs=_ct_inputs(in_specs, args),
                              outputs=_ct_outputs(out_specs), **self._common())

    def _from_trace(self, model: Any, args: tuple, flexible: bool,
                    in_specs: Sequence[mo.TensorSpec],
                    out_specs: Sequence[mo.TensorSpec]) -> Any:
        import coremltools as ct
        import torch

        with quiet(), torch.no_grad():
            traced = torch.jit.trace(model, args)
            return ct.convert(traced, inputs=_ct_inputs(in_specs, args, traced=True,
                                                        flexible=flexible,
                                                        max_batch=self.config.max_batch),
                              outputs=_ct_outputs(out_specs), **self._common())

    def _compress(self, ml: Any) -> Any:
        import coremltools.optimize.coreml as oc

        cfg = self.config
        if cfg.compression == "int8":
            op_cfg = oc.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                granularity="per_channel",
                                                weight_threshold=cfg.compress_min_elements)
            with quiet():
                return oc.linear_quantize_weights(ml, oc.OptimizationConfig(global_config=op_cfg))
        op_cfg = oc.OpPalettizerConfig(mode="kmeans", nbits=cfg.palettize_nbits,
                                       granularity="per_tensor",
                                       weight_threshold=cfg.compress_min_elements)
        with quiet():
            return oc.palettize_weights(ml, oc.OptimizationConfig(global_config=op_cfg))

    def _compression_note(self) -> str:
        cfg = self.config
        what = ("INT8 linear symmetric per-channel weights" if cfg.compression == "int8"
                else f"{cfg.palettize_nbits}-bit k-means palettized weights")
        return (f"{what} (coremltools.optimize.coreml; weights of "
                f">= {cfg.compress_min_elements} elements)")

    # ---- numerics (macOS) -----------------------------------------------------------------

    def _check(self, artifact: mo.ModelArtifact, ctx: mo.Context, ml: Any,
               in_specs: Sequence[mo.TensorSpec], out_specs: Sequence[mo.TensorSpec],
               notes: list[str]) -> dict[str, Any]:
        import numpy as np
        import torch

        from .backend import predict

        cfg = self.config
        key = "compressed" if cfg.compression != "none" else cfg.compute_precision
        rtol, atol = TOLERANCES[key]
        rtol = cfg.rtol if cfg.rtol is not None else rtol
        atol = cfg.atol if cfg.atol is not None else atol
        xs = tuple(ctx.example_inputs)
        model = copy.deepcopy(artifact.model).eval()
        with torch.no_grad():
            out = model(*[x.to(getattr(torch, artifact.props.compute_dtype))
                          if artifact.props.compute_dtype and x.is_floating_point() else x
                          for x in xs])
        ref = [out] if isinstance(out, torch.Tensor) else list(out)
        got = predict(ml, [s.name for s in in_specs], [s.name for s in out_specs],
                      [x.numpy() for x in xs])
        errs = mo.check_outputs(
            "coreml", [r.float().numpy() for r in ref], [np.asarray(g) for g in got],
            rtol=rtol, atol=atol, scale_floor=1.0, names=[s.name for s in out_specs],
            runtime="Core ML model", hint="Try compute_precision='fp32', less compression, "
            "or raise rtol/atol.")
        notes.append(f"numerics vs torch (Core ML on macOS): max abs error "
                     f"{errs['max_abs_error']:.3g}")
        return {"max_abs_error": errs["max_abs_error"]}


# ---- helpers ------------------------------------------------------------------------------

def _dynamic_shapes(model: Any, specs: Sequence[mo.TensorSpec], max_batch: int | None) -> Any:
    """torch.export ``dynamic_shapes`` for the specs' symbolic dims (None: all static)."""
    from modelopt_core import export_dynamic_shapes

    return export_dynamic_shapes(model, specs, max_batch)


def _np_dtype(spec_dtype: str) -> Any:
    import numpy as np

    if spec_dtype.startswith(("float", "bfloat")):
        return np.float32
    if spec_dtype == "bool":
        return np.bool_
    return np.int32  # Core ML has no int64 inputs


def _ct_inputs(specs: Sequence[mo.TensorSpec], args: tuple, traced: bool = False,
               flexible: bool = False, max_batch: int | None = None) -> list[Any]:
    """coremltools input types named after the specs. A traced model needs its shapes spelled
    out (symbolic dims as ``RangeDim`` when ``flexible``); an ExportedProgram carries them."""
    import coremltools as ct

    out = []
    for spec, x in zip(specs, args):
        kw: dict[str, Any] = {"name": spec.name, "dtype": _np_dtype(spec.dtype)}
        if traced:
            kw["shape"] = ct.Shape([ct.RangeDim(1, max_batch or TRACE_MAX_BATCH, default=int(d))
                                    if flexible and isinstance(s, str) else int(d)
                                    for s, d in zip(spec.shape, x.shape)])
        out.append(ct.TensorType(**kw))
    return out


def _ct_outputs(specs: Sequence[mo.TensorSpec]) -> list[Any]:
    import coremltools as ct

    return [ct.TensorType(name=s.name, dtype=_np_dtype(s.dtype)) if s.dtype.startswith(
        ("float", "bfloat")) else ct.TensorType(name=s.name) for s in specs]


def _pin(in_specs: tuple[mo.TensorSpec, ...], out_specs: tuple[mo.TensorSpec, ...],
         args: tuple) -> tuple[tuple[mo.TensorSpec, ...], tuple[mo.TensorSpec, ...]]:
    """Input and output specs with symbolic dims fixed to the sizes the inputs ``args`` give
    them (by dim name)."""
    sizes: dict[str, int] = {}
    for spec, x in zip(in_specs, args):
        for s, d in zip(spec.shape, getattr(x, "shape", ())):
            if isinstance(s, str):
                sizes.setdefault(s, int(d))

    def pin(specs: tuple[mo.TensorSpec, ...]) -> tuple[mo.TensorSpec, ...]:
        return tuple(attrs.evolve(s, shape=tuple(sizes.get(d, d) if isinstance(d, str) else d
                                                 for d in s.shape)) for s in specs)

    return pin(in_specs), pin(out_specs)


def quiet() -> contextlib.AbstractContextManager:
    """Silence coremltools' progress bars, version warnings and log chatter while it runs."""
    return mo.quiet(stderr=True)


