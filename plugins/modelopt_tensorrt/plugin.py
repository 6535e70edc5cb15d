"""Entry point of the built-in TensorRT plugin (importable everywhere; usable on NVIDIA GPUs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import modelopt_core as mo

from .engine import CACHE_FILE, TrtBackend, TrtEngine, TrtExporter


@mo.hookimpl
def register_exporters(register):
    register(TrtExporter)


@mo.hookimpl
def register_backends(register):
    register(TrtBackend)


class TrtFormat(mo.BytesFormat):
    """Serialized TensorRT engines (model.bin; built for one GPU and TensorRT version), plus
    ``calibration.cache`` when the engine was INT8-calibrated: the cache is portable across
    GPUs and TensorRT builds of one version, so a rebuild elsewhere skips calibration."""

    name = "tensorrt"

    def save(self, artifact: mo.ModelArtifact, folder: Path, **options: Any) -> list[str]:
        files = super().save(artifact, folder, **options)
        cache = getattr(artifact.model, "calibration_cache", None)
        if cache:
            (folder / CACHE_FILE).write_bytes(cache)
            files.append(CACHE_FILE)
        return files

    def load(self, folder: Path, saved: mo.ModelArtifact, model: Any, plugins: Any) -> Any:
        cache = folder / CACHE_FILE  # listed and hash-checked by the core like every file
        return TrtEngine(super().load(folder, saved, model, plugins),
                         cache.read_bytes() if cache.is_file() else None)


@mo.hookimpl
def register_formats(register):
    register(TrtFormat)
