"""Reading and checking Core ML ``.mlpackage`` folders without Core ML itself (Linux too).

:func:`check_package_paths` is the cheap guard every load runs (the package manifest and the
spec's weight-blob references stay inside the package); :func:`validate_package` is the deep
check: the spec parses as an ML Program, its MIL program loads with every weight blob read,
and it reports inputs, outputs, op counts and the storage type of every layer's weight.
"""

from __future__ import annotations

import json
import math
import os
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


def check_package_paths(pkg: Path) -> Path:
    """:class:`~modelopt_core.UnsafeArtifactError` when the package's ``Manifest.json`` names
    an item outside its ``Data`` folder; :class:`~modelopt_core.ArtifactError` when it is
    missing or malformed. Returns the root model's spec file (its folder is the
    ``@model_path`` that weight blobs are named from)."""
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
    return pkg / "Data" / str(root["path"])


def check_blob_references(spec: Any, where: str) -> None:
    """Weight blobs of an ML Program spec must live in the package's weights folder."""
    for op_type, name, _ in _blob_refs(spec):
        if not name.startswith("@model_path/weights/") or ".." in name:
            raise mo.UnsafeArtifactError(
                f"{where}: op {op_type!r} reads weights from {name!r}, outside the package's "
                "weights folder; refused.")


#: weight.bin (blob storage version 2): a 64-byte file header (blob count, version), then per
#: blob a 64-byte record at the offset the spec names: sentinel, data type, size, data offset
_BLOB_HEADER = 64
_BLOB_SENTINEL = 0xDEADBEEF


def _blob_refs(spec: Any) -> Any:
    """(op type, blob file name, offset) of every weight blob an ML Program spec reads."""
    if spec.WhichOneof("Type") != "mlProgram":
        return
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in _spec_ops(block):
                for value in list(op.attributes.values()):
                    if value.WhichOneof("value") == "blobFileValue":
                        yield op.type, value.blobFileValue.fileName, \
                            int(value.blobFileValue.offset)


def check_blob_files(spec: Any, model_dir: Path) -> None:
    """Every weight blob the spec reads lies whole inside its file under ``model_dir`` (the
    ``@model_path``): :class:`~modelopt_core.ArtifactError` naming the file when it is missing,
    truncated or has no blob where the spec says (a hash in the artifact manifest only says the
    file is the one saved, not that it is whole). Files of another blob storage version are
    left to :func:`validate_package`."""
    import contextlib
    import struct

    with contextlib.ExitStack() as stack:
        opened: dict[Path, tuple[Any, int] | None] = {}
        for op_type, name, offset in _blob_refs(spec):
            path = model_dir / name.replace("@model_path/", "", 1)
            if path not in opened:
                try:
                    f = stack.enter_context(open(path, "rb"))
                    size = os.fstat(f.fileno()).st_size
                    head = f.read(8)
                except OSError as e:
                    raise mo.ArtifactError(
                        f"{path}: the weights of op {op_type!r} cannot be read "
                        f"({type(e).__name__}: {e}); re-export the model.") from e
                known = len(head) == 8 and struct.unpack("<II", head)[1] == 2
                opened[path] = (f, size) if known else None
                if len(head) < 8:
                    raise _truncated(path, size, f"it has no blob header ({size} bytes)")
            if opened[path] is None:
                continue
            f, size = opened[path]  # type: ignore[misc]
            if offset < _BLOB_HEADER or offset + _BLOB_HEADER > size:
                raise _truncated(path, size, f"op {op_type!r} reads a blob at byte {offset}")
            f.seek(offset)
            sentinel, _, nbytes, start = struct.unpack("<IIQQ", f.read(24))
            if sentinel != _BLOB_SENTINEL:
                raise mo.ArtifactError(
                    f"{path}: corrupt: op {op_type!r} reads a blob at byte {offset}, where the "
                    "file holds none; re-export the model.")
            if start + nbytes > size:
                raise _truncated(path, size, f"op {op_type!r} reads {nbytes} bytes of weights "
                                             f"from byte {start}")


def _truncated(path: Path, size: int, what: str) -> mo.ArtifactError:
    return mo.ArtifactError(f"{path}: truncated or corrupt: {what}, past the end of the file "
                            f"({size} bytes); re-export the model.")


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


def validate_package(model: Any, where: str | None = None) -> dict[str, Any]:
    """Check a Core ML model (an ``MLModel`` or the path of an ``.mlpackage``) without
    running it; :class:`~modelopt_core.ArtifactError` when it is not a loadable ML Program
    (every weight blob whole in its file, the MIL program loading with them). ``where`` names
    the model in messages (default: its package path).

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
    where = where or getattr(model, "package_path", None) or "Core ML model"
    if spec.WhichOneof("Type") != "mlProgram":
        raise mo.ArtifactError(f"{where}: a {spec.WhichOneof('Type')!r} Core ML model; only ML "
                               "Programs (.mlpackage) are supported.")
    check_blob_references(spec, str(where))
    if getattr(model, "weights_dir", None):
        check_blob_files(spec, Path(model.weights_dir).parent)
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
