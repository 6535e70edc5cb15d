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


#: the error figures, the check inputs and tiling are the core's (``mo.max_errors``,
#: ``mo.check_inputs_for``, ``mo.tile_batch``); kept here under their old names
max_errors = mo.max_errors
check_inputs_for = mo.check_inputs_for
tile_batch = mo.tile_batch


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
    """Outputs of an artifact (torch or onnx) as numpy arrays, for numerics checks: an ONNX
    model on ONNX Runtime (:func:`run_onnx`), a torch one in process
    (:func:`modelopt_core.reference_outputs`)."""
    if artifact.format == "onnx":
        return run_onnx(artifact.model, inputs)
    return mo.reference_outputs(artifact, inputs)


def quiet() -> contextlib.AbstractContextManager:
    """Silence chatty converters: stdout and log warnings (see :func:`modelopt_core.quiet`)."""
    return mo.quiet()


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A temporary folder for file-based tools (ORT quantization works on paths)."""
    with tempfile.TemporaryDirectory(prefix="modelopt-onnx-") as d:
        yield Path(d)
