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
import copy
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from . import persist
from .errors import ArtifactError, ModeloptError, UnsafeArtifactError
from .manifest import MANIFEST_VERSION, check_manifest, read_json, spec_fields, step_fields

__all__ = ["TensorSpec", "Step", "ModelArtifact", "load_artifact", "sha256_file",
           "onnx_session_source", "EXTERNAL_DATA_THRESHOLD"]

MANIFEST = "manifest.json"
#: ONNX models whose protobuf is larger (bytes) are saved with external data: protobuf cannot
#: serialize 2 GiB, and this leaves room for the graph itself
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**20
#: the one external data file of an ONNX artifact saved with external data
EXTERNAL_DATA_FILE = "model.onnx.data"


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

    @property
    def name(self) -> str:
        """Short label: the last lineage component, or the format."""
        return self.lineage[-1].component if self.lineage else self.format

    def evolve(self, *, step: Step, **changes: Any) -> ModelArtifact:
        """A new artifact with ``changes`` applied and ``step`` appended to the lineage."""
        changes.setdefault("path", None)
        meta = dict(self.metadata)
        meta.update(changes.pop("metadata", {}))
        return attrs.evolve(self, lineage=self.lineage + (step,), metadata=meta, **changes)

    # ---- persistence -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = True,
             external_data_threshold: int | None = None) -> Path:
        """Write the artifact to folder ``path`` atomically and crash-safely.

        The files go to a temp folder next to ``path`` (fsynced), which then replaces ``path``
        by rename, under a per-path lock (concurrent saves of one path serialize: the last one
        wins). ``path`` may be missing, an empty folder or a modelopt artifact (replaced only
        when ``overwrite``); anything else, a file or the working folder (or a parent of it) is
        refused with :class:`ArtifactError`. ONNX models over ``external_data_threshold``
        bytes (default ``EXTERNAL_DATA_THRESHOLD``) keep their tensors in ``model.onnx.data``.
        A failed save raises ArtifactError (with ``errno`` for OS errors) and changes nothing.
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
                kw = ({} if external_data_threshold is None
                      else {"external_data_threshold": external_data_threshold})
                files = _write_model(self, tmp, **kw)
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


def _write_model(art: ModelArtifact, folder: Path,
                 external_data_threshold: int | None = None) -> list[str]:
    if art.format == "torch":
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in art.model.state_dict().items()}
        _untie(state)
        save_file(state, str(folder / "weights.safetensors"))
        from .structure import record_structure

        cls = type(art.model)
        _write_json(folder / "torch_model.json", {"class": f"{cls.__module__}.{cls.__qualname__}",
                                                   "structure": record_structure(art.model)})
        return ["weights.safetensors", "torch_model.json"]
    if art.format == "onnx":
        import onnx

        limit = (EXTERNAL_DATA_THRESHOLD if external_data_threshold is None
                 else external_data_threshold)
        if _onnx_size(art.model) > limit:
            return _save_onnx_external(art.model, folder)
        onnx.save_model(art.model, str(folder / "model.onnx"))
        return ["model.onnx"]
    if isinstance(art.model, (bytes, bytearray)):
        (folder / "model.bin").write_bytes(bytes(art.model))
        return ["model.bin"]
    raise ArtifactError(
        f"cannot save an artifact of format {art.format!r} holding {type(art.model).__name__}: "
        "only torch modules, ONNX models and raw bytes have a file form.")


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


def _untie(state: dict[str, Any]) -> None:
    """safetensors refuses shared storage: give each tied tensor its own copy."""
    seen: set[int] = set()
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            state[k] = v.clone()
        seen.add(ptr)


# ---- loading -----------------------------------------------------------------------------

def load_artifact(path: str | os.PathLike[str], model: Any = None) -> ModelArtifact:
    """Load an artifact folder (or a bare ``.onnx`` / ``.safetensors`` file) safely.

    The manifest is schema-checked, every file in the folder must be listed in it and match
    its SHA-256; torch weights load only from safetensors into the module skeleton ``model``
    (a fresh instance of the same class), which is copied, never changed. Pickle files are
    refused: their code is never run. If a save of ``path`` crashed mid-swap, the previous
    artifact is restored first. Every problem is an :class:`ArtifactError`.
    """
    p = Path(path)
    if not p.exists():
        _recover_for_load(p)
    if p.is_file():
        return _load_bare_file(p, model)
    mpath = p / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{p}: no {MANIFEST}; save artifacts with ModelArtifact.save().")
    manifest = _verify_folder(p)
    files, fmt = manifest["files"], manifest["format"]
    primary = {"torch": "weights.safetensors", "onnx": "model.onnx"}.get(fmt, "model.bin")
    if primary not in files:
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
    if fmt == "torch":
        if model is not None:  # keyword inputs / structured outputs: the saved positional view
            from .io import structured_view

            try:
                model = structured_view(model, manifest.get("io"), [s.name for s in inputs])
            except (TypeError, KeyError, ValueError, AttributeError, IndexError) as e:
                raise ArtifactError(f"{mpath}: field io: not a valid call/return structure "
                                    f"({type(e).__name__}: {e}); re-save the artifact.") from e
        obj = _load_torch_weights(p / "weights.safetensors", model, files, lineage, inputs, meta)
    elif fmt == "onnx":
        obj = _load_onnx(p / "model.onnx")
    else:
        obj = (p / "model.bin").read_bytes()
    return ModelArtifact(fmt, obj, inputs, outputs,
                         lineage + (Step("load", "load", config={"path": str(p)}, notes=notes),),
                         meta, str(p), io=manifest["io"])


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
        fp = _inside(p, name)
        if not fp.is_file():
            raise ArtifactError(f"{fp}: listed in the manifest but missing.")
        try:
            digest = sha256_file(fp)
        except OSError as e:
            raise ArtifactError(f"{fp}: cannot be read ({e}).") from e
        if digest != info["sha256"]:
            raise ArtifactError(
                f"{fp}: SHA-256 mismatch (manifest {info['sha256'][:12]}..., file "
                f"{digest[:12]}...): the file was changed or truncated; re-save the artifact.")
    return manifest


def _inside(root: Path, rel: str) -> Path:
    try:
        fp = (root / rel).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise UnsafeArtifactError(f"{root}: file entry {rel!r} cannot be resolved ({e}).") from e
    if root.resolve() not in fp.parents:
        raise UnsafeArtifactError(f"{root}: file entry {rel!r} points outside the artifact folder.")
    return fp


def _load_bare_file(p: Path, model: Any) -> ModelArtifact:
    if p.suffix == ".onnx":
        m = _load_onnx(p)
        return ModelArtifact("onnx", m, lineage=(Step("load", "load", config={"path": str(p)}),),
                             path=str(p))
    if p.suffix == ".safetensors":
        return ModelArtifact("torch", _load_torch_weights(p, model, None),
                             lineage=(Step("load", "load", config={"path": str(p)}),), path=str(p))
    if p.suffix in (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"):
        import pickle

        import torch

        if p.stat().st_size == 0:
            raise ArtifactError(f"{p}: the file is empty (0 bytes), not saved weights.")
        try:  # weights_only refuses any global it does not know: nothing from the file runs
            state = torch.load(p, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, ValueError) as e:
            raise UnsafeArtifactError(
                f"{p}: refused to unpickle (it is not a plain tensor state_dict; loading it would "
                f"execute code from the file). Save weights with safetensors or "
                f"ModelArtifact.save(). Detail: {_first_line(e)}") from e
        except (RuntimeError, EOFError, OSError) as e:
            raise ArtifactError(f"{p}: not a readable torch weights file (corrupt or truncated): "
                                f"{_first_line(e)}") from e
        if model is None:
            raise ArtifactError(f"{p}: a weights file needs a model skeleton: pass model=...")
        _check_state_dict(p, state)
        return ModelArtifact("torch", _into_skeleton(model, state, p),
                             lineage=(Step("load", "load", config={"path": str(p)}),), path=str(p))
    raise ArtifactError(f"{p}: unknown file type {p.suffix!r}; expected an artifact folder, "
                        ".onnx or .safetensors.")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def _check_state_dict(p: Path, state: Any) -> None:
    """A bare weights file must hold a flat ``{name: tensor}`` dict."""
    import torch

    if not isinstance(state, dict):
        raise ArtifactError(f"{p}: holds a {type(state).__name__}, not a state_dict "
                            "(a dict of name -> tensor).")
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ArtifactError(
                f"{p}: entry {str(k)[:60]!r} is a {type(v).__name__}, not a tensor: this is not a "
                "plain state_dict. For a training checkpoint, save its model's state_dict alone "
                "(e.g. torch.save(ckpt['state_dict'], path)) and load that.")


def _read_torch_json(folder: Path) -> dict[str, Any]:
    """The checked ``torch_model.json`` of a folder: ``{"class": str, "structure": records}``."""
    from .structure import check_records

    meta = folder / "torch_model.json"
    if not meta.is_file():
        return {"class": "", "structure": {}}
    d = read_json(meta, "structure record")
    try:
        if not isinstance(d, dict):
            raise ArtifactError(f"field (top level): expected an object, got {type(d).__name__}")
        cls = d.get("class", "")
        if not isinstance(cls, str):
            raise ArtifactError(f"field class: expected a string, got {type(cls).__name__}")
        return {"class": cls, "structure": check_records(d.get("structure", {}))}
    except ArtifactError as e:
        raise ArtifactError(f"{meta}: {e}; re-save the artifact.") from None


def _load_torch_weights(fp: Path, model: Any, files: Any, lineage: tuple[Step, ...] = (),
                        inputs: tuple[TensorSpec, ...] = (),
                        metadata: dict[str, Any] | None = None) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    record = _read_torch_json(fp.parent) if files is not None else {"class": "", "structure": {}}
    if model is None:
        cls = record["class"]
        raise ArtifactError(
            f"{fp.parent}: torch artifacts store weights only (safetensors; no pickled code). "
            f"Pass the architecture: load_artifact(path, model={cls or 'YourModel'}(...)).")
    try:
        state = load_file(str(fp))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{fp}: not a valid safetensors file ({e}).") from e
    try:
        m = _replay(copy.deepcopy(model), lineage, inputs, metadata or {}, fp.parent)
    except ArtifactError:
        raise
    except (ModeloptError, TypeError, ValueError, KeyError) as e:  # e.g. a step's config
        raise ArtifactError(f"{fp.parent}: cannot replay the saved lineage on "
                            f"{type(model).__name__} ({type(e).__name__}: {_first_line(e)}); "
                            "the manifest's lineage does not fit the installed components.") from e
    return _into_skeleton(m, state, fp, record["structure"], copied=True)


def _replay(model: Any, lineage: tuple[Step, ...], inputs: tuple[TensorSpec, ...],
            metadata: dict[str, Any], where: Path) -> Any:
    """Re-run, without data, the structural part of every lineage step that defines
    :meth:`Optimizer.rebuild` (torch.fx graphs, quantizer modules) on ``model``, in order.

    Each step's rebuild gets that step's own restore record (``Step.restore``). Steps that
    cannot be replayed here (their plugin is not installed, or a third-party optimizer
    without ``rebuild()``) are checked afterwards: when the saved weights or the saved layer
    record do not fit the result, loading fails with an :class:`ArtifactError` naming them
    instead of loading weights into the wrong modules."""
    import inspect

    from .errors import ModeloptError, UnknownComponentError
    from .interfaces import Optimizer
    from .plugins import CORE_DISTRIBUTION, get_plugin_manager

    steps = [s for s in lineage if s.kind == "optimizer"]
    if not steps:
        return model
    pm = get_plugin_manager()
    example = None
    suspects: list[str] = []  # steps whose structure nothing here can re-create
    for step in steps:
        try:
            info = pm.get("optimizer", step.component)
        except UnknownComponentError:
            suspects.append(f"{step.component!r} (plugin {step.plugin or '?'!r} "
                            f"{step.version}: not installed here, so its rebuild() cannot run)")
            continue
        cls = info.cls
        if cls.rebuild is Optimizer.rebuild:
            if info.distribution != CORE_DISTRIBUTION:  # built-ins round-trip (contract test)
                suspects.append(f"{step.component!r} (plugin {info.plugin!r} from "
                                f"{info.distribution}: defines no rebuild())")
            continue
        if example is None:
            example = _example_inputs(inputs, where)
        try:
            inst = cls(**step.config)
            params = inspect.signature(inst.rebuild).parameters
            if "restore" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
                new = inst.rebuild(model, example, metadata, restore=dict(step.restore))
            else:  # written before Step.restore existed
                new = inst.rebuild(model, example, metadata)
        except ModeloptError as e:
            raise ArtifactError(f"{where}: cannot rebuild lineage step {step.component!r} on "
                                f"{type(model).__name__}: {e}") from e
        except Exception as e:  # a traced architecture that does not match the saved one
            raise ArtifactError(
                f"{where}: cannot rebuild lineage step {step.component!r} on "
                f"{type(model).__name__} ({type(e).__name__}: {str(e)[:200]}); pass the "
                "architecture the artifact was made from, or load its ONNX export.") from e
        if new is not None:
            model = new
    if suspects:
        _check_replayable(model, where, suspects)
    return model


def _check_replayable(model: Any, where: Path, suspects: list[str]) -> None:
    """After :func:`_replay`: raise an :class:`ArtifactError` naming ``suspects`` when the
    saved weights (names) or the saved standard-layer record do not fit ``model``."""
    from safetensors import safe_open

    from .structure import rebuild_structure, record_structure

    try:
        with safe_open(str(where / "weights.safetensors"), framework="pt") as f:
            saved_keys = set(f.keys())
        saved = json.loads((where / "torch_model.json").read_text()).get("structure", {})
        if not isinstance(saved, dict):
            return
    except Exception:  # unreadable files: the weight loader reports those itself
        return
    named = "; ".join(suspects)
    todo = ("Give that optimizer a rebuild() (see Optimizer.rebuild) or install its plugin, "
            "load the artifact's ONNX export instead, or pass the optimized module itself as "
            "the skeleton.")
    if set(model.state_dict()) != saved_keys:
        try:  # what loading does next for replaced standard layers
            rebuild_structure(model, saved)
        except Exception:
            return  # a broken record: the weight loader reports it
        own = set(model.state_dict())
        if own != saved_keys:
            raise ArtifactError(
                f"{where}: the saved weights do not fit {type(model).__name__} after replaying "
                f"the lineage (missing {sorted(own - saved_keys)[:5]}, unexpected "
                f"{sorted(saved_keys - own)[:5]}): lineage step {named} changed the module "
                f"structure in a way loading cannot re-create. {todo}")
    # a standard layer here where the saved model had none: the saved model holds a module
    # of its own there (same weight names, another forward), so loading would be wrong
    odd = [f"{p} ({r['type']})" for p, r in record_structure(model).items() if p not in saved]
    if odd:
        raise ArtifactError(
            f"{where}: the saved model has modules of its own where {type(model).__name__} has "
            f"standard layers {odd[:5]}: lineage step {named} replaced them and loading cannot "
            f"re-create them. {todo}")


def _example_inputs(inputs: tuple[TensorSpec, ...], where: Path) -> tuple[Any, ...]:
    """Zero tensors shaped like the saved input specs (symbolic dims -> 2); sizes and dtypes
    are checked first, so a corrupt manifest cannot drive a huge allocation."""
    import torch

    if not inputs:
        raise ArtifactError(f"{where}: the manifest lists no inputs, which replaying its "
                            "lineage needs; re-save the artifact from a Session.")
    out = []
    for spec in inputs:
        dims = spec.shape if isinstance(spec.shape, (tuple, list)) else None
        if dims is None or not all(isinstance(d, str) or (type(d) is int and d > 0)
                                   for d in dims):
            raise ArtifactError(f"{where}: {MANIFEST}: input {spec.name!r} has shape "
                                f"{spec.shape!r}; each dim must be a positive int or a name. "
                                "Re-save the artifact.")
        shape = [d if isinstance(d, int) else 2 for d in dims]
        numel = 1
        for d in shape:
            numel *= d
        if numel > 1 << 30:
            raise ArtifactError(f"{where}: {MANIFEST}: input {spec.name!r} has shape "
                                f"{list(dims)} ({numel} elements), too large to replay the "
                                "lineage with; the manifest is corrupt. Re-save the artifact.")
        dtype = getattr(torch, spec.dtype, None) if isinstance(spec.dtype, str) else None
        if not isinstance(dtype, torch.dtype):
            raise ArtifactError(f"{where}: input {spec.name!r} has unknown dtype {spec.dtype!r}.")
        out.append(torch.zeros(shape, dtype=dtype))
    return tuple(out)


def _into_skeleton(model: Any, state: dict[str, Any], where: Path,
                   structure: dict[str, Any] | None = None, copied: bool = False) -> Any:
    m = model if copied else copy.deepcopy(model)
    if structure and set(m.state_dict()) != set(state):
        from .structure import rebuild_structure

        shapes = {k: tuple(v.shape) for k, v in state.items()}
        try:  # layers replaced by a step (low-rank, separable, folded BN): rebuild them
            rebuild_structure(m, structure, shapes)  # layers only as large as the saved weights
        except ArtifactError as e:
            raise ArtifactError(f"{where.parent / 'torch_model.json'}: cannot rebuild the saved "
                                f"layer structure: {e}") from e
    own = m.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ArtifactError(
            f"{where}: weights do not fit {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {extra[:5]}. Pass the architecture the artifact was saved from.")
    try:
        _resize_to(m, state)
        m.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise ArtifactError(f"{where}: weights do not fit {type(model).__name__} "
                            f"({type(e).__name__}: {_first_line(e)}). Pass the architecture "
                            "the artifact was saved from.") from e
    return m.eval()  # artifacts hold inference models; call .train() to fine-tune further


def _resize_to(m: Any, state: dict[str, Any]) -> None:
    """Give parameters/buffers the saved shapes (pruned models) and dtypes (bf16/fp16 models),
    and fix layer attributes."""
    import torch

    for name, t in state.items():
        mod_name, _, attr = name.rpartition(".")
        mod = m.get_submodule(mod_name) if mod_name else m
        cur = getattr(mod, attr)
        if cur is None or (tuple(cur.shape) == tuple(t.shape) and cur.dtype == t.dtype):
            continue
        new = torch.empty_like(t)
        if isinstance(cur, torch.nn.Parameter):
            setattr(mod, attr, torch.nn.Parameter(new, requires_grad=cur.requires_grad))
        else:
            mod._buffers[attr] = new
        if attr == "weight" and isinstance(mod, torch.nn.modules.conv._ConvNd):
            if mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels \
                    and t.shape[1] == 1:  # a pruned depthwise conv keeps one group per channel
                mod.groups = t.shape[0]
            mod.out_channels, mod.in_channels = t.shape[0], t.shape[1] * mod.groups
        elif attr == "weight" and isinstance(mod, torch.nn.Linear):
            mod.out_features, mod.in_features = t.shape
        elif isinstance(mod, torch.nn.modules.batchnorm._NormBase) and t.dim() == 1:
            mod.num_features = t.shape[0]


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
