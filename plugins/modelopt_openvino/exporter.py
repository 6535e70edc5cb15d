"""Exporters to format ``openvino`` (an in-memory ``openvino.Model``, saved as IR):

- ``openvino``: torch -> OpenVINO with ``openvino.convert_model`` (traced on a copy of the
  model with the session's example inputs), input shapes and dtypes from the artifact's
  TensorSpecs (symbolic dims become dynamic), inputs/outputs named after the specs. When
  TorchScript tracing fails, the ``torch.export.export`` program of the same copy is converted
  instead (symbolic dims as ``torch.export.Dim``; e.g. transformers 5.5's BERT, whose mask code
  takes the traced sequence length, a 0-dim tensor under TorchScript tracing, for a deprecated
  ``cache_position`` and indexes it); the route is in the step's notes and in the metadata
  (``openvino_route``: ``torchscript``, ``torch.export`` or ``onnx``).
- ``openvino.from_onnx``: ONNX -> OpenVINO, QDQ graphs included (QuantizeLinear /
  DequantizeLinear pairs become FakeQuantize ops that the CPU plugin runs in INT8).

Both check numerics against the source (the torch model, or ONNX Runtime for ONNX) on a
calibration batch or the tiled example inputs, with the OpenVINO model compiled in f32, and
record the max errors. ``Session.export("openvino")`` takes the shortest chain from the
current format, so a torch artifact converts directly and an ONNX one (e.g. after
``onnx.quantize_static``) through ``openvino.from_onnx``.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import modelopt_core as mo

_HINT = "pip install 'modelopt-core[openvino]'"


@mo.config
class OpenVinoExportConfig:
    """Options of the ``openvino`` exporters."""

    dynamic_batch: bool = mo.field(True, help="keep symbolic dims (the batch) dynamic; off: "
                                   "fix them to the example inputs' sizes")
    check_numerics: bool = mo.field(True, help="compare OpenVINO (f32) with the source model")
    rtol: float | None = mo.field(None, validator=mo.in_range(0, 1),
                                  help="relative tolerance (default: the artifact's "
                                  "props.check_rtol, else 1e-3; 0.1 for QDQ graphs)")
    atol: float | None = mo.field(None, validator=mo.in_range(0, 1e3),
                                  help="absolute tolerance (default: the artifact's "
                                  "props.check_atol, else 1e-4; 0.1 x output range for QDQ)")


@mo.config
class TorchOpenVinoConfig(OpenVinoExportConfig):
    """Options of the ``openvino`` exporter (from torch)."""

    torch_export: bool = mo.field(
        True, help="when TorchScript tracing (openvino.convert_model's default) fails, convert "
                   "the model's torch.export.export program instead (noted in the step and "
                   "in metadata openvino_route); off: go on to onnx_fallback")
    onnx_fallback: bool = mo.field(
        True, help="when openvino.convert_model cannot convert the torch model (its tracing "
                   "fails, and the torch.export route too), export through ONNX (the onnx "
                   "exporter, then openvino.from_onnx, each checked), with a warning; off: "
                   "the failure is an ExportError")


def _tolerances(cfg: OpenVinoExportConfig, art: mo.ModelArtifact, ref: Any,
                qdq: bool) -> tuple[float, float]:
    """rtol/atol: the config's, else the artifact's props, else defaults (looser for QDQ
    graphs: two runtimes' integer kernels round apart by a quantization step or so)."""
    import numpy as np

    amax = max((float(np.abs(np.asarray(r, dtype=np.float64)).max()) for r in ref
                if np.asarray(r).size), default=1.0)
    rtol = cfg.rtol if cfg.rtol is not None else art.props.check_rtol
    atol = cfg.atol if cfg.atol is not None else art.props.check_atol
    if rtol is None:
        rtol = 0.1 if qdq else 1e-3
    if atol is None:
        atol = round(0.1 * max(amax, 1e-6), 6) if qdq else 1e-4
    return rtol, atol


def _fixed(specs: tuple[mo.TensorSpec, ...], xs: tuple[Any, ...]) -> tuple[mo.TensorSpec, ...]:
    """Specs with every symbolic dim fixed to the example's size."""
    import attrs

    return tuple(attrs.evolve(s, shape=tuple(int(d) for d in x.shape))
                 for s, x in zip(specs, xs))


def _out_fixed(specs: tuple[mo.TensorSpec, ...], model: Any) -> tuple[mo.TensorSpec, ...]:
    """Output specs with the static dims the converted model reports."""
    import attrs

    out = []
    for s, port in zip(specs, model.outputs):
        ps = port.get_partial_shape()
        dims = tuple(int(d.get_length()) if d.is_static else s.shape[i]
                     for i, d in enumerate(ps)) if ps.rank.is_static else s.shape
        out.append(attrs.evolve(s, shape=dims))
    return tuple(out)


def _convert_exported(model: Any, xs: tuple[Any, ...], specs: tuple[mo.TensorSpec, ...],
                      inputs: list[Any]) -> Any:
    """``openvino.convert_model`` of ``torch.export.export(model, xs)``, the specs' symbolic
    dims exported as ``torch.export.Dim`` (one per name) so that they stay dynamic."""
    import openvino as ov
    import torch

    from modelopt_core import export_dynamic_shapes

    from .common import quiet

    dyn = export_dynamic_shapes(model, specs)
    with quiet(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, xs, dynamic_shapes=dyn)
        return ov.convert_model(ep, input=inputs or None)


class TorchToOpenVino(mo.Exporter):
    """PyTorch -> OpenVINO IR (openvino.convert_model), numerics checked against torch."""

    name = "openvino"
    source = "torch"
    target = "openvino"
    Config = TorchOpenVinoConfig
    requires = ("openvino",)
    install_hint = _HINT

    def export(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        import openvino as ov
        import torch

        from .common import name_ports, ov_type, partial_shape, quiet

        cfg = self.config
        model = copy.deepcopy(artifact.model).eval()
        notes: list[str] = []
        if artifact.props.compute_dtype:  # OpenVINO picks its own precision at compile time
            model = model.float()
            notes.append(f"{artifact.props.compute_dtype} weights converted in float32 (choose "
                         "the run precision with the backend's inference_precision)")
        in_specs, out_specs = artifact.inputs, artifact.outputs
        batched = any(isinstance(d, str) for s in in_specs for d in s.shape)
        xs = tuple(ctx.example_inputs)
        if cfg.dynamic_batch and batched:  # trace with 2 rows: no size-1 special cases
            xs = tuple(mo.tile_batch(x, 2) for x in xs)
        if not cfg.dynamic_batch:
            in_specs = _fixed(in_specs, tuple(ctx.example_inputs))
        ctx.status(f"openvino: converting {artifact.name!r} with openvino.convert_model...")
        inputs = [(partial_shape(s), ov_type(s.dtype)) for s in in_specs]
        route = "torchscript"
        try:
            with quiet(), warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                # warm-up on the private copy: modules that cache per-shape state on their
                # first call (Ultralytics' Detect head builds its anchors then) would make the
                # trace's two sanity-check invocations differ ("Graphs differed")
                model(*xs)
                ov_model = ov.convert_model(model, example_input=xs,
                                            input=inputs or None)
        except Exception as e:
            why = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
            ov_model = None
            if cfg.torch_export:
                ctx.status("openvino: TorchScript tracing failed; converting the model's "
                           "torch.export program...")
                try:
                    ov_model = _convert_exported(model, xs, in_specs, inputs)
                except Exception as e2:  # noqa: BLE001 (any failure: next route)
                    why += (f"; torch.export route: {type(e2).__name__}: "
                            f"{' '.join(str(e2).split())[:300]}")
                else:
                    route = "torch.export"
                    notes.append(f"TorchScript tracing failed ({why[:200]}); converted the "
                                 "torch.export.export program instead")
            if ov_model is None:
                if not cfg.onnx_fallback:
                    raise mo.ExportError(
                        f"openvino: openvino.convert_model failed on {artifact.name!r}: {why} "
                        "(onnx_fallback=True exports through ONNX instead)") from e
                return self._through_onnx(artifact, ctx, notes, why)
        name_ports(ov_model, in_specs, out_specs)
        if not cfg.dynamic_batch:
            out_specs = _out_fixed(out_specs, ov_model)
        meta: dict[str, Any] = {"openvino_version": ov.get_version(), "openvino_route": route}
        if cfg.check_numerics:
            meta.update(self._check_numerics(artifact, ctx, model, ov_model, out_specs,
                                             batched, notes))
        return artifact.evolve(step=self.step(notes=notes), format="openvino", model=ov_model,
                               inputs=in_specs, outputs=out_specs, metadata=meta)

    def _check_numerics(self, artifact: mo.ModelArtifact, ctx: mo.Context, model: Any,
                        ov_model: Any, out_specs: tuple[mo.TensorSpec, ...], batched: bool,
                        notes: list[str]) -> dict[str, Any]:
        """Compare ``ov_model`` (compiled in f32) with the torch model on the check inputs:
        ``model`` (the float32 copy) when the artifact computes in a reduced dtype, else the
        artifact's reference outputs. Returns the ``openvino_check_*`` metadata; the max error
        is added to ``notes``."""
        import torch

        from .common import check_numerics

        cfg = self.config
        ctx.status("openvino: checking numerics against torch...")
        check = (mo.check_inputs_for(artifact, ctx, who=self.name)
                 if cfg.dynamic_batch and batched else tuple(ctx.example_inputs))
        if artifact.props.compute_dtype:  # the converted weights, computed in float32
            with torch.no_grad():
                out = model(*check)
            ref = [o.float().numpy() for o in
                   ([out] if isinstance(out, torch.Tensor) else list(out))]
        else:
            ref = mo.reference_outputs(artifact, check)
        qdq = artifact.props.simulated is not None
        rtol, atol = _tolerances(cfg, artifact, ref, qdq)
        errs = check_numerics(self.name, ref, ov_model, check,
                              [s.name for s in out_specs], rtol, atol)
        notes.append(f"numerics vs torch (OpenVINO f32): max abs error "
                     f"{errs['max_abs_error']:.3g}")
        return {"openvino_check_" + k: v for k, v in errs.items()}

    def _through_onnx(self, artifact: mo.ModelArtifact, ctx: mo.Context, notes: list[str],
                      why: str) -> mo.ModelArtifact:
        """The OpenVINO model made through ONNX (the session's ``onnx`` exporter, then
        ``openvino.from_onnx``, each with its own numerics check), as this exporter's one
        step; the failure and both steps' notes are in its notes."""
        ctx.warn(f"openvino: openvino.convert_model could not convert {artifact.name!r} "
                 f"({why.splitlines()[0][:200]}); exported through ONNX instead")
        cfg = self.config
        onnx_art = ctx.export(artifact, "onnx")
        options = {k: v for k, v in mo.config_to_data(cfg).items()
                   if k not in ("onnx_fallback", "torch_export")}
        ov_art = ctx.export(onnx_art, "openvino", **options)
        notes = notes + [f"through ONNX: {n}" for s in (onnx_art, ov_art)
                         for n in s.lineage[-1].notes]
        added = {k: v for k, v in ov_art.metadata.items()
                 if k not in artifact.metadata or artifact.metadata[k] != v}
        added["openvino_route"] = "onnx"
        return artifact.evolve(step=self.step(notes=notes), format="openvino",
                               model=ov_art.model, inputs=ov_art.inputs,
                               outputs=ov_art.outputs, metadata=added)


class OnnxToOpenVino(mo.Exporter):
    """ONNX -> OpenVINO IR (QDQ graphs run as INT8), numerics checked against ONNX Runtime."""

    name = "openvino.from_onnx"
    source = "onnx"
    target = "openvino"
    Config = OpenVinoExportConfig
    requires = ("openvino", "onnx")
    install_hint = _HINT

    def export(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        import io

        import openvino as ov

        from .common import check_numerics, name_ports, partial_shape, quiet

        cfg = self.config
        # the ONNX format, reached through the registry, hands the model over (a path over
        # 2 GiB); the check's reference runs on the registered ONNX Runtime backend
        pm = ctx.plugins or mo.get_plugin_manager()
        onnx_format = pm.get("format", "onnx").cls()
        ctx.status(f"openvino: converting the ONNX model {artifact.name!r}...")
        try:
            with quiet(), onnx_format.runtime_source(artifact.model) as src:
                ov_model = ov.convert_model(src if isinstance(src, str) else io.BytesIO(src))
        except Exception as e:
            raise mo.ExportError(f"openvino.from_onnx: OpenVINO cannot convert "
                                 f"{artifact.name!r}: {type(e).__name__}: "
                                 f"{str(e).strip()[:400]}") from e
        in_specs, out_specs = artifact.inputs, artifact.outputs
        batched = any(isinstance(d, str) for s in in_specs for d in s.shape)
        if in_specs and len(ov_model.inputs) == len(in_specs):  # the specs' names, in order
            name_ports(ov_model, in_specs,
                       out_specs if len(out_specs) == len(ov_model.outputs) else ())
        if not cfg.dynamic_batch:
            xs = tuple(ctx.example_inputs)
            in_specs = _fixed(in_specs, xs)
            ov_model.reshape({i: partial_shape(s) for i, s in enumerate(in_specs)})
            out_specs = _out_fixed(out_specs, ov_model)
        ops = {n.op_type for n in artifact.model.graph.node}
        qdq = bool(ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"})
        notes = []
        if qdq:
            n_fq = sum(1 for op in ov_model.get_ops() if op.get_type_name() == "FakeQuantize")
            notes.append(f"QDQ graph: {n_fq} FakeQuantize op(s) for the INT8 kernels")
        meta: dict[str, Any] = {"openvino_version": ov.get_version()}
        if cfg.check_numerics:
            ctx.status("openvino: checking numerics against ONNX Runtime...")
            check = (mo.check_inputs_for(artifact, ctx, who=self.name)
                     if cfg.dynamic_batch and batched else tuple(ctx.example_inputs))
            ref = mo.reference_outputs(artifact, check, ctx, backend="onnxruntime")
            rtol, atol = _tolerances(cfg, artifact, ref, qdq)
            errs = check_numerics(self.name, ref, ov_model, check,
                                  [s.name for s in out_specs], rtol, atol)
            meta.update({"openvino_check_" + k: v for k, v in errs.items()})
            notes.append(f"numerics vs ONNX Runtime (OpenVINO f32): max abs error "
                         f"{errs['max_abs_error']:.3g}")
        return artifact.evolve(step=self.step(notes=notes), format="openvino", model=ov_model,
                               inputs=in_specs, outputs=out_specs, metadata=meta)
