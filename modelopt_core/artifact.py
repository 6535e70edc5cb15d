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

import contextlib
import errno as errno_mod
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from . import persist
from .errors import ArtifactError, ModeloptError, UnsafeArtifactError
from .manifest import (
    MANIFEST_VERSION,
    check_manifest,
    read_json,
    spec_fields,
    step_fields,
)

if TYPE_CHECKING:  # for annotations only: plugins imports this module
    from .plugins import PluginManager

__all__ = [
    "ArtifactProps",
    "ModelArtifact",
    "Step",
    "TensorSpec",
    "format_for",
    "load_artifact",
    "sha256_file",
]

MANIFEST = "manifest.json"


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
        changes["props"] = props if props is not None else self.props
        return attrs.evolve(self, lineage=self.lineage + (step,), metadata=meta, **changes)

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
        raises ArtifactError (with ``errno`` for OS errors) and changes nothing.
        """
        target = Path(path).resolve()
        _check_target(target, overwrite)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise persist.write_error(target, e, "cannot create its parent folder") from e
        with persist.locked(target):
            persist.recover(target, _verify_folder)  # a crashed save of this path: roll back
            persist.clean_leftovers(target)
            _check_target(target, overwrite)  # again, now that no other save can run
            try:
                tmp = persist.new_temp(target)
            except OSError as e:
                raise persist.write_error(target, e, "cannot create a temp folder") from e
            try:
                files = _write_model(self, tmp, plugins=plugins, **options)
                _write_json(tmp / MANIFEST, self._manifest(tmp, files))
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
        from . import __version__

        return {
            "modelopt_manifest": MANIFEST_VERSION,
            "min_reader_version": 1,
            "modelopt_version": __version__,
            "format": self.format,
            "inputs": [s.to_data() for s in self.inputs],
            "outputs": [s.to_data() for s in self.outputs],
            "lineage": [s.to_data() for s in self.lineage],
            "metadata": _jsonable(self.metadata),
            "io": self.io,
            "props": self.props.to_data(),
            "files": {f: {"sha256": sha256_file(folder / f), "bytes": (folder / f).stat().st_size}
                      for f in files},
        }


def _check_target(target: Path, overwrite: bool) -> None:
    """Refuse a save target whose replacement would lose something (see ModelArtifact.save)."""
    try:
        cwd: Path | None = Path.cwd().resolve()
    except OSError:
        cwd = None
    if cwd is not None and (target == cwd or target in cwd.parents):
        raise ArtifactError(
            f"{target}: refusing to save onto the working folder or a parent of it (saving "
            "replaces the whole folder). Save into a new sub-folder, e.g. save('out/model').")
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise ArtifactError(f"{target}: exists and is not a folder; an artifact is saved as a "
                            "folder. Choose another path (nothing was changed).")
    try:
        entries = sorted(os.listdir(target))
    except OSError as e:
        raise persist.write_error(target, e, "cannot read the existing folder") from e
    if not entries:
        return
    problem = ""
    try:
        m = read_json(target / MANIFEST, "manifest")
        if not (isinstance(m, dict) and "modelopt_manifest" in m
                and isinstance(m.get("files"), dict)):
            problem = f"its {MANIFEST} is not a modelopt manifest"
        else:
            extra = _unlisted(target, set(m["files"]))
            if extra:
                problem = f"it holds files its manifest does not list: {extra[:5]}"
    except ArtifactError:
        problem = (f"it is not a modelopt artifact (no valid {MANIFEST}; it holds "
                   f"{entries[:5]}{' ...' if len(entries) > 5 else ''})")
    if problem:
        raise ArtifactError(
            f"{target}: {problem}; refusing to replace it, which would delete it. Choose "
            "another path, or empty the folder yourself (nothing was changed).")
    if not overwrite:
        raise ArtifactError(f"{target}: already holds a modelopt artifact and overwrite=False; "
                            "pass overwrite=True to replace it, or choose another path.")


def _unlisted(folder: Path, listed: set[str]) -> list[str]:
    """Entries under ``folder`` (relative, ``/``-separated) that are neither ``manifest.json``
    nor a listed file nor a folder holding one."""
    dirs_ok = {"/".join(f.split("/")[:i]) for f in listed for i in range(1, f.count("/") + 1)}
    out = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for d in list(dirs):
            r = (rel / d).as_posix()
            if r not in dirs_ok or os.path.islink(os.path.join(root, d)):
                out.append(r + "/")
                dirs.remove(d)
        out += [r for r in ((rel / f).as_posix() for f in files)
                if r not in listed and r != MANIFEST]
    return sorted(out)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except TypeError:
        if isinstance(v, dict):
            return {str(k): _jsonable(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [_jsonable(x) for x in v]
        return repr(v)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _write_model(art: ModelArtifact, folder: Path, plugins: PluginManager | None = None,
                 **options: Any) -> list[str]:
    """Write ``art.model`` into ``folder`` through the Format registered for ``art.format``."""
    return format_for(art.format, plugins, art.model).save(art, folder, **options)


def format_for(name: str, plugins: PluginManager | None = None, model: Any = None) -> Any:
    """An instance of the Format registered as ``name``; raw bytes of an unregistered format
    (an engine blob) fall back to :class:`BytesFormat`. ArtifactError when nothing fits."""
    from .errors import UnknownComponentError
    from .plugins import get_plugin_manager

    pm = plugins or get_plugin_manager()
    try:
        return pm.get("format", name).cls()
    except UnknownComponentError:
        if model is None or isinstance(model, (bytes, bytearray)):
            return _bytes_cls()()
        known = ", ".join(i.name for i in pm.components("format")) or "(none)"
        raise ArtifactError(
            f"no installed plugin saves or loads format {name!r} (formats here: {known}); "
            "install the plugin that provides it.") from None


def _bytes_format() -> type:
    from .interfaces import Format

    class BytesFormat(Format):
        """Raw bytes in ``model.bin`` (engine blobs); the fallback for bytes models of a
        format no plugin registers. Subclass it, with a ``name``, to register one."""

        name = ""
        primary = "model.bin"

        def save(self, artifact: ModelArtifact, folder: Path, **options: Any) -> list[str]:
            from .config import build_config
            from .interfaces import EmptyConfig

            build_config(EmptyConfig, options, f"format {artifact.format!r}")
            if not isinstance(artifact.model, (bytes, bytearray)):
                raise ArtifactError(
                    f"cannot save an artifact of format {artifact.format!r} holding "
                    f"{type(artifact.model).__name__}: no installed plugin saves that format.")
            (folder / self.primary).write_bytes(bytes(artifact.model))
            return [self.primary]

        def load(self, folder: Path, saved: ModelArtifact, model: Any,
                 plugins: PluginManager | None) -> Any:
            return (folder / self.primary).read_bytes()

    BytesFormat.__qualname__ = "BytesFormat"
    return BytesFormat


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
    from .plugins import get_plugin_manager

    pm = plugins or get_plugin_manager()
    p = Path(path)
    exists, is_file = _probe(p)
    if not exists:
        _recover_for_load(p)
        exists, is_file = _probe(p)
    if is_file:
        return _load_bare_file(p, model, pm)
    mpath = p / MANIFEST
    if not _probe(mpath)[1]:
        raise ArtifactError(f"{p}: no {MANIFEST}; save artifacts with ModelArtifact.save().")
    _clean_crashed_saves(p)
    manifest = _verify_folder(p)
    files, fmt = manifest["files"], manifest["format"]
    handler = format_for(fmt, pm)
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


def _clean_crashed_saves(p: Path) -> None:
    """Remove what saves of ``p`` killed mid-way left beside it (``.NAME.tmp-*`` /
    ``.NAME.old-*``), but only while no save of ``p`` runs: a live save holds the path's lock
    from before it creates its temp folder until after the swap, so with the lock free every
    such folder is a dead writer's. Never waits for the lock, never fails a load."""
    try:
        persist.clean_stale(p.resolve())
    except (ArtifactError, OSError):
        pass


def _recover_for_load(p: Path) -> None:
    """``p`` is missing: wait for a save of it in progress, or restore the artifact a crashed
    save left beside it; ArtifactError when there is nothing."""
    target = p.resolve()
    if persist.leftovers(target) or persist.lock_path(target).exists():
        # a read-only folder cannot be locked or repaired: reported below
        with contextlib.suppress(ArtifactError), persist.locked(target):
            persist.recover(target, _verify_folder)
    if not p.exists():
        left = [x.name for x in persist.leftovers(target)]
        hint = (f" Interrupted saves of it left {left[:3]} in {target.parent}, none of them a "
                "complete artifact (or the folder is read-only)." if left else "")
        raise ArtifactError(f"{p}: no such file or folder.{hint}")


def _verify_folder(p: Path) -> dict[str, Any]:
    """The checked manifest of artifact folder ``p`` after verifying that every file in the
    folder is listed and every listed file matches its SHA-256."""
    mpath = p / MANIFEST
    manifest = check_manifest(read_json(mpath, "manifest"), mpath)
    files = manifest["files"]
    extra = _unlisted(p, set(files))
    if extra:
        raise ArtifactError(
            f"{p}: {extra[:5]} {'is' if len(extra) == 1 else 'are'} not listed in {MANIFEST}, so "
            "cannot be verified; refused (nothing unverified is loaded). Remove what you added "
            "to the folder, or re-save the artifact.")
    for name, info in files.items():
        try:
            fp = _inside(p, name)
            if not fp.is_file():
                raise ArtifactError(f"{fp}: listed in the manifest but missing.")
            digest = sha256_file(fp)
        except OSError as e:  # a name too long, a loop, no permission...
            raise _entry_error(mpath, name, e) from e
        if digest != info["sha256"]:
            raise ArtifactError(
                f"{fp}: SHA-256 mismatch (manifest {info['sha256'][:12]}..., file "
                f"{digest[:12]}...): the file was changed or truncated; re-save the artifact.")
    return manifest


def _short_name(name: str) -> str:
    """``name`` for a message: a very long one shortened, with its length."""
    if len(name) <= 120:
        return repr(name)
    return f"{name[:60]!r}...{name[-20:]!r} ({len(name)} characters)"


def _errno_text(e: OSError) -> str:
    code = e.errno if isinstance(e.errno, int) else None
    name = errno_mod.errorcode.get(code, "") if code is not None else ""
    return f"{name or type(e).__name__}: {e.strerror or e}"


def _entry_error(mpath: Path, name: str, e: OSError) -> ArtifactError:
    """ArtifactError for a manifest file entry the file system refuses to access."""
    hint = {errno_mod.ENAMETOOLONG: "the name is longer than this file system allows",
            errno_mod.ELOOP: "it goes through a symbolic link loop",
            errno_mod.EACCES: "permission denied", errno_mod.EPERM: "permission denied"}.get(
        e.errno if isinstance(e.errno, int) else -1, "the file system refused it")
    return ArtifactError(
        f"{mpath}: file entry {_short_name(name)} cannot be accessed: {hint} "
        f"({_errno_text(e)}). The manifest does not describe files modelopt wrote here; "
        "re-save the artifact (or fix the folder's permissions).")


def _probe(p: Path) -> tuple[bool, bool]:
    """(exists, is a file) of the path given to :func:`load_artifact`; an OS error (name too
    long, a symlink loop...) is an ArtifactError naming the path."""
    try:
        return p.exists(), p.is_file()
    except OSError as e:
        raise ArtifactError(f"{_short_name(str(p))}: cannot be accessed ({_errno_text(e)}); "
                            "give the path of an artifact folder.") from e


def _load_bare_file(p: Path, model: Any, plugins: PluginManager) -> ModelArtifact:
    """A bare model file, read by the Format that claims its suffix."""
    for info in plugins.components("format"):
        if p.suffix in info.cls.suffixes:
            obj = info.cls().load_file(p, model, plugins)
            return ModelArtifact(info.name, obj, path=str(p),
                                 lineage=(Step("load", "load", config={"path": str(p)}),))
    known = sorted({x for i in plugins.components("format") for x in i.cls.suffixes})
    raise ArtifactError(f"{p}: unknown file type {p.suffix!r}; expected an artifact folder or "
                        f"one of {known}.")


def _inside(root: Path, rel: str) -> Path:
    try:
        fp = (root / rel).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise UnsafeArtifactError(f"{root}: file entry {rel!r} cannot be resolved ({e}).") from e
    if root.resolve() not in fp.parents:
        raise UnsafeArtifactError(f"{root}: file entry {rel!r} points outside the artifact folder.")
    return fp




def __getattr__(name: str) -> Any:
    # BytesFormat subclasses Format (interfaces imports this module): built on first use
    if name == "BytesFormat":
        return _bytes_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_BYTES: type | None = None


def _bytes_cls() -> type:
    global _BYTES
    if _BYTES is None:
        _BYTES = _bytes_format()
    return _BYTES
