"""ModelArtifact, TensorSpec and lineage Steps, with atomic, hash-verified save/load.

An artifact is immutable: every optimizer or exporter returns a new one with one more
:class:`Step` in its lineage. On disk an artifact is a folder holding the model files and a
``manifest.json`` that records the format, the input/output specs, the lineage and the SHA-256
of every file. Loading verifies every hash and never executes code from the folder: torch
weights are read from safetensors only (pickles are refused), ONNX external data must stay
inside the folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs

from .errors import ArtifactError, UnsafeArtifactError

__all__ = ["TensorSpec", "Step", "ModelArtifact", "load_artifact", "sha256_file"]

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


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
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d.get("dtype", "float32"))


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
    def from_data(cls, d: dict[str, Any]) -> Step:
        d = dict(d)
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**d)


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
    #: (plain data, see :mod:`modelopt_core.io`): ``{"inputs": "positional" | "keyword",
    #: "outputs": <tree>}``; empty means positional inputs and a tensor or tuple of tensors
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

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the artifact to folder ``path`` atomically (temp folder + rename, same parent)."""
        target = Path(path).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            files = _write_model(self, tmp)
            manifest = {
                "modelopt_manifest": MANIFEST_VERSION,
                "format": self.format,
                "inputs": [s.to_data() for s in self.inputs],
                "outputs": [s.to_data() for s in self.outputs],
                "lineage": [s.to_data() for s in self.lineage],
                "metadata": _jsonable(self.metadata),
                "io": self.io,
                "files": {f: {"sha256": sha256_file(tmp / f), "bytes": (tmp / f).stat().st_size}
                          for f in files},
            }
            _write_json(tmp / MANIFEST, manifest)
            _fsync_dir(tmp)
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
                os.rmdir(old)
                os.replace(target, old)
                try:
                    os.replace(tmp, target)
                except BaseException:
                    os.replace(old, target)  # put the previous artifact back
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
            _fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target


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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_model(art: ModelArtifact, folder: Path) -> list[str]:
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

        onnx.save_model(art.model, str(folder / "model.onnx"))
        return ["model.onnx"]
    if isinstance(art.model, (bytes, bytearray)):
        (folder / "model.bin").write_bytes(bytes(art.model))
        return ["model.bin"]
    raise ArtifactError(
        f"cannot save an artifact of format {art.format!r} holding {type(art.model).__name__}: "
        "only torch modules, ONNX models and raw bytes have a file form.")


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

    Hashes in the manifest are verified; torch weights load only from safetensors into the
    module skeleton ``model`` (a fresh instance of the same class), which is copied, never
    changed. Pickle files are refused: their code is never run.
    """
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such file or folder.")
    if p.is_file():
        return _load_bare_file(p, model)
    mpath = p / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{p}: no {MANIFEST}; save artifacts with ModelArtifact.save().")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        fmt = manifest["format"]
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{mpath}: manifest is not valid ({e}); re-save the artifact.") from e
    for name, info in files.items():
        fp = _inside(p, name)
        if not fp.is_file():
            raise ArtifactError(f"{fp}: listed in the manifest but missing.")
        digest = sha256_file(fp)
        if digest != info.get("sha256"):
            raise ArtifactError(
                f"{fp}: SHA-256 mismatch (manifest {info.get('sha256', '?')[:12]}..., file "
                f"{digest[:12]}...): the file was changed or truncated; re-save the artifact.")
    inputs = tuple(TensorSpec.from_data(d) for d in manifest.get("inputs", []))
    outputs = tuple(TensorSpec.from_data(d) for d in manifest.get("outputs", []))
    lineage = tuple(Step.from_data(d) for d in manifest.get("lineage", []))
    meta = manifest.get("metadata", {})
    if fmt == "torch":
        obj = _load_torch_weights(p / "weights.safetensors", model, files, lineage, inputs, meta)
    elif fmt == "onnx":
        obj = _load_onnx(p / "model.onnx")
    else:
        obj = (p / "model.bin").read_bytes()
    return ModelArtifact(fmt, obj, inputs, outputs,
                         lineage + (Step("load", "load", config={"path": str(p)}),), meta, str(p),
                         io=manifest.get("io", {}))


def _inside(root: Path, rel: str) -> Path:
    fp = (root / rel).resolve()
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

        try:  # weights_only refuses any global it does not know: nothing from the file runs
            state = torch.load(p, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
            raise UnsafeArtifactError(
                f"{p}: refused to unpickle (it is not a plain tensor state_dict; loading it would "
                f"execute code from the file). Save weights with safetensors or "
                f"ModelArtifact.save(). Detail: {str(e).splitlines()[0][:200]}") from e
        if not isinstance(state, dict) or model is None:
            raise ArtifactError(f"{p}: a weights file needs a model skeleton: pass model=...")
        return ModelArtifact("torch", _into_skeleton(model, state, p),
                             lineage=(Step("load", "load", config={"path": str(p)}),), path=str(p))
    raise ArtifactError(f"{p}: unknown file type {p.suffix!r}; expected an artifact folder, "
                        ".onnx or .safetensors.")


def _load_torch_weights(fp: Path, model: Any, files: Any, lineage: tuple[Step, ...] = (),
                        inputs: tuple[TensorSpec, ...] = (),
                        metadata: dict[str, Any] | None = None) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if model is None:
        cls = ""
        meta = fp.parent / "torch_model.json"
        if meta.is_file():
            cls = json.loads(meta.read_text()).get("class", "")
        raise ArtifactError(
            f"{fp.parent}: torch artifacts store weights only (safetensors; no pickled code). "
            f"Pass the architecture: load_artifact(path, model={cls or 'YourModel'}(...)).")
    try:
        state = load_file(str(fp))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{fp}: not a valid safetensors file ({e}).") from e
    structure = {}
    meta = fp.parent / "torch_model.json"
    if files is not None and meta.is_file():
        structure = json.loads(meta.read_text()).get("structure", {})
    m = _replay(copy.deepcopy(model), lineage, inputs, metadata or {}, fp.parent)
    return _into_skeleton(m, state, fp, structure, copied=True)


def _replay(model: Any, lineage: tuple[Step, ...], inputs: tuple[TensorSpec, ...],
            metadata: dict[str, Any], where: Path) -> Any:
    """Re-run, without data, the structural part of every lineage step that defines
    :meth:`Optimizer.rebuild` (torch.fx graphs, quantizer modules) on ``model``, in order."""
    from .errors import ModeloptError, UnknownComponentError
    from .interfaces import Optimizer
    from .plugins import get_plugin_manager

    steps = [s for s in lineage if s.kind == "optimizer"]
    if not steps:
        return model
    pm = get_plugin_manager()
    example = None
    for step in steps:
        try:
            cls = pm.get("optimizer", step.component).cls
        except UnknownComponentError:
            continue  # nothing to replay is known for it; the weights will tell
        if cls.rebuild is Optimizer.rebuild:
            continue
        if example is None:
            example = _example_inputs(inputs, where)
        try:
            new = cls(**step.config).rebuild(model, example, metadata)
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
    return model


def _example_inputs(inputs: tuple[TensorSpec, ...], where: Path) -> tuple[Any, ...]:
    """Zero tensors shaped like the saved input specs (symbolic dims -> 2)."""
    import torch

    if not inputs:
        raise ArtifactError(f"{where}: the manifest lists no inputs, which replaying its "
                            "lineage needs; re-save the artifact from a Session.")
    out = []
    for spec in inputs:
        shape = [d if isinstance(d, int) else 2 for d in spec.shape]
        dtype = getattr(torch, spec.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ArtifactError(f"{where}: input {spec.name!r} has unknown dtype {spec.dtype!r}.")
        out.append(torch.zeros(shape, dtype=dtype))
    return tuple(out)


def _into_skeleton(model: Any, state: dict[str, Any], where: Path,
                   structure: dict[str, Any] | None = None, copied: bool = False) -> Any:
    m = model if copied else copy.deepcopy(model)
    if structure and set(m.state_dict()) != set(state):
        from .structure import rebuild_structure

        try:  # layers replaced by a step (low-rank, separable, folded BN): rebuild them
            rebuild_structure(m, structure)
        except (ValueError, TypeError) as e:
            raise ArtifactError(f"{where}: cannot rebuild the saved layer structure: {e}") from e
    own = m.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ArtifactError(
            f"{where}: weights do not fit {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {extra[:5]}. Pass the architecture the artifact was saved from.")
    _resize_to(m, state)
    m.load_state_dict(state)
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

    for t in _get_all_tensors(m):
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            target = (root / loc).resolve()
            if os.path.isabs(loc) or root not in target.parents:
                raise UnsafeArtifactError(
                    f"{fp}: tensor {t.name!r} points its external data at {loc!r}, outside the "
                    "model's folder; refused (path traversal).")
    try:
        onnx.load_external_data_for_model(m, str(root))
        onnx.checker.check_model(m)
    except Exception as e:
        raise ArtifactError(f"{fp}: ONNX model failed to load or check: {e}") from e
    return m
