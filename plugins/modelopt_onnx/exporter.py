"""Exporter ``onnx``: torch -> ONNX, with a dynamic batch axis, checker and numerics check.

The torch.export-based exporter is the default; the TorchScript exporter is a fallback (used
when the default fails and ``fallback`` is on) or can be chosen outright. An artifact may ask
for an exporter with ``props.onnx_exporter`` (simulated-quantized models export QDQ
through the TorchScript path).
"""

from __future__ import annotations

import copy
import inspect
import io
import warnings
from typing import Any, Literal

import attrs

import modelopt_core as mo
from .format import onnx_session_source

from .common import check_against, check_inputs_for, quiet, reference_outputs, tile_batch


@mo.config
class OnnxExportConfig:
    exporter: Literal["auto", "dynamo", "torchscript"] = mo.field(
        "auto", help="'auto': the artifact's preference, else torch.export (dynamo)")
    fallback: bool = mo.field(True, help="fall back to the TorchScript exporter on failure")
    opset: int | None = mo.field(None, validator=mo.in_range(13, 30),
                                 help="ONNX opset (default: the exporter's)")
    dynamic_batch: bool = mo.field(True, help="make dim 0 of inputs/outputs symbolic")
    check_numerics: bool = mo.field(True, help="compare ONNX Runtime output with torch")
    rtol: float | None = mo.field(None, validator=mo.in_range(0, 1),
                                  help="relative tolerance (default: the artifact's "
                                  "props.check_rtol, else 1e-3)")
    atol: float | None = mo.field(None, validator=mo.in_range(0, 1e3),
                                  help="absolute tolerance (default: the artifact's "
                                  "props.check_atol, else 1e-4)")
    strip_metadata: bool = mo.field(True, help="drop per-node debug metadata (source stack "
                                    "traces) from the graph: smaller deployment files")


class OnnxExporter(mo.Exporter):
    """PyTorch -> ONNX (torch.export-based by default; TorchScript fallback)."""

    name = "onnx"
    source = "torch"
    target = "onnx"
    Config = OnnxExportConfig
    requires = ("onnx", "onnxscript")
    install_hint = "pip install onnx onnxscript"

    def export(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        import onnx
        import torch

        cfg = self.config
        model = copy.deepcopy(artifact.model).eval()
        dtype = artifact.props.compute_dtype
        in_specs, out_specs = artifact.inputs, artifact.outputs
        if not cfg.dynamic_batch:  # pin the batch dim to the example's size
            n = ctx.example_inputs[0].shape[0] if ctx.example_inputs[0].dim() else 1
            in_specs, out_specs = _pin_batch(in_specs, n), _pin_batch(out_specs, n)
        batched = any(s.shape[:1] == ("batch",) for s in in_specs)
        args = tuple(tile_batch(x, 2) if batched else x for x in ctx.example_inputs)
        if dtype:
            args = tuple(x.to(getattr(torch, dtype)) if x.is_floating_point() else x
                         for x in args)
        choice = cfg.exporter
        if choice == "auto":
            choice = artifact.props.onnx_exporter or "dynamo"
        notes = []
        ctx.status(f"onnx: exporting {artifact.name!r} with the {choice} exporter...")
        try:
            proto = self._export(choice, model, args, in_specs, out_specs)
        except Exception as e:
            if choice != "dynamo" or not cfg.fallback:
                raise mo.ExportError(f"onnx: the {choice} exporter failed: {e}") from e
            msg = (f"onnx: torch.export-based exporter failed ({type(e).__name__}: "
                   f"{str(e).splitlines()[0][:200]}); used the TorchScript exporter instead")
            ctx.warn(msg)
            notes.append(msg)
            choice = "torchscript"
            try:
                proto = self._export(choice, model, args, in_specs, out_specs)
            except Exception as e2:
                raise mo.ExportError(f"onnx: both exporters failed; torchscript: {e2}") from e2
        if cfg.strip_metadata:
            _strip_debug_metadata(proto)
        ctx.status("onnx: checking the graph (onnx checker, ONNX Runtime numerics)...")
        try:
            with onnx_session_source(proto) as src:  # a path when over protobuf's 2 GiB
                onnx.checker.check_model(src if isinstance(src, str) else proto,
                                         full_check=True)
        except Exception as e:
            raise mo.ExportError(f"onnx: the exported model fails the ONNX checker: {e}") from e
        meta: dict[str, Any] = {"onnx_exporter_used": choice}
        if cfg.check_numerics:
            xs = (check_inputs_for(artifact, ctx) if batched
                  else tuple(ctx.example_inputs))
            ref = reference_outputs(artifact, xs)
            if dtype:  # the ONNX graph takes the reduced dtype too
                xs = tuple(x.to(getattr(torch, dtype)) if x.is_floating_point() else x
                           for x in xs)
            # simulated-quantized artifacts state how far integer kernels may round apart
            rtol = cfg.rtol if cfg.rtol is not None else (
                artifact.props.check_rtol if artifact.props.check_rtol is not None else 1e-3)
            atol = cfg.atol if cfg.atol is not None else (
                artifact.props.check_atol if artifact.props.check_atol is not None else 1e-4)
            errs = check_against("onnx", ref, proto, xs, rtol, atol)
            meta.update(errs)
            notes.append(f"numerics vs torch: max abs error {errs['max_abs_error']:.3g}")
        return artifact.evolve(step=self.step(notes=notes), format="onnx", model=proto,
                               metadata=meta, inputs=in_specs, outputs=out_specs)

    def _export(self, which: str, model: Any, args: tuple, in_specs: tuple[mo.TensorSpec, ...],
                out_specs: tuple[mo.TensorSpec, ...]) -> Any:
        import onnx
        import torch

        cfg = self.config
        in_names = [s.name for s in in_specs] or [f"input_{i}" for i in range(len(args))]
        out_names = [s.name for s in out_specs] or None
        with quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if which == "dynamo":
                dyn: Any = tuple(_symbolic(s) for s in in_specs)
                if any(p.kind is p.VAR_POSITIONAL
                       for p in inspect.signature(model.forward).parameters.values()):
                    dyn = (dyn,)  # forward(*xs): torch.export sees one packed argument
                prog = torch.onnx.export(model, args, dynamo=True, input_names=in_names,
                                         output_names=out_names,
                                         dynamic_shapes=dyn if any(_symbolic(s) for s in
                                                                   in_specs) else None,
                                         opset_version=cfg.opset, optimize=True, verbose=False)
                return prog.model_proto
            buf = io.BytesIO()
            axes = {s.name: _symbolic(s) for s in in_specs + out_specs if _symbolic(s)}
            torch.onnx.export(model, args, buf, dynamo=False, input_names=in_names,
                              output_names=out_names, dynamic_axes=axes or None,
                              opset_version=cfg.opset or 17, do_constant_folding=True)
            return onnx.load_from_string(buf.getvalue())


def _symbolic(spec: mo.TensorSpec) -> dict[int, str]:
    """{dim: name} of a spec's symbolic dims."""
    return {d: s for d, s in enumerate(spec.shape) if isinstance(s, str)}


def _pin_batch(specs: tuple[mo.TensorSpec, ...], n: int) -> tuple[mo.TensorSpec, ...]:
    """Specs with a symbolic ``batch`` dim 0 fixed to ``n``."""
    return tuple(attrs.evolve(s, shape=(n,) + tuple(s.shape[1:]))
                 if s.shape[:1] == ("batch",) else s for s in specs)


def _strip_debug_metadata(proto: Any) -> None:
    """Remove per-node / per-value debug annotations the torch exporters attach."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for coll in (proto.graph.input, proto.graph.output, proto.graph.value_info,
                 proto.graph.initializer):
        for v in coll:
            del v.metadata_props[:]
            v.doc_string = ""
