"""Helpers shared by the OpenVINO components: one ``openvino.Core``, port naming after the
artifact's TensorSpecs, running a compiled model on torch tensors, numerics checks, and
keeping OpenVINO/NNCF quiet. Nothing heavy is imported at module load."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import modelopt_core as mo

#: TensorSpec dtype -> OpenVINO element type name
_OV_TYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64",
             "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8",
             "bool": "boolean"}

_CORE: Any = None


def core() -> Any:
    """The process-wide ``openvino.Core`` (creating one costs a few ms and loads plugins)."""
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


def ov_type(dtype: str) -> Any:
    """The OpenVINO element type of a TensorSpec dtype string."""
    import openvino as ov

    try:
        return getattr(ov.Type, _OV_TYPES[dtype])
    except KeyError:
        raise mo.ExportError(f"openvino: input dtype {dtype!r} has no OpenVINO element type "
                             f"here (supported: {sorted(_OV_TYPES)}).") from None


def partial_shape(spec: mo.TensorSpec) -> Any:
    """An ``openvino.PartialShape`` for a spec: symbolic dims (strings) become dynamic."""
    import openvino as ov

    return ov.PartialShape([-1 if isinstance(d, str) else int(d) for d in spec.shape])


def name_ports(model: Any, in_specs: Sequence[mo.TensorSpec],
               out_specs: Sequence[mo.TensorSpec]) -> None:
    """Give ``model``'s inputs/outputs the artifact's names (in order), so runners and
    NNCF datasets find them by name. ``model`` must be a private copy."""
    if in_specs and len(model.inputs) != len(in_specs):
        raise mo.ExportError(f"openvino: the converted model has {len(model.inputs)} input(s), "
                             f"the artifact {len(in_specs)} ({[s.name for s in in_specs]}).")
    if out_specs and len(model.outputs) != len(out_specs):
        raise mo.ExportError(f"openvino: the converted model has {len(model.outputs)} "
                             f"output(s), the artifact {len(out_specs)} "
                             f"({[s.name for s in out_specs]}).")
    for port, spec in zip(model.inputs, in_specs):
        port.get_tensor().set_names({spec.name})
    for port, spec in zip(model.outputs, out_specs):
        port.get_tensor().set_names({spec.name})


def output_indices(ports: Sequence[Any], names: Sequence[str]) -> list[int]:
    """Port index of each output name (the artifact's order); ports without names fall back
    to position. FormatError when a name is missing."""
    index = {}
    for i, p in enumerate(ports):
        for n in p.get_names():
            index.setdefault(n, i)
    if not names:
        return list(range(len(ports)))
    out = []
    for j, n in enumerate(names):
        if n in index:
            out.append(index[n])
        elif len(ports) == len(names):
            out.append(j)
        else:
            raise mo.FormatError(f"openvino: the model has no output named {n!r} (outputs: "
                                 f"{[sorted(p.get_names()) for p in ports]}).")
    return out


def to_numpy(x: Any) -> Any:
    """A torch tensor as a contiguous numpy array (bfloat16 has no numpy type: float32)."""
    import torch

    x = x.detach().cpu()
    if x.dtype == torch.bfloat16:
        x = x.float()
    return x.contiguous().numpy()


def run_compiled(compiled: Any, inputs: Sequence[Any], out_names: Sequence[str] = ()
                 ) -> list[Any]:
    """Run a compiled model once on torch inputs; numpy outputs (copies) in ``out_names``
    order (default: port order)."""
    req = compiled.create_infer_request()
    req.infer([to_numpy(x) for x in inputs])
    idx = output_indices(compiled.outputs, out_names)
    return [req.get_output_tensor(i).data.copy() for i in idx]


def compile_f32(model: Any) -> Any:
    """``model`` compiled on CPU in full f32 precision (for numerics checks: the CPU
    plugin's default precision is bf16 on CPUs with bf16 support)."""
    return core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def check_numerics(who: str, ref: Sequence[Any], model: Any, inputs: Sequence[Any],
                   out_names: Sequence[str], rtol: float, atol: float) -> dict[str, float]:
    """Run ``model`` (f32, CPU) on ``inputs`` and compare with ``ref`` (numpy) by the one
    verification rule (:func:`modelopt_core.check_outputs`); ExportError naming the output
    and the figure when off."""
    got = run_compiled(compile_f32(model), inputs, out_names)
    return mo.check_outputs(who, ref, got, rtol=rtol, atol=atol, names=out_names,
                            runtime="OpenVINO model")


def op_counts(model: Any) -> dict[str, int]:
    """{op type: count} of an ``openvino.Model``."""
    out: dict[str, int] = {}
    for op in model.get_ops():
        t = op.get_type_name()
        out[t] = out.get(t, 0) + 1
    return out


def low_precision_weights(model: Any) -> int:
    """Number of integer (8/4-bit) weight tensors: Constants dequantized at run time
    (Constant -> Convert -> the first input of Subtract/Multiply; zero points, the second
    input of Subtract, are not counted)."""
    n = 0
    for op in model.get_ops():
        if op.get_type_name() != "Convert":
            continue
        src = op.input_value(0).get_node()
        if src.get_type_name() != "Constant" or src.get_output_element_type(0).get_type_name() \
                not in ("i8", "u8", "i4", "u4", "nf4"):
            continue
        if any(t.get_node().get_type_name() in ("Subtract", "Multiply") and t.get_index() == 0
               for t in op.output(0).get_target_inputs()):
            n += 1
    return n


@contextlib.contextmanager
def quiet(collect: list[str] | None = None) -> Iterator[io.StringIO]:
    """Silence NNCF's and OpenVINO's INFO logs and progress bars while they run (errors
    still surface as exceptions); stdout is kept in the yielded buffer. With ``collect``,
    NNCF's INFO messages are appended to it instead of printed (what accuracy control
    reverted)."""
    buf = io.StringIO()

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if collect is not None:
                collect.append(record.getMessage())

    loggers = [logging.getLogger(n) for n in ("nncf", "openvino")]
    saved = [(lg.level, lg.handlers[:]) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    if collect is not None:
        loggers[0].setLevel(logging.INFO)
        loggers[0].handlers = [_Collect()]
    try:
        with contextlib.redirect_stdout(buf):
            yield buf
    finally:
        for lg, (lvl, handlers) in zip(loggers, saved):
            lg.setLevel(lvl)
            lg.handlers = handlers
