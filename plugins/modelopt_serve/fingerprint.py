"""Content fingerprints of artifacts, for cache keys that never mix two models."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

__all__ = ["artifact_fingerprint"]


def _manifest_files(folder: Path) -> dict[str, str] | None:
    try:
        data = json.loads((folder / "manifest.json").read_text())
        return {name: info["sha256"] for name, info in sorted(data["files"].items())}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _saved_files(artifact: Any) -> dict[str, str] | None:
    """File hashes of a temporary save of ``artifact`` (the same ones its manifest would
    hold once saved), or None when the format cannot save it."""
    tmp = Path(tempfile.mkdtemp(prefix="modelopt-fp-"))
    try:
        artifact.save(tmp / "a")
        return _manifest_files(tmp / "a")
    except Exception:  # noqa: BLE001 - any failure: fall back to hashing in memory
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _memory_digest(model: Any) -> str | None:
    """A digest of an in-memory model the formats could not save (bytes, ONNX protos,
    torch modules); None when there is no faithful way."""
    h = hashlib.sha256()
    if isinstance(model, (bytes, bytearray, memoryview)):
        h.update(bytes(model))
        return h.hexdigest()
    if hasattr(model, "SerializeToString"):
        h.update(model.SerializeToString())
        return h.hexdigest()
    if hasattr(model, "state_dict") and hasattr(model, "named_modules"):
        h.update(repr(model).encode())
        for name, t in model.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            if t.numel():
                import torch

                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()
    return None


def artifact_fingerprint(artifact: Any) -> str:
    """A stable SHA-256 fingerprint of what ``artifact`` computes: its format, input/output
    specs, I/O structure, typed props and the content of its model files.

    A saved (or loaded) artifact uses the file hashes of its verified manifest; an in-memory
    one is saved to a temporary folder and hashed the same way, so the same model gives the
    same fingerprint saved or not. Lineage is left out (it does not change the outputs).
    When nothing faithful can be hashed, the fingerprint is unique to this call (a cache
    then never shares results with another artifact, at the cost of no reuse across loads).
    """
    content: Any = None
    if artifact.path and Path(artifact.path).is_dir():
        content = _manifest_files(Path(artifact.path))
    if content is None and artifact.model is not None:
        content = _saved_files(artifact) or _memory_digest(artifact.model)
    if content is None:
        content = f"unique:{uuid.uuid4().hex}"
    record = {"format": artifact.format,
              "inputs": [s.to_data() for s in artifact.inputs],
              "outputs": [s.to_data() for s in artifact.outputs],
              "io": artifact.io, "props": artifact.props.to_data(), "content": content}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()
