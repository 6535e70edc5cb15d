"""ModelArtifact, TensorSpec and lineage Steps, with atomic, hash-verified save/load.

An artifact is immutable: every optimizer or exporter returns a new one with one more
:class:`Step` in its lineage. On disk an artifact is a folder holding the model files and a
``manifest.json`` that records the format, the input/output specs, the lineage and the SHA-256
of every file. Loading verifies every hash and never executes code from the folder: torch
weights are read from safetensors only (pickles are refused), ONNX external data must stay
inside the folder, and a file the manifest does not list is refused.

Saving is crash-safe (see :mod:`modelopt_core.persist`): it refuses to replace a folder that is
not a modelopt artifact, serializes concurrent saves of one path with a lock, and a crash at any
point leaves the path loadable. ONNX models over ``EXTERNAL_DATA_THRESHOLD`` bytes are saved with
their tensors in one external data file inside the folder, listed and hashed like every file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from . import _registry, persist
from . import folder as _fs
from .errors import ArtifactError, ModeloptError
from .folder import MANIFEST, sha256_file
from .manifest import MANIFEST_VERSION, spec_fields, step_fields

if TYPE_CHECKING:  # for annotations only: plugins imports this module
    from .plugins import PluginManager

__all__ = [
    "ArtifactProps",
    "ModelArtifact",
    "Step",
    "TensorSpec",
    "load_artifact",
    "sha256_file",
]

@attrs.define(frozen=True)
class TensorSpec:
    """One model input or output: name, shape (ints or symbolic names like ``"batch"``), dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    @classmethod
    def from_tensor(cls, name: str, t: Any, dynamic_batch: bool = True) -> TensorSpec:
        """Spec of a torch tensor; the first dim becomes ``"batch"`` when ``dynamic_batch``."""
        shape: list[int | str] = list(t.shape)
        if dynamic_batch and shape:
            shape[0] = "batch"
        return cls(name, tuple(shape), str(t.dtype).replace("torch.", ""))

    def matches(self, shape: tuple[int, ...]) -> bool:
        """True when a concrete ``shape`` fits this spec (symbolic dims match any size)."""
        return len(shape) == len(self.shape) and all(
            isinstance(s, str) or s == d for s, d in zip(self.shape, shape))

    def to_data(self) -> dict[str, Any]:
        """Plain JSON data for the manifest."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_data(cls, d: dict[str, Any], where: str = "spec") -> TensorSpec:
        """From manifest data; every field is checked (ArtifactError naming ``where`` and the
        field), shapes are capped, unknown keys (from a newer modelopt) are ignored."""
        return cls(*spec_fields(d, where))


@attrs.define(frozen=True)
class Step:
    """One lineage entry: which component made the artifact, from what config, how long it took."""

    component: str
    kind: str  # "source", "optimizer", "exporter", "load"
    plugin: str = ""
    version: str = ""
    config: dict[str, Any] = attrs.field(factory=dict)
    duration_s: float = 0.0
    notes: tuple[str, ...] = ()
    #: what loading needs to re-create this step's structure (see Optimizer.rebuild): each
    #: step keeps its own record, so two steps of one kind never read each other's
    restore: dict[str, Any] = attrs.field(factory=dict)

    def to_data(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_data(cls, d: dict[str, Any], where: str = "step") -> Step:
        """From manifest data; every field is checked (ArtifactError naming ``where`` and the
        field). Unknown fields (from a newer modelopt) are ignored and named in ``notes``."""
        return cls(**step_fields(d, where))


def _opt_str(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise ArtifactError(f"props.{attr.name}: expected a string or null, got "
                            f"{type(value).__name__}")


def _opt_tol(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0 <= value < 1e6):
        raise ArtifactError(f"props.{attr.name}: expected a number in [0, 1e6) or null, got "
                            f"{value!r}")


def _opt_options(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, (str, int, float, bool)))
            for k, v in value.items()):
        raise ArtifactError(f"props.{attr.name}: expected an object of option name -> string, "
                            f"number, bool or null, got {value!r}")


@attrs.define(frozen=True)
class ArtifactProps:
    """Facts about an artifact that components act on (typed, unlike free-form ``metadata``):
    set by the step that makes them true, carried to every later artifact, saved in the
    manifest."""

    #: dtype of a torch model's weights when reduced ("bfloat16", "float16"): runners cast
    #: inputs to it and outputs back to float32; exporters trace with it
    compute_dtype: str | None = attrs.field(default=None, validator=_opt_str)
    #: the ONNX exporter the model needs ("torchscript": fake-quant modules export QDQ)
    onnx_exporter: str | None = attrs.field(default=None, validator=_opt_str)
    #: tolerances an export's numerics check should use (simulated INT8 rounds apart from the
    #: integer kernels by a few quantization steps)
    check_rtol: float | None = attrs.field(default=None, validator=_opt_tol)
    check_atol: float | None = attrs.field(default=None, validator=_opt_tol)
    #: the precision a torch model only simulates ("int8": fake-quant in float), for reports
    simulated: str | None = attrs.field(default=None, validator=_opt_str)
    #: the runtime this artifact was measured and chosen on (a backend name) and its config
    #: options (e.g. the search's best: ``inference_num_threads``, ``performance_hint``):
    #: runners, ``modelopt compare``, ``serve`` and ``bench-serve`` use them unless told
    #: otherwise. Set by :meth:`ModelArtifact.with_runtime`; a later step drops them (its
    #: model is a new one, not measured yet)
    runtime: str | None = attrs.field(default=None, validator=_opt_str)
    runtime_options: dict[str, Any] | None = attrs.field(default=None, validator=_opt_options,
                                                         hash=False)

    def to_data(self) -> dict[str, Any]:
        """Plain JSON data (unset fields left out)."""
        return {k: v for k, v in attrs.asdict(self).items() if v is not None}

    @classmethod
    def from_data(cls, d: dict[str, Any], metadata: dict[str, Any] | None = None) -> ArtifactProps:
        """From manifest data (unknown keys of newer versions ignored); manifests written
        before props existed kept these facts in ``metadata``."""
        meta = metadata or {}
        legacy = {"compute_dtype": meta.get("torch_compute_dtype"),
                  "onnx_exporter": meta.get("onnx_exporter"),
                  "check_rtol": meta.get("onnx_check_rtol"),
                  "check_atol": meta.get("onnx_check_atol"),
                  "simulated": "int8" if meta.get("quantization") == "int8-qdq" else None}
        known = {f.name for f in attrs.fields(cls)}
        values = {k: v for k, v in legacy.items() if v is not None}
        values.update({k: v for k, v in d.items() if k in known})
        return cls(**values)


@attrs.define(frozen=True, eq=False)
class ModelArtifact:
    """An immutable model at one point of the pipeline.

    ``model`` is the in-memory form for the format (``torch``: an ``nn.Module``; ``onnx``: an
    ``onnx.ModelProto``; other formats: ``bytes``). Treat it as read-only: components copy it
    before changing anything.
    """

    format: str
    model: Any
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    lineage: tuple[Step, ...] = ()
    metadata: dict[str, Any] = attrs.field(factory=dict)
    path: str | None = None
    #: how the flat ``inputs``/``outputs`` map onto the model's own call and return structure
    #: (plain data, see :mod:`modelopt_core.io`): ``{"keyword": bool, "outputs": <tree>}``;
    #: empty (artifacts saved before it existed) means positional inputs and a tensor or tuple
    io: dict[str, Any] = attrs.field(factory=dict)
    #: typed facts components act on (compute dtype, export hints, check tolerances)
    props: ArtifactProps = attrs.field(factory=ArtifactProps)

    @property
    def name(self) -> str:
        """Short label: the last lineage component, or the format."""
        return self.lineage[-1].component if self.lineage else self.format

    def evolve(self, *, step: Step, **changes: Any) -> ModelArtifact:
        """A new artifact with ``changes`` applied and ``step`` appended to the lineage;
        ``metadata`` and ``props`` given as dicts update the current ones."""
        changes.setdefault("path", None)
        meta = dict(self.metadata)
        meta.update(changes.pop("metadata", {}))
        props = changes.pop("props", None)
        if isinstance(props, dict):  # a partial update of the typed properties
            props = attrs.evolve(self.props, **props)
        props = props if props is not None else self.props
        # a new step makes a new model: the runtime chosen for this one is not carried
        changes["props"] = attrs.evolve(props, runtime=None, runtime_options=None)
        return attrs.evolve(self, lineage=self.lineage + (step,), metadata=meta, **changes)

    def with_runtime(self, backend: str, options: dict[str, Any] | None = None) -> ModelArtifact:
        """This artifact (the same model, lineage and files) carrying the runtime it is to
        run on: backend ``backend`` with config ``options`` (plain JSON values). Runners,
        ``modelopt compare``, ``serve`` and ``bench-serve`` use them unless told otherwise;
        they are saved in the manifest (``props.runtime`` / ``props.runtime_options``)."""
        if not isinstance(backend, str) or not backend:
            raise ArtifactError(f"with_runtime: backend must be a backend name, got "
                                f"{backend!r}.")
        props = attrs.evolve(self.props, runtime=backend,
                             runtime_options=dict(options) if options else None)
        return attrs.evolve(self, props=props)

    # ---- persistence -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = True,
             plugins: PluginManager | None = None, **options: Any) -> Path:
        """Write the artifact to folder ``path`` atomically and crash-safely.

        The files go to a temp folder next to ``path`` (fsynced), which then replaces ``path``
        by rename, under a per-path lock (concurrent saves of one path serialize: the last one
        wins). ``path`` may be missing, an empty folder or a modelopt artifact (replaced only
        when ``overwrite``); anything else, a file or the working folder (or a parent of it) is
        refused with :class:`ArtifactError`. The model's files are written by the Format
        registered for its format in ``plugins`` (default: the process-wide manager);
        ``options`` go to it (e.g. ``external_data_threshold=`` for ONNX). A failed save
        raises ArtifactError (with ``errno`` for OS errors) and changes nothing. Under
        ``torchrun`` (several processes) rank 0 alone writes; the others wait for it.
        """
        from .strategy import on_main

        return on_main(lambda: self._save(path, overwrite, plugins, **options), str(path))

    def _save(self, path: str | os.PathLike[str], overwrite: bool,
              plugins: PluginManager | None, **options: Any) -> Path:
        target = Path(path).resolve()
        _fs.check_target(target, overwrite)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise persist.write_error(target, e, "cannot create its parent folder") from e
        with persist.locked(target):
            persist.recover(target, _fs.verify_folder)  # a crashed save of this path: roll back
            persist.clean_leftovers(target)
            _fs.check_target(target, overwrite)  # again, now that no other save can run
            try:
                tmp = persist.new_temp(target)
            except OSError as e:
                raise persist.write_error(target, e, "cannot create a temp folder") from e
            try:
                files = _write_model(self, tmp, plugins=plugins, **options)
                _fs.write_json(tmp / MANIFEST, self._manifest(tmp, files))
                persist.fsync_files(tmp)
                persist.swap_in(tmp, target)
            except BaseException as e:
                shutil.rmtree(tmp, ignore_errors=True)
                if isinstance(e, ModeloptError) or not isinstance(e, Exception):
                    raise
                if isinstance(e, OSError):
                    raise persist.write_error(target, e) from e
                raise ArtifactError(
                    f"{target}: cannot save the {self.format} model ({type(e).__name__}: "
                    f"{str(e)[:300]}); nothing was lost: any previous artifact at this path is "
                    "unchanged.") from e
        return target

    def _manifest(self, folder: Path, files: list[str]) -> dict[str, Any]:
        from ._version import __version__

        return {
            "modelopt_manifest": MANIFEST_VERSION,
            "min_reader_version": 1,
            "modelopt_version": __version__,
            "format": self.format,
            "inputs": [s.to_data() for s in self.inputs],
            "outputs": [s.to_data() for s in self.outputs],
            "lineage": [s.to_data() for s in self.lineage],
            "metadata": _fs.jsonable(self.metadata),
            "io": self.io,
            "props": self.props.to_data(),
            "files": {f: {"sha256": sha256_file(folder / f), "bytes": (folder / f).stat().st_size}
                      for f in files},
        }


def _write_model(art: ModelArtifact, folder: Path, plugins: PluginManager | None = None,
                 **options: Any) -> list[str]:
    """Write ``art.model`` into ``folder`` through the Format registered for ``art.format``."""
    pm = plugins or _registry.default_plugins()
    return pm.format_for(art.format, art.model).save(art, folder, **options)


def load_artifact(path: str | os.PathLike[str], model: Any = None,
                  plugins: PluginManager | None = None) -> ModelArtifact:
    """Load an artifact folder (or a bare ``.onnx`` / ``.safetensors`` file) safely.

    The manifest is schema-checked, every file in the folder must be listed in it and match
    its SHA-256; torch weights load only from safetensors into the module skeleton ``model``
    (a fresh instance of the same class), which is copied, never changed. Pickle files are
    refused: their code is never run. If a save of ``path`` crashed mid-swap, the previous
    artifact is restored first. Every problem is an :class:`ArtifactError`. The model is read
    by the Format registered for the manifest's format in ``plugins`` (default: the
    process-wide plugin manager), which also resolves lineage steps for replay.
    """
    pm = plugins or _registry.default_plugins()
    p = Path(path)
    exists, is_file = _fs.probe(p)
    if not exists:
        _fs.recover_for_load(p)
        exists, is_file = _fs.probe(p)
    if is_file:
        return _load_bare_file(p, model, pm)
    mpath = p / MANIFEST
    if not _fs.probe(mpath)[1]:
        raise ArtifactError(f"{p}: no {MANIFEST}; save artifacts with ModelArtifact.save().")
    _fs.clean_crashed_saves(p)
    manifest = _fs.verify_folder(p)
    files, fmt = manifest["files"], manifest["format"]
    handler = pm.format_for(fmt)
    primary = handler.primary
    if primary and primary not in files:
        raise ArtifactError(f"{mpath}: field files: a {fmt!r} artifact holds {primary!r}, which "
                            "the manifest does not list; re-save the artifact.")
    try:
        inputs = tuple(TensorSpec.from_data(d, f"inputs[{i}]")
                       for i, d in enumerate(manifest["inputs"]))
        outputs = tuple(TensorSpec.from_data(d, f"outputs[{i}]")
                        for i, d in enumerate(manifest["outputs"]))
        lineage = tuple(Step.from_data(d, f"lineage[{i}]")
                        for i, d in enumerate(manifest["lineage"]))
    except ArtifactError as e:
        raise type(e)(f"{mpath}: {e}; re-save the artifact.") from None
    meta = manifest["metadata"]
    notes: tuple[str, ...] = ()
    if manifest["modelopt_manifest"] > MANIFEST_VERSION:
        notes = ((f"manifest version {manifest['modelopt_manifest']} is newer than this "
                  f"modelopt's ({MANIFEST_VERSION}); fields it does not know were ignored"),)
    try:
        props = ArtifactProps.from_data(manifest["props"], meta)
    except (ArtifactError, TypeError) as e:
        raise ArtifactError(f"{mpath}: field {e}; re-save the artifact.") from None
    saved = ModelArtifact(fmt, None, inputs, outputs, lineage, meta, str(p), io=manifest["io"],
                          props=props)
    try:
        obj = handler.load(p, saved, model, pm)
    except ModeloptError:
        raise
    except Exception as e:  # a format plugin's library error: still an ArtifactError
        raise ArtifactError(f"{p}: the {fmt!r} format failed to load the model "
                            f"({type(e).__name__}: {str(e)[:300]}).") from e
    return attrs.evolve(saved, model=obj, lineage=lineage + (
        Step("load", "load", config={"path": str(p)}, notes=notes),))


def _load_bare_file(p: Path, model: Any, plugins: PluginManager) -> ModelArtifact:
    """A bare model file, read by the Format that claims its suffix."""
    for info in plugins.components("format"):
        if p.suffix in info.cls.suffixes:
            handler = info.cls()
            obj = handler.load_file(p, model, plugins)
            inputs, outputs = handler.file_specs(obj)
            return ModelArtifact(info.name, obj, inputs, outputs, path=str(p),
                                 lineage=(Step("load", "load", config={"path": str(p)}),))
    known = sorted({x for i in plugins.components("format") for x in i.cls.suffixes})
    raise ArtifactError(f"{p}: unknown file type {p.suffix!r}; expected an artifact folder or "
                        f"one of {known}.")
