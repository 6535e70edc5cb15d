"""Exporter ``tflite``: torch -> LiteRT / TensorFlow Lite flatbuffer with litert-torch
(the renamed ai-edge-torch), with the numerics checked against torch.

``quantization``:

- ``"none"``: float32 (``litert_torch.convert``).
- ``"fp16"``: float16 weights, float compute (ai-edge-quantizer's ``FLOAT_CASTING`` algorithm
  on the converted flatbuffer: fp16 constants + ``DEQUANTIZE``; half the size).
- ``"int8"``: full-integer post-training INT8 (int8 weights per channel, int8 activations,
  int8 model inputs/outputs that the ``tflite`` backend (de)quantizes), calibrated on the
  session's calibration batches. ``int8_method="pt2e"`` (default) uses litert-torch's own
  route: its ``PT2EQuantizer`` inserts observers into the ``torch.export`` graph, the batches
  calibrate it in torch, ``convert_pt2e`` folds the Q/DQ pairs and
  ``litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=...))`` lowers them to
  integer TFLite kernels. ``int8_method="ai_edge_quantizer"`` instead calibrates the float
  flatbuffer in the LiteRT interpreter with ai-edge-quantizer's ``static_wi8_ai8`` recipe.
- ``"int8_dynamic"``: dynamic-range INT8 (int8 weights, activations quantized on the fly by
  the kernels; float I/O; no calibration): ai-edge-quantizer's ``dynamic_wi8_afp32``.

litert-torch 0.10 cannot lower a symbolic batch through ``Linear`` / ``reshape`` (its JAX
bridge needs concrete shapes), so models convert with a fixed batch (the example inputs', or
``batch_size``) unless ``dynamic_batch=True`` is asked for and converts (fully convolutional
models); the step's notes say which, and the backend runs other batches in chunks. Inputs
keep the torch layout (NCHW): litert-torch converts the graph as it is.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from typing import Any, Literal

import modelopt_core as mo

from .format import check_flatbuffer

#: (rtol, atol) of the numerics check by quantization: the check passes when every output
#: element is within ``atol + rtol * max|torch output|`` of torch's. ai-edge-quantizer's
#: static calibration averages per-batch min/max, so outputs beyond the average extremes
#: saturate: on the digits CNN its logits differ by up to ~0.25 of their range at the same
#: accuracy as PT2E's (~0.01), hence its looser default.
DEFAULT_TOLERANCES = {"none": (1e-3, 1e-4), "fp16": (1e-2, 1e-3), "int8": (0.1, 1e-3),
                      "int8/ai_edge_quantizer": (0.35, 1e-3), "int8_dynamic": (0.1, 1e-3)}


@mo.config
class TfliteExportConfig:
    """Options of the tflite exporter."""

    quantization: Literal["none", "fp16", "int8", "int8_dynamic"] = mo.field(
        "none", help="'none': float32; 'fp16': float16 weights; 'int8': full-integer INT8 "
                     "calibrated on the session's calibration data; 'int8_dynamic': INT8 "
                     "weights, dynamic-range activations (no calibration)")
    int8_method: Literal["auto", "pt2e", "ai_edge_quantizer"] = mo.field(
        "auto", help="how 'int8' is calibrated: 'pt2e': litert-torch's PT2E quantizer in "
                     "torch; 'ai_edge_quantizer': static_wi8_ai8 on the float flatbuffer; "
                     "'auto': pt2e, and when its model fails the numerics check, "
                     "ai_edge_quantizer (noted)")
    per_channel: bool = mo.field(True, help="int8: per-output-channel weight scales "
                                 "('pt2e'; ai_edge_quantizer is always per channel)")
    calibration_batches: int = mo.field(16, validator=mo.positive,
                                        help="int8: calibration batches to use (at most)")
    dynamic_batch: bool = mo.field(
        False, help="try a symbolic batch dim first (fully convolutional models; litert-torch "
                    "0.10 cannot lower one through Linear/reshape, and the attempt costs a "
                    "conversion: then the batch is fixed, with a note)")
    batch_size: int | None = mo.field(
        None, validator=mo.positive,
        help="batch of a fixed-batch flatbuffer (default: the example inputs' batch)")
    check_numerics: bool = mo.field(True, help="compare the LiteRT interpreter's outputs "
                                    "with torch's")
    rtol: float | None = mo.field(
        None, validator=mo.in_range(0, 10),
        help="numerics check: allowed error as a fraction of the largest torch output "
             "magnitude (default 1e-3; fp16 1e-2; int8 0.1, with ai_edge_quantizer 0.35)")
    atol: float | None = mo.field(None, validator=mo.in_range(0, 1e3),
                                  help="numerics check: absolute allowance added to rtol's "
                                       "(default 1e-4; fp16/int8 1e-3)")


class TfliteExporter(mo.Exporter):
    """PyTorch -> LiteRT / TensorFlow Lite (litert-torch; FP32, FP16, INT8)."""

    name = "tflite"
    source = "torch"
    target = "tflite"
    Config = TfliteExportConfig
    requires = ("litert_torch", "ai_edge_litert", "ai_edge_quantizer")
    install_hint = "pip install 'modelopt-core[tflite]' (litert-torch, ai-edge-litert)"

    def export(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        cfg = self.config
        notes: list[str] = []
        model = copy.deepcopy(artifact.model).eval()
        if artifact.props.compute_dtype:  # LiteRT runs float32 graphs; the weights keep
            model = model.float()         # their reduced-precision values
            notes.append(f"converted the {artifact.props.compute_dtype} model in float32")
        if not ctx.example_inputs:
            raise mo.ExportError("tflite: the session has no example inputs to convert with.")
        batch = cfg.batch_size or (ctx.example_inputs[0].shape[0]
                                   if ctx.example_inputs[0].dim() else 1)
        args = tuple(mo.tile_batch(x.float() if x.is_floating_point() else x, batch)
                     for x in ctx.example_inputs)
        calib: list[tuple[Any, ...]] = []
        if cfg.quantization == "int8":
            calib = [tuple(x.float() if x.is_floating_point() else x for x in xs)
                     for xs in ctx.calibration_batches(self.name, cfg.calibration_batches)]
        dyn = _dynamic_shapes(model, artifact.inputs) if cfg.dynamic_batch else None
        method = "pt2e" if cfg.int8_method == "auto" else cfg.int8_method
        before = list(notes)
        fallback = cfg.quantization == "int8" and cfg.int8_method == "auto" and \
            cfg.check_numerics
        fresh = copy.deepcopy(model) if fallback else None  # PT2E rewrites the model it gets
        flat, meta = self._build(model, artifact.inputs, args, calib, dyn, batch, method, ctx,
                                 notes)
        if cfg.check_numerics:
            ctx.status("tflite: checking numerics against torch...")
            try:
                meta.update(self._check(artifact, ctx, flat, notes, method))
            except mo.ExportError as e:
                if not fallback:
                    raise
                ctx.warn(f"tflite: int8_method='auto': the PT2E INT8 model failed its numerics "
                         f"check, so it was converted again with ai_edge_quantizer "
                         f"({str(e)[:300]})")  # (a warning lands in the step's notes too)
                method = "ai_edge_quantizer"
                notes = list(before)
                flat, meta = self._build(fresh, artifact.inputs, args, calib, dyn, batch,
                                         method, ctx, notes)
                meta.update(self._check(artifact, ctx, flat, notes, method))
        if cfg.quantization == "int8":
            meta["tflite_int8_method"] = method
        return artifact.evolve(step=self.step(notes=notes), format="tflite", model=flat,
                               metadata=meta)

    def _build(self, model: Any, inputs: Sequence[mo.TensorSpec], args: tuple[Any, ...],
               calib: list[tuple[Any, ...]], dyn: Any, batch: int, method: str,
               ctx: mo.Context, notes: list[str]) -> tuple[bytes, dict[str, Any]]:
        """The flatbuffer (quantized with ``method`` when int8) and its metadata."""
        cfg = self.config
        quant_config = None
        if cfg.quantization == "int8" and method == "pt2e":
            ctx.status(f"tflite: calibrating PT2E INT8 observers on {len(calib)} batch(es)...")
            model, quant_config, how = _pt2e_quantize(model, args, calib, cfg.per_channel,
                                                      inputs)
            notes.append(how)
        ctx.status("tflite: converting with litert-torch...")
        flat, fixed = _convert(model, args, dyn, quant_config)
        dynamic = dyn is not None and not fixed
        if fixed:
            notes.append(f"fixed batch {batch}: litert-torch could not lower a symbolic batch "
                         f"({fixed}); the tflite backend runs other batches in chunks")
        elif dynamic:
            notes.append("symbolic batch dim (the tflite backend resizes to each batch)")
        else:
            notes.append(f"fixed batch {batch} (the tflite backend runs other batches in "
                         "chunks)")
        if cfg.quantization == "fp16":
            flat = _aeq_fp16(flat)
            notes.append("fp16 weights (ai-edge-quantizer FLOAT_CASTING), float compute")
        elif cfg.quantization == "int8_dynamic":
            flat = _aeq_recipe(flat, "dynamic_wi8_afp32")
            notes.append("dynamic-range INT8 (ai-edge-quantizer dynamic_wi8_afp32)")
        elif cfg.quantization == "int8" and method == "ai_edge_quantizer":
            ctx.status(f"tflite: calibrating static INT8 on {len(calib)} batch(es)...")
            flat = _aeq_static(flat, calib)
            notes.append(f"full-integer INT8 (ai-edge-quantizer static_wi8_ai8, calibrated "
                         f"on {len(calib)} batch(es) in the LiteRT interpreter)")
        flat = check_flatbuffer(bytes(flat), "tflite: converted model")
        return flat, {"tflite_quantization": cfg.quantization,
                      "tflite_batch": "dynamic" if dynamic else batch}

    def _check(self, artifact: mo.ModelArtifact, ctx: mo.Context, flat: bytes,
               notes: list[str], method: str) -> dict[str, Any]:
        import numpy as np

        from .backend import TfliteProgram

        cfg = self.config
        rtol, atol = DEFAULT_TOLERANCES.get(f"{cfg.quantization}/{method}",
                                            DEFAULT_TOLERANCES[cfg.quantization])
        if cfg.quantization == "none":  # a fake-quant torch model states its own slack
            rtol = max(rtol, artifact.props.check_rtol or 0.0)
            atol = max(atol, artifact.props.check_atol or 0.0)
        rtol = cfg.rtol if cfg.rtol is not None else rtol
        atol = cfg.atol if cfg.atol is not None else atol
        xs = _check_inputs(artifact, ctx, self.name)
        ref = _reference(artifact, xs)
        mo.check_reference(f"tflite ({cfg.quantization})", ref)  # before running the model
        prog = TfliteProgram(flat, where="tflite numerics check")
        try:
            got = prog.run([x.float().numpy() if x.is_floating_point() else x.numpy()
                            for x in xs])
        finally:
            prog.close()
        errs = mo.check_outputs(
            f"tflite ({cfg.quantization})", ref, got, rtol=rtol, atol=atol, scale_floor=1.0,
            runtime="TFLite model", hint="Raise rtol/atol if this is expected for the "
            "model, try int8_method='ai_edge_quantizer' / more calibration_batches, or report "
            "it (check_numerics=False skips the check).")
        worst_abs, worst_rel = errs["max_abs_error"], errs["max_rel_error"]
        agree = [float(np.mean(np.asarray(r).argmax(1) == np.asarray(g).argmax(1)))
                 for r, g in zip(ref, got) if np.ndim(r) == 2 and np.shape(r)[1] > 1]
        note = (f"numerics vs torch: max abs error {worst_abs:.3g} ({worst_rel:.3g} of the "
                f"output range; tolerance rtol={rtol}, atol={atol})")
        if agree:
            note += f", top-1 agreement {100 * min(agree):.1f}% on {xs[0].shape[0]} rows"
        notes.append(note)
        return {"max_abs_error": worst_abs, "max_rel_error": worst_rel}


# ---- conversion ---------------------------------------------------------------------------

def quiet() -> contextlib.AbstractContextManager:
    """Silence litert-torch's progress console and the converters' chatter while they run."""
    return mo.quiet(stderr=True, env={"LITERT_TORCH_SHOW_PROGRESS": "n"})


def _dynamic_shapes(model: Any, specs: Sequence[mo.TensorSpec]) -> Any:
    """torch.export ``dynamic_shapes`` for the specs' symbolic dims (None: all static)."""
    from modelopt_core import export_dynamic_shapes

    return export_dynamic_shapes(model, specs)


def _convert(model: Any, args: tuple, dyn: Any, quant_config: Any) -> tuple[bytes, str]:
    """(flatbuffer, why the batch is fixed or ''): symbolic dims first when ``dyn``."""
    import litert_torch

    kwargs = {"quant_config": quant_config} if quant_config is not None else {}
    why = ""
    if dyn is not None:  # traced with 2 rows: a size of 1 would specialize the dim
        try:
            with quiet():
                return litert_torch.convert(model, tuple(mo.tile_batch(a, 2) for a in args),
                                            dynamic_shapes=dyn, **kwargs).model_content(), ""
        except Exception as e:  # noqa: BLE001 - falls back to a fixed batch (noted)
            why = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
    try:
        with quiet():
            return litert_torch.convert(model, args, **kwargs).model_content(), why
    except Exception as e:
        raise mo.ExportError(f"tflite: litert-torch failed to convert the model: "
                             f"{type(e).__name__}: {str(e).strip()[:600]}") from e


def _pt2e_quantize(model: Any, args: tuple, calib: Sequence[tuple[Any, ...]],
                   per_channel: bool, specs: Sequence[mo.TensorSpec]) -> tuple[Any, Any, str]:
    """(model with folded Q/DQ, litert QuantConfig, note): litert-torch's PT2E quantizer
    calibrated on ``calib`` in torch."""
    import torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize import quant_config as qc
    from torchao.quantization.pt2e import move_exported_model_to_eval, quantize_pt2e

    quantizer = pq.PT2EQuantizer().set_global(
        pq.get_symmetric_quantization_config(is_per_channel=per_channel))
    batch = args[0].shape[0] if args and args[0].dim() else 1
    dyn = _dynamic_shapes(model, specs)
    with quiet(), torch.no_grad():
        graph, static = None, False
        if dyn is not None:  # calibrate whole batches through a symbolic batch
            try:
                graph = torch.export.export(model, tuple(mo.tile_batch(a, 2) for a in args),
                                            dynamic_shapes=dyn).module()
            except Exception:  # noqa: BLE001 - calibrate through a fixed batch instead
                graph = None
        if graph is None:
            graph, static = torch.export.export(model, args).module(), True
        prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
        for xs in calib:
            if static:  # the graph takes `batch` rows: feed chunks (the last one padded)
                n = xs[0].shape[0]
                for s in range(0, n, batch):
                    prepared(*(mo.tile_batch(x[s:s + batch], batch) for x in xs))
            else:
                prepared(*xs)
        converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        move_exported_model_to_eval(converted)
    gran = "per-channel" if per_channel else "per-tensor"
    return converted, qc.QuantConfig(pt2e_quantizer=quantizer), (
        f"full-integer INT8 (litert-torch PT2E quantizer, {gran} int8 weights, int8 "
        f"activations and I/O; calibrated on {len(calib)} batch(es) in torch)")


def _aeq_fp16(flat: bytes) -> bytes:
    """float16 weights for the ops ai-edge-quantizer's FLOAT_CASTING supports."""
    from ai_edge_quantizer import qtyping, quantizer

    q = quantizer.Quantizer(bytearray(flat))
    op = qtyping.TFLOperationName
    for name in (op.FULLY_CONNECTED, op.CONV_2D, op.DEPTHWISE_CONV_2D, op.CONV_2D_TRANSPOSE,
                 op.EMBEDDING_LOOKUP):
        q.update_quantization_recipe(
            regex=".*", operation_name=name, algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING,
            op_config=qtyping.OpQuantizationConfig(
                weight_tensor_config=qtyping.TensorQuantizationConfig(
                    num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
                compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True))
    with quiet():
        return bytes(q.quantize(enable_progress_report=False).quantized_model)


def _aeq_recipe(flat: bytes, recipe_name: str) -> bytes:
    from ai_edge_quantizer import quantizer, recipe

    q = quantizer.Quantizer(bytearray(flat), getattr(recipe, recipe_name)())
    with quiet():
        return bytes(q.quantize(enable_progress_report=False).quantized_model)


def _aeq_static(flat: bytes, calib: Sequence[tuple[Any, ...]]) -> bytes:
    """Full-integer INT8 with ai-edge-quantizer's static_wi8_ai8 recipe, calibrated by running
    ``calib`` through the float flatbuffer (in chunks of its fixed batch)."""
    from ai_edge_quantizer import quantizer, recipe

    from .backend import TfliteProgram

    prog = TfliteProgram(flat, where="tflite calibration")
    names = [t["sig_name"] for t in prog.inputs]
    fixed = prog.fixed_batch
    prog.close()
    samples = []
    for xs in calib:
        arrays = [x.numpy() for x in xs]
        n = arrays[0].shape[0]
        step = fixed or n
        for s in range(0, n, step):
            chunk = [a[s:s + step] for a in arrays]
            if fixed and chunk[0].shape[0] < fixed:
                continue  # a partial chunk would need padding; the full ones suffice
            samples.append(dict(zip(names, chunk)))
    if not samples:
        raise mo.DataError(f"tflite: no calibration batch holds the model's fixed batch of "
                           f"{fixed} rows; give larger calibration batches.")
    q = quantizer.Quantizer(bytearray(flat), recipe.static_wi8_ai8())
    with quiet():
        result = q.calibrate({"serving_default": samples})
        return bytes(q.quantize(result, enable_progress_report=False).quantized_model)


# ---- numerics check -----------------------------------------------------------------------

def _check_inputs(artifact: mo.ModelArtifact, ctx: mo.Context, who: str) -> tuple[Any, ...]:
    """The first calibration batch (never drawn from a one-shot iterator), else the example
    inputs tiled to 2 rows."""
    data = ctx.calibration_data
    if data is not None and mo.data.is_one_shot(data):
        ctx.warn(f"{who}: calibration_data is a one-shot iterator; numerics checked on the "
                 "example inputs instead, so that no calibration batch is used up.")
    elif data is not None:
        return tuple(ctx.calibration_batches(f"{who} numerics check", 1)[0])
    return tuple(mo.tile_batch(x, 2) for x in ctx.example_inputs)


def _reference(artifact: mo.ModelArtifact, xs: Sequence[Any]) -> list[Any]:
    return mo.reference_outputs(artifact, xs)
