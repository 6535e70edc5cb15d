"""Reading and checking Core ML ``.mlpackage`` folders without Core ML itself (Linux too).

:func:`check_package_paths` is the cheap guard every load runs (the package manifest and the
spec's weight-blob references stay inside the package); :func:`validate_package` is the deep
check: the spec parses as an ML Program, its MIL program loads with every weight blob read,
and it reports inputs, outputs, op counts and the storage type of every layer's weight.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import modelopt_core as mo

#: the package folder inside a coreml artifact
PACKAGE = "model.mlpackage"
#: ops whose ``weight`` (or ``y`` for matmul) input is a layer's weight
_WEIGHT_INPUTS = {"conv": "weight", "conv_transpose": "weight", "linear": "weight",
                  "matmul": "y", "gather": "x", "lstm": "weight_ih", "gru": "weight_ih"}


def package_files(root: Path) -> list[str]:
    """Every file under ``root`` as ``/``-separated paths relative to ``root``'s parent."""
    base = root.parent
    return sorted(p.relative_to(base).as_posix() for p in root.rglob("*") if p.is_file())


def check_package_paths(pkg: Path) -> None:
    """:class:`~modelopt_core.UnsafeArtifactError` when the package's ``Manifest.json`` names
    an item outside its ``Data`` folder; :class:`~modelopt_core.ArtifactError` when it is
    missing or malformed."""
    manifest = pkg / "Manifest.json"
    try:
        data = json.loads(manifest.read_text())
        entries = data["itemInfoEntries"]
        paths = [str(e["path"]) for e in entries.values()]
        root = entries[data["rootModelIdentifier"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise mo.ArtifactError(f"{manifest}: not a readable Core ML package manifest "
                               f"({type(e).__name__}: {e}); re-export the model.") from e
    data_dir = (pkg / "Data").resolve()
    for rel in paths:
        target = (data_dir / rel).resolve()
        if Path(rel).is_absolute() or data_dir not in target.parents:
            raise mo.UnsafeArtifactError(f"{manifest}: item path {rel!r} points outside the "
                                         "package; refused (path traversal).")
    if not (data_dir / str(root["path"])).is_file():
        raise mo.ArtifactError(f"{manifest}: the root model {root['path']!r} is missing.")


def check_blob_references(spec: Any, where: str) -> None:
    """Weight blobs of an ML Program spec must live in the package's weights folder."""
    if spec.WhichOneof("Type") != "mlProgram":
        return
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in _spec_ops(block):
                for value in list(op.attributes.values()):
                    if value.WhichOneof("value") == "blobFileValue":
                        name = value.blobFileValue.fileName
                        if not name.startswith("@model_path/weights/") or ".." in name:
                            raise mo.UnsafeArtifactError(
                                f"{where}: op {op.type!r} reads weights from {name!r}, outside "
                                "the package's weights folder; refused.")


def _spec_ops(block: Any) -> Any:
    for op in block.operations:
        yield op
        for sub in op.blocks:
            yield from _spec_ops(sub)


def _features(features: Any) -> list[dict[str, Any]]:
    from coremltools.proto import FeatureTypes_pb2

    out = []
    for f in features:
        kind = f.type.WhichOneof("Type")
        item: dict[str, Any] = {"name": f.name, "type": kind}
        if kind == "multiArrayType":
            t = f.type.multiArrayType
            item["dtype"] = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(t.dataType)
            if t.WhichOneof("ShapeFlexibility") == "shapeRange":
                item["shape"] = [r.lowerBound if r.lowerBound == r.upperBound
                                 else [r.lowerBound, r.upperBound]
                                 for r in t.shapeRange.sizeRanges]
            else:
                item["shape"] = list(t.shape)
        out.append(item)
    return out


def validate_package(model: Any) -> dict[str, Any]:
    """Check a Core ML model (an ``MLModel`` or the path of an ``.mlpackage``) without
    running it; :class:`~modelopt_core.ArtifactError` when it is not a loadable ML Program.

    Returns ``spec_version``, ``opset``, ``inputs`` / ``outputs`` (name, dtype, shape; a
    flexible dim as ``[lo, hi]``, unbounded with Core ML's ``hi`` of 2**31 - 1), ``ops``
    (compute op type -> count, the constants and decompression ops left out), ``op_count``
    and ``weights`` (layer weight storage -> count: ``fp32``, ``fp16``, ``int8`` for
    linear-quantized, ``palettized<n>`` for an n-bit look-up table)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as mil_load

    if isinstance(model, (str, Path)):
        check_package_paths(Path(model))
        model = ct.models.MLModel(str(model), skip_model_load=True)
    spec = model.get_spec()
    where = getattr(model, "package_path", None) or "Core ML model"
    if spec.WhichOneof("Type") != "mlProgram":
        raise mo.ArtifactError(f"{where}: a {spec.WhichOneof('Type')!r} Core ML model; only ML "
                               "Programs (.mlpackage) are supported.")
    check_blob_references(spec, str(where))
    try:
        prog = mil_load(spec, spec.specificationVersion, model.weights_dir)
    except Exception as e:
        raise mo.ArtifactError(f"{where}: the ML Program does not load ({type(e).__name__}: "
                               f"{str(e)[:300]}); the package is corrupt.") from e
    func = prog.functions["main"]
    ops: Counter[str] = Counter()
    weights: Counter[str] = Counter()
    for op in _mil_ops(func):
        if op.op_type == "const" or op.op_type.startswith("constexpr_"):
            continue
        ops[op.op_type] += 1
        key = _WEIGHT_INPUTS.get(op.op_type)
        var = op.inputs.get(key) if key else None
        if var is not None and var.op is not None:
            weights[_storage(var)] += 1
    fn_spec = spec.mlProgram.functions["main"]
    return {"spec_version": int(spec.specificationVersion), "opset": fn_spec.opset,
            "inputs": _features(spec.description.input),
            "outputs": _features(spec.description.output),
            "ops": dict(sorted(ops.items())), "op_count": int(sum(ops.values())),
            "weights": dict(sorted(weights.items()))}


def _mil_ops(block: Any) -> Any:
    for op in block.operations:
        yield op
        for sub in getattr(op, "blocks", ()):
            yield from _mil_ops(sub)


def _storage(var: Any) -> str:
    """How a weight is stored: its dtype, or the compression that produces it."""
    from coremltools.converters.mil.mil import types

    op = var.op
    if op is None:
        return "input"
    t = op.op_type
    if t == "const":
        return types.builtin_to_string(var.dtype)
    if t == "cast" and op.inputs.get("x") is not None:
        return _storage(op.inputs["x"])
    if t.startswith("constexpr_lut_to_dense"):
        lut = op.inputs.get("lut")  # iOS16: (2**n,); iOS18: (..., 2**n, vector size)
        size = 0 if lut is None else int(lut.shape[0] if len(lut.shape) == 1 else lut.shape[-2])
        return f"palettized{round(math.log2(size))}" if size > 1 else "palettized"
    for name in ("quantized_data", "data"):
        data = op.inputs.get(name)
        if data is not None:
            return types.builtin_to_string(data.dtype)
    return t
