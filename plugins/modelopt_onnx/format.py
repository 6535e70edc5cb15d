"""Format ``onnx``: ONNX models in an artifact folder (``model.onnx``, plus one
``model.onnx.data`` of external tensors for models over protobuf's 2 GiB limit).

Loading never follows external data outside the folder (path traversal is refused) and runs
the ONNX checker; the core has already verified every file's hash.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modelopt_core as mo
from modelopt_core.errors import ArtifactError, UnsafeArtifactError

#: ONNX models whose protobuf is larger (bytes) are saved with external data: protobuf cannot
#: serialize 2 GiB, and this leaves room for the graph itself
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**20
#: the one external data file of an ONNX artifact saved with external data
EXTERNAL_DATA_FILE = "model.onnx.data"
PRIMARY = "model.onnx"


def _non_negative(inst: Any, attr: Any, value: Any) -> None:
    if value is not None and value < 0:
        raise mo.ConfigError(f"{attr.name} must be >= 0, got {value}")


@mo.config
class OnnxSaveOptions:
    external_data_threshold: int | None = mo.field(
        None, validator=_non_negative,
        help="save tensors as external data above this model size in bytes (default: just "
             "under protobuf's 2 GiB)")


class OnnxFormat(mo.Format):
    """ONNX models: model.onnx (+ model.onnx.data over 2 GiB)."""

    name = "onnx"
    primary = PRIMARY
    suffixes = (".onnx",)

    def save(self, artifact: mo.ModelArtifact, folder: Path, **options: Any) -> list[str]:
        import onnx

        cfg = mo.build_config(OnnxSaveOptions, options, "format 'onnx'")
        limit = (EXTERNAL_DATA_THRESHOLD if cfg.external_data_threshold is None
                 else cfg.external_data_threshold)
        if _onnx_size(artifact.model) > limit:
            return _save_onnx_external(artifact.model, folder)
        onnx.save_model(artifact.model, str(folder / PRIMARY))
        return [PRIMARY]

    def load(self, folder: Path, saved: mo.ModelArtifact, model: Any, plugins: Any) -> Any:
        return _load_onnx(folder / PRIMARY)

    def load_file(self, path: Path, model: Any, plugins: Any) -> Any:
        return _load_onnx(path)

    def file_specs(self, model: Any) -> tuple[tuple[mo.TensorSpec, ...],
                                              tuple[mo.TensorSpec, ...]]:
        """The graph's own input and output specs (see :mod:`.specs`)."""
        from .specs import graph_specs

        return graph_specs(model)

    def runtime_source(self, model: Any) -> contextlib.AbstractContextManager[bytes | str]:
        """The ModelProto as ONNX Runtime (or OpenVINO) opens it: its bytes, or over
        protobuf's 2 GiB a temporary copy saved with external data, deleted on exit (see
        :func:`onnx_session_source`)."""
        return onnx_session_source(model)


def _onnx_size(model: Any) -> int:
    """Serialized size of a ModelProto; "infinite" past what protobuf can serialize (2 GiB),
    where ``ByteSize()`` itself raises."""
    try:
        return int(model.ByteSize())
    except Exception:  # google.protobuf.message.EncodeError
        return 1 << 62



def _save_onnx_external(model: Any, folder: Path) -> list[str]:
    """Save ``model`` as ``folder/model.onnx`` with every tensor over 1 KiB (initializers and
    attribute constants) in the one file ``model.onnx.data``; returns the files written."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)  # save_model moves the tensor data out of the proto it is given
    onnx.save_model(m, str(folder / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=EXTERNAL_DATA_FILE,
                    size_threshold=1024, convert_attribute=True)
    return ["model.onnx"] + ([EXTERNAL_DATA_FILE] if (folder / EXTERNAL_DATA_FILE).exists()
                             else [])



@contextlib.contextmanager
def onnx_session_source(model: Any) -> Iterator[bytes | str]:
    """What ``onnxruntime.InferenceSession`` should be given for the ModelProto ``model``: its
    bytes, or, for a model over ``EXTERNAL_DATA_THRESHOLD`` bytes (protobuf cannot serialize
    2 GiB), the path of a temporary copy saved with external data, deleted on exit (ORT has
    read it by then)."""
    if _onnx_size(model) <= EXTERNAL_DATA_THRESHOLD:
        yield model.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="modelopt-ort-", ignore_cleanup_errors=True) as d:
        _save_onnx_external(model, Path(d))
        yield str(Path(d) / "model.onnx")



def _load_onnx(fp: Path) -> Any:
    import onnx

    try:
        m = onnx.load_model(str(fp), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise ArtifactError(f"{fp}: not a readable ONNX model ({type(e).__name__}: {e}); "
                            "the file is corrupt or truncated.") from e
    if not m.graph.node and not m.graph.output:
        raise ArtifactError(f"{fp}: parsed as ONNX but holds no graph; the file is corrupt.")
    root = fp.parent.resolve()
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    external = [t for t in _get_all_tensors(m) if uses_external_data(t)]
    for t in external:
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        try:
            target = (root / loc).resolve()
        except (OSError, RuntimeError, ValueError):
            target = root
        if os.path.isabs(loc) or root not in target.parents:
            raise UnsafeArtifactError(
                f"{fp}: tensor {t.name!r} points its external data at {loc!r}, outside the "
                "model's folder; refused (path traversal).")
    try:
        if external:  # by path: the checker refuses in-memory models over 2 GiB
            onnx.checker.check_model(str(fp))
        onnx.load_external_data_for_model(m, str(root))
        if not external:
            onnx.checker.check_model(m)
    except Exception as e:
        raise ArtifactError(f"{fp}: ONNX model failed to load or check: {e}") from e
    for t in external:  # loaded: the proto is as it was before saving
        t.ClearField("data_location")
    return m
