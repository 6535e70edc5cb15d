"""Helpers shared by the ONNX components: numerics checks against a reference, temp files."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import modelopt_core as mo


def ort_session(model: Any, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for an in-memory ModelProto (used for checks only); a model
    over 2 GiB goes to ORT as a temporary file with external data."""
    import onnxruntime as ort

    from modelopt_onnx.format import onnx_session_source

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    with onnx_session_source(model) as src:
        return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run_onnx(model: Any, inputs: Sequence[Any]) -> list[Any]:
    """Run ``model`` on torch inputs with ONNX Runtime; returns numpy outputs."""
    sess = ort_session(model)
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: x.detach().cpu().numpy() for n, x in zip(names, inputs)})


def max_errors(ref: Sequence[Any], got: Sequence[Any]) -> tuple[float, float]:
    """(max abs error, max error relative to the reference's max magnitude) over outputs.

    Positions where both hold the same non-finite value (NaN and NaN, or the same infinity)
    are left out; a shape mismatch, or NaN/Inf in one where the other differs, is ``inf``
    (NaN never hides as an error of 0). :func:`check_against` refuses NaN/Inf outright.
    """
    import numpy as np

    abs_err = rel_err = 0.0
    for r, g in zip(ref, got):
        r = np.asarray(r, dtype=np.float64)
        g = np.asarray(g, dtype=np.float64)
        if r.shape != g.shape:
            return float("inf"), float("inf")
        fr, fg = np.isfinite(r), np.isfinite(g)
        if not (np.array_equal(fr, fg)
                and np.array_equal(r[~fr], g[~fg], equal_nan=True)):
            return float("inf"), float("inf")
        r, g = r[fr], g[fr]
        e = float(np.max(np.abs(r - g))) if r.size else 0.0
        abs_err = max(abs_err, e)
        rel_err = max(rel_err, e / max(float(np.max(np.abs(r))) if r.size else 0.0, 1e-12))
    return abs_err, rel_err


def check_against(where: str, ref: Sequence[Any], model: Any, inputs: Sequence[Any],
                  rtol: float, atol: float, source: Any = None) -> dict[str, float]:
    """Run ``model`` on ``inputs`` and compare with reference outputs; ExportError if off.

    NaN/Inf in the reference is a :class:`~modelopt_core.NumericalError` (the source model
    itself produces them; ``source``, a torch module, lets the message name its first layer
    with non-finite weights); NaN/Inf in the ONNX output only is an ExportError.
    """
    mo.check_reference(where, ref, source=source)  # before running the graph
    return mo.check_outputs(where, ref, run_onnx(model, inputs), rtol=rtol, atol=atol,
                            runtime="ONNX model", source=source)


def reference_outputs(artifact: mo.ModelArtifact, inputs: Sequence[Any]) -> list[Any]:
    """Outputs of an artifact (torch or onnx) as numpy arrays, for numerics checks."""
    import copy

    import torch

    if artifact.format == "onnx":
        return run_onnx(artifact.model, inputs)
    model = copy.deepcopy(artifact.model).eval()
    dtype = artifact.props.compute_dtype
    xs = [x.to(getattr(torch, dtype)) if dtype and x.is_floating_point() else x for x in inputs]
    with torch.no_grad():
        out = model(*xs)
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    return [o.float().numpy() for o in outs]


def check_inputs_for(artifact: mo.ModelArtifact, ctx: mo.Context, batch: int = 2,
                     who: str = "numerics check") -> tuple:
    """Inputs for numerics checks: the first calibration batch when there is one, else
    example inputs tiled to ``batch`` rows (so dynamic batch axes are exercised).

    A one-shot calibration iterator is never drawn from (that would silently drop a batch the
    calibration needs): example inputs are used, with a note. The calibration batch is
    validated like calibration data (:class:`~modelopt_core.DataError` naming it). A torch
    model with NaN/Inf weights is refused up front with a
    :class:`~modelopt_core.NumericalError` naming the first such layer: its outputs would be
    NaN/Inf and nothing could be checked.
    """
    if artifact.format == "torch" and hasattr(artifact.model, "named_parameters"):
        found = mo.first_nonfinite(artifact.model)
        if found is not None:
            raise mo.NumericalError(
                f"{who}: the torch model itself produces NaN/Inf: layer "
                f"{found[0] or '<root>'!r} has NaN/Inf in its {found[1]}, so its outputs and "
                "any export of it cannot be checked. Fix or retrain the model (or reload a "
                "good checkpoint); check_numerics=False skips this check.")
    data = ctx.calibration_data
    if data is not None and mo.data.is_one_shot(data):
        ctx.warn(f"{who}: calibration_data is a one-shot iterator; checked on the example "
                 "inputs instead, so that no calibration batch is used up (pass a list or a "
                 "DataLoader to check on real data).")
    elif data is not None:
        specs = ctx.original.inputs if ctx.original is not None else ()
        for item in data:
            item = mo.data.split_targets(item, specs)[0]  # (inputs, targets) pairs
            return mo.check_batch(item, specs, "calibration_data", 0, who, ctx.warn)
    return tuple(tile_batch(x, batch) for x in ctx.example_inputs)


def tile_batch(x: Any, batch: int) -> Any:
    """Repeat a tensor along dim 0 to exactly ``batch`` rows."""
    reps = -(-batch // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:batch].contiguous()


def quiet() -> contextlib.AbstractContextManager:
    """Silence chatty converters: stdout and log warnings (see :func:`modelopt_core.quiet`)."""
    return mo.quiet()


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A temporary folder for file-based tools (ORT quantization works on paths)."""
    with tempfile.TemporaryDirectory(prefix="modelopt-onnx-") as d:
        yield Path(d)
