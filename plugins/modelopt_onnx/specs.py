"""The input and output specs an ONNX graph declares (for a bare ``.onnx`` file: a model the
project did not export, whose specs no manifest holds).

Graph inputs that are initializers (old exporters list weights as inputs) are not inputs. A
dim with a value is fixed; a named dim (``dim_param``) or an unnamed one is symbolic. A
symbolic first dim is renamed ``"batch"`` (the name every modelopt component gives the batch
dim: TensorRT profiles, ONNX export) in every spec that uses it, unless some dim is named
``batch`` already. Outputs the graph leaves without a shape get one from ONNX shape
inference where it can tell.
"""

from __future__ import annotations

from typing import Any

import modelopt_core as mo

__all__ = ["graph_specs"]


def graph_specs(model: Any) -> tuple[tuple[mo.TensorSpec, ...], tuple[mo.TensorSpec, ...]]:
    """(input specs, output specs) of the ModelProto ``model``."""
    g = model.graph
    weights = {i.name for i in g.initializer}
    inputs = [v for v in g.input if v.name not in weights]
    outputs = list(g.output)
    if any(not _has_shape(v) for v in outputs):
        outputs = _inferred_outputs(model) or outputs
    raw_in = [(v.name, _dims(v), _dtype(v)) for v in inputs]
    raw_out = [(v.name, _dims(v), _dtype(v)) for v in outputs]
    rename = _batch_names(raw_in)
    return (tuple(_spec(n, d, t, rename) for n, d, t in raw_in),
            tuple(_spec(n, d, t, rename) for n, d, t in raw_out))


def _has_shape(v: Any) -> bool:
    t = v.type.tensor_type
    return t.HasField("shape")


def _inferred_outputs(model: Any) -> list[Any] | None:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 (an op shape inference does not know: keep the graph's)
        return None
    return list(inferred.graph.output)


def _dims(v: Any) -> list[int | str | None]:
    """Each dim: its value, its name, or None (unknown); ``[]`` for a scalar or no shape."""
    t = v.type.tensor_type
    if not t.HasField("shape"):
        return []
    out: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(str(d.dim_param))
        else:
            out.append(None)
    return out


def _dtype(v: Any) -> str:
    import numpy as np
    import onnx

    elem = v.type.tensor_type.elem_type
    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)))
    except Exception:  # noqa: BLE001 (a type numpy has no name for: bfloat16, float8...)
        return onnx.TensorProto.DataType.Name(elem).lower()


def _batch_names(raw: list[tuple[str, list[Any], str]]) -> dict[Any, str] | None:
    """The first dims to call ``"batch"`` (their names, and None for an unnamed first dim);
    None when some dim is named ``batch`` already."""
    names = {d for _, dims, _ in raw for d in dims if isinstance(d, str)}
    if "batch" in names:
        return None
    return {dims[0]: "batch" for _, dims, _ in raw if dims and not isinstance(dims[0], int)}


def _spec(name: str, dims: list[Any], dtype: str,
          rename: dict[Any, str] | None) -> mo.TensorSpec:
    shape: list[int | str] = []
    for j, d in enumerate(dims):
        if isinstance(d, int):
            shape.append(d)
        elif rename is not None and d in rename and (d is not None or j == 0):
            shape.append(rename[d])
        else:
            shape.append(d if d is not None else f"{name}_dim{j}")
    return mo.TensorSpec(name, tuple(shape), dtype)
