"""Format ``coreml``: a Core ML ML Program. In memory a ``coremltools.models.MLModel``; in an
artifact folder the package ``model.mlpackage/`` (``Manifest.json``, the spec
``Data/com.apple.CoreML/model.mlmodel``, ``.../weights/weight.bin``), every file listed in the
artifact's manifest and hashed by the core.

Loading checks that the package manifest and the spec's weight references stay inside the
package (path traversal is refused), then reads it with ``MLModel(path,
skip_model_load=True)`` and runs the exporter's validation (every weight blob whole in its
file, the MIL program loading with its weights): nothing is compiled or run (prediction is
macOS-only; the ``coreml`` backend loads it for prediction there). The package is copied to a
private temporary folder first, so the loaded model never depends on an artifact folder that a
later save may replace.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import modelopt_core as mo

from .package import (
    PACKAGE,
    check_blob_files,
    check_blob_references,
    check_package_paths,
    package_files,
    validate_package,
)


class CoremlFormat(mo.Format):
    """Core ML ML Programs (model.mlpackage folder)."""

    name = "coreml"
    primary = f"{PACKAGE}/Manifest.json"

    def save(self, artifact: mo.ModelArtifact, folder: Path, **options: Any) -> list[str]:
        mo.build_config(mo.interfaces.EmptyConfig, options, "format 'coreml'")
        model = artifact.model
        if not hasattr(model, "get_spec") or not hasattr(model, "save"):
            raise mo.ArtifactError(f"cannot save {artifact.name!r} as 'coreml': it holds "
                                   f"{type(model).__name__}, not a coremltools MLModel.")
        if model.get_spec().WhichOneof("Type") != "mlProgram":
            raise mo.ArtifactError(f"cannot save {artifact.name!r}: only ML Program Core ML "
                                   "models (.mlpackage) are supported.")
        target = folder / PACKAGE
        model.save(str(target))
        if not (target / "Manifest.json").is_file():
            raise mo.ArtifactError(f"coremltools wrote no {PACKAGE}/Manifest.json for "
                                   f"{artifact.name!r}; the model is not a package.")
        return package_files(target)

    def load(self, folder: Path, saved: mo.ModelArtifact, model: Any, plugins: Any) -> Any:
        import coremltools as ct

        pkg = folder / PACKAGE
        root = check_package_paths(pkg)
        private = Path(tempfile.mkdtemp(prefix="modelopt-coreml-", suffix=".mlpackage"))
        shutil.copytree(pkg, private, dirs_exist_ok=True)
        try:  # is_temp_package: coremltools removes the private copy at exit
            loaded = ct.models.MLModel(str(private), is_temp_package=True,
                                       skip_model_load=True)
        except Exception as e:
            shutil.rmtree(private, ignore_errors=True)
            raise mo.ArtifactError(f"{pkg}: not a loadable Core ML package "
                                   f"({type(e).__name__}: {str(e)[:300]}).") from e
        try:
            spec = loaded.get_spec()
            if spec.WhichOneof("Type") != "mlProgram":
                raise mo.ArtifactError(f"{pkg}: a {spec.WhichOneof('Type')!r} model; only ML "
                                       "Programs are supported.")
            check_blob_references(spec, str(pkg))
            check_blob_files(spec, root.parent)  # names the artifact's own file
            validate_package(loaded, where=str(pkg))  # the MIL program loads its weights
        except BaseException:
            shutil.rmtree(private, ignore_errors=True)
            raise
        return loaded
