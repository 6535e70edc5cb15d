"""Format ``tflite``: a LiteRT / TensorFlow Lite flatbuffer (``bytes`` in memory), saved as
``model.tflite``. Loading checks the flatbuffer's file identifier (``TFL3``); nothing in the
file is executed (the Interpreter reads it only when a backend loads it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import modelopt_core as mo

PRIMARY = "model.tflite"
#: the flatbuffer file identifier of TFLite models (bytes 4..8)
IDENTIFIER = b"TFL3"


def check_flatbuffer(data: bytes, where: str) -> bytes:
    """``data`` if it is a TFLite flatbuffer, else :class:`~modelopt_core.ArtifactError`."""
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        raise mo.ArtifactError(
            f"{where}: not a TFLite flatbuffer (no {IDENTIFIER.decode()} identifier at byte 4; "
            f"{len(data)} bytes); the file is corrupt or of another format.")
    return data


class TfliteFormat(mo.BytesFormat):
    """LiteRT / TensorFlow Lite flatbuffers (model.tflite)."""

    name = "tflite"
    primary = PRIMARY
    suffixes = (".tflite",)

    def save(self, artifact: mo.ModelArtifact, folder: Path, **options: Any) -> list[str]:
        if isinstance(artifact.model, (bytes, bytearray)):
            check_flatbuffer(bytes(artifact.model), f"artifact {artifact.name!r}")
        return super().save(artifact, folder, **options)

    def load(self, folder: Path, saved: mo.ModelArtifact, model: Any, plugins: Any) -> Any:
        return check_flatbuffer((folder / PRIMARY).read_bytes(), str(folder / PRIMARY))

    def load_file(self, path: Path, model: Any, plugins: Any) -> Any:
        return check_flatbuffer(path.read_bytes(), str(path))
