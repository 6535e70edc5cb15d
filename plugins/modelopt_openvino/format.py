"""Format ``openvino``: an ``openvino.Model`` in an artifact folder as OpenVINO IR,
``model.xml`` (the graph) + ``model.bin`` (the weights), saved without FP16 compression of
the weights (``compress_to_fp16=False``: the artifact keeps exactly the precision it was
given; quantization scales in particular must not be rounded to FP16).

Loading reads the two verified files with ``openvino.Core.read_model``; nothing from the
folder is executed (IR is a graph description; no extension library is loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import modelopt_core as mo
from modelopt_core.errors import ArtifactError

XML = "model.xml"
BIN = "model.bin"


class OpenVinoFormat(mo.Format):
    """OpenVINO IR: model.xml + model.bin (weights kept at their precision)."""

    name = "openvino"
    primary = XML
    suffixes = (".xml",)
    requires = ("openvino",)
    install_hint = "pip install 'modelopt-core[openvino]'"

    def save(self, artifact: mo.ModelArtifact, folder: Path, **options: Any) -> list[str]:
        import openvino as ov

        mo.build_config(mo.interfaces.EmptyConfig, options, "format 'openvino'")
        if not isinstance(artifact.model, ov.Model):
            raise ArtifactError(f"format 'openvino': expected an openvino.Model, got "
                                f"{type(artifact.model).__name__}.")
        # save_model transforms a clone: the in-memory model stays as it is
        ov.save_model(artifact.model, str(folder / XML), compress_to_fp16=False)
        files = [XML]
        if (folder / BIN).exists():
            files.append(BIN)
        return files

    def load(self, folder: Path, saved: mo.ModelArtifact, model: Any, plugins: Any) -> Any:
        return _read(folder / XML)

    def load_file(self, path: Path, model: Any, plugins: Any) -> Any:
        return _read(path)


def _read(xml: Path) -> Any:
    from .common import core

    bin_path = xml.with_suffix(".bin")
    try:
        if bin_path.exists():
            return core().read_model(str(xml), str(bin_path))
        return core().read_model(str(xml))
    except Exception as e:
        raise ArtifactError(f"{xml}: not a readable OpenVINO IR ({type(e).__name__}: "
                            f"{str(e)[:300]}); the file is corrupt or truncated.") from e
