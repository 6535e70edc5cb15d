"""Helpers shared by the ONNX components: numerics checks against a reference, temp files."""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import modelopt_core as mo


def ort_session(model: Any, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for an in-memory ModelProto (used for checks only)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def run_onnx(model: Any, inputs: Sequence[Any]) -> list[Any]:
    """Run ``model`` on torch inputs with ONNX Runtime; returns numpy outputs."""
    sess = ort_session(model)
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: x.detach().cpu().numpy() for n, x in zip(names, inputs)})


def max_errors(ref: Sequence[Any], got: Sequence[Any]) -> tuple[float, float]:
    """(max abs error, max error relative to the reference's max magnitude) over outputs."""
    import numpy as np

    abs_err = rel_err = 0.0
    for r, g in zip(ref, got):
        r = np.asarray(r, dtype=np.float64)
        g = np.asarray(g, dtype=np.float64)
        if r.shape != g.shape:
            return float("inf"), float("inf")
        e = float(np.max(np.abs(r - g))) if r.size else 0.0
        abs_err = max(abs_err, e)
        rel_err = max(rel_err, e / max(float(np.max(np.abs(r))) if r.size else 0.0, 1e-12))
    return abs_err, rel_err


def check_against(where: str, ref: Sequence[Any], model: Any, inputs: Sequence[Any],
                  rtol: float, atol: float) -> dict[str, float]:
    """Run ``model`` on ``inputs`` and compare with reference outputs; ExportError if off."""
    import numpy as np

    got = run_onnx(model, inputs)
    abs_err, rel_err = max_errors(ref, got)
    for r, g in zip(ref, got):
        r = np.asarray(r, dtype=np.float64)
        g = np.asarray(g, dtype=np.float64)
        if r.shape != g.shape or not np.allclose(g, r, rtol=rtol, atol=atol):
            raise mo.ExportError(
                f"{where}: ONNX output differs from the reference (max abs error {abs_err:.3g}, "
                f"relative {rel_err:.3g}; tolerance rtol={rtol}, atol={atol}). Raise the "
                "tolerance (rtol/atol) if this is expected, or report the model.")
    return {"max_abs_error": abs_err, "max_rel_error": rel_err}


def reference_outputs(artifact: mo.ModelArtifact, inputs: Sequence[Any]) -> list[Any]:
    """Outputs of an artifact (torch or onnx) as numpy arrays, for numerics checks."""
    import copy

    import torch

    if artifact.format == "onnx":
        return run_onnx(artifact.model, inputs)
    model = copy.deepcopy(artifact.model).eval()
    dtype = artifact.metadata.get("torch_compute_dtype")
    xs = [x.to(getattr(torch, dtype)) if dtype and x.is_floating_point() else x for x in inputs]
    with torch.no_grad():
        out = model(*xs)
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    return [o.float().numpy() for o in outs]


def check_inputs_for(artifact: mo.ModelArtifact, ctx: mo.Context, batch: int = 2) -> tuple:
    """Inputs for numerics checks: calibration data when there is some, else example inputs
    tiled to ``batch`` rows (so dynamic batch axes are exercised)."""
    if ctx.calibration_data is not None:
        for item in ctx.calibration_data:
            return mo.as_input_tuple(item)
    return tuple(tile_batch(x, batch) for x in ctx.example_inputs)


def tile_batch(x: Any, batch: int) -> Any:
    """Repeat a tensor along dim 0 to exactly ``batch`` rows."""
    reps = -(-batch // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:batch].contiguous()


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Swallow chatty stdout of converters (kept for debugging in the yielded buffer)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield buf


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A temporary folder for file-based tools (ORT quantization works on paths)."""
    with tempfile.TemporaryDirectory(prefix="modelopt-onnx-") as d:
        yield Path(d)
