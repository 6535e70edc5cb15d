"""Content fingerprints for the step cache (:mod:`modelopt_core.step_cache`): of an artifact
(what it computes) and of the data a step consumes (calibration/train data, ``eval_fn``,
``task_loss``), so that a cached step is reused only for the same input, the same data and
the same code.

A fingerprint either describes its value faithfully or is refused
(:class:`Unfingerprintable`, naming what and why): a one-shot iterator (reading it would use
it up), an object of unknown shape (a C extension's, a socket...). A refused value makes the
step uncached, never wrongly cached. Callables are fingerprinted by their code (bytecode,
constants, names), their defaults, the values their closures hold and the module-level
functions/data they name (to a small depth): two ``eval_fn`` lambdas over different test
sets differ; an ``eval_fn`` whose behaviour depends on state it does not hold (a file it
reads, a global it mutates) cannot be seen: give such an object a string attribute
``modelopt_fingerprint`` that names its state, or a ``StepCache(dir, data_fingerprint=...)``.
A dataset object is fingerprinted by its attributes: one that reads files as it is iterated
is seen by the paths it holds, not by the files' bytes (name their version in
``modelopt_fingerprint`` when they change in place).
"""

from __future__ import annotations

import hashlib
import types
import weakref
from typing import Any

__all__ = ["Unfingerprintable", "artifact_hash", "data_fingerprint", "remember_hash"]

#: how deep referenced module-level functions and objects are followed
_DEPTH = 6
_SCALARS = (type(None), bool, int, float, complex, str, bytes)


class Unfingerprintable(Exception):
    """The value cannot be fingerprinted faithfully (the message says what and why)."""


def data_fingerprint(value: Any, what: str = "value") -> str:
    """A SHA-256 hex digest of ``value`` (see the module doc); :class:`Unfingerprintable`
    naming ``what`` when it cannot be described faithfully."""
    h = hashlib.sha256()
    _feed(h, value, what, _DEPTH, set())
    return h.hexdigest()


def _feed(h: Any, v: Any, what: str, depth: int, seen: set[int]) -> None:
    """Add ``v`` to the hash ``h`` (``seen``: ids on the current path, for cycles)."""
    tag = getattr(v, "modelopt_fingerprint", None)
    if isinstance(tag, str) and not isinstance(v, type):
        h.update(b"tag:" + tag.encode())
        return
    if isinstance(v, _SCALARS):
        h.update(f"{type(v).__name__}:{v!r};".encode())
        return
    if id(v) in seen:
        h.update(b"cycle;")
        return
    if depth < 0:
        raise Unfingerprintable(f"{what}: nested too deeply to fingerprint")
    seen = seen | {id(v)}
    for kind, fn in _FEEDERS:
        if kind(v):
            fn(h, v, what, depth, seen)
            return
    raise Unfingerprintable(f"{what}: a {type(v).__module__}.{type(v).__qualname__} "
                            "has no faithful fingerprint")


def _tensor(h: Any, t: Any, what: str, depth: int, seen: set[int]) -> None:
    import torch

    t = t.detach().cpu().contiguous()
    h.update(f"tensor:{t.dtype}:{tuple(t.shape)};".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _array(h: Any, a: Any, what: str, depth: int, seen: set[int]) -> None:
    import numpy as np

    a = np.ascontiguousarray(a)
    h.update(f"array:{a.dtype}:{a.shape};".encode())
    h.update(a.tobytes())


def _seq(h: Any, v: Any, what: str, depth: int, seen: set[int]) -> None:
    items = sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v
    h.update(f"{type(v).__name__}[{len(v)}]".encode())
    for i, x in enumerate(items):
        _feed(h, x, f"{what}[{i}]", depth - 1, seen)


def _map(h: Any, v: Any, what: str, depth: int, seen: set[int]) -> None:
    h.update(f"map[{len(v)}]".encode())
    for k in sorted(v, key=repr):
        _feed(h, k, what, depth - 1, seen)
        _feed(h, v[k], f"{what}[{k!r}]", depth - 1, seen)


def _module(h: Any, m: Any, what: str, depth: int, seen: set[int]) -> None:
    h.update(f"nn:{m!r};".encode())
    _map(h, dict(m.state_dict()), what, depth, seen)


def _loader(h: Any, dl: Any, what: str, depth: int, seen: set[int]) -> None:
    """A DataLoader: its dataset and how it batches (the order a shuffling sampler draws
    is random on every pass, as a recomputation's would be)."""
    h.update(f"loader:{dl.batch_size}:{dl.drop_last}:{type(dl.sampler).__qualname__};".encode())
    _feed(h, dl.dataset, f"{what}.dataset", depth - 1, seen)
    _feed(h, dl.collate_fn, f"{what}.collate_fn", depth - 1, seen)


def _function(h: Any, f: Any, what: str, depth: int, seen: set[int]) -> None:
    code = f.__code__
    h.update(f"fn:{f.__module__}.{f.__qualname__};".encode())
    _code(h, code)
    _feed(h, f.__defaults__, f"{what} defaults", depth - 1, seen)
    _feed(h, f.__kwdefaults__, f"{what} defaults", depth - 1, seen)
    for name, cell in zip(code.co_freevars, f.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            value = None
        _feed(h, value, f"{what} (closure {name!r})", depth - 1, seen)
    for name in _names(code):  # module-level functions and data it uses
        g = f.__globals__.get(name)
        if g is None or isinstance(g, (types.ModuleType, type)):
            h.update(f"global:{name}:{getattr(g, '__name__', None)};".encode())
        elif isinstance(g, _SCALARS) or callable(g):
            _feed(h, g, f"{what} (global {name!r})", depth - 1, seen)
        else:  # data the function reads at call time
            _feed(h, g, f"{what} (global {name!r})", depth - 1, seen)


def _names(code: types.CodeType) -> list[str]:
    out = list(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out += _names(c)
    return sorted(set(out))


def _code(h: Any, code: types.CodeType) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _code(h, c)
        else:
            h.update(repr(c).encode())


def _partial(h: Any, p: Any, what: str, depth: int, seen: set[int]) -> None:
    _feed(h, p.func, what, depth - 1, seen)
    _feed(h, p.args, what, depth - 1, seen)
    _feed(h, p.keywords, what, depth - 1, seen)


def _method(h: Any, m: Any, what: str, depth: int, seen: set[int]) -> None:
    _feed(h, m.__func__, what, depth - 1, seen)
    _feed(h, m.__self__, f"{what} (its object)", depth - 1, seen)


def _object(h: Any, o: Any, what: str, depth: int, seen: set[int]) -> None:
    """A plain Python object (a dataset, a callable class): its class and its attributes."""
    cls = type(o)
    h.update(f"obj:{cls.__module__}.{cls.__qualname__};".encode())
    call = cls.__dict__.get("__call__")
    if isinstance(call, types.FunctionType):
        _code(h, call.__code__)
    for name in ("__getitem__", "__iter__", "__len__"):
        fn = getattr(cls, name, None)
        if isinstance(fn, types.FunctionType):
            _code(h, fn.__code__)
    _map(h, dict(vars(o)), what, depth, seen)


def _is_torch(kind: str) -> Any:
    def check(v: Any) -> bool:
        import sys

        torch = sys.modules.get("torch")
        if torch is None:
            return False
        if kind == "tensor":
            return isinstance(v, torch.Tensor)
        if kind == "module":
            return isinstance(v, torch.nn.Module)
        return isinstance(v, torch.utils.data.DataLoader)
    return check


def _is_array(v: Any) -> bool:
    import sys

    np = sys.modules.get("numpy")
    return np is not None and isinstance(v, np.ndarray)


def _is_one_shot(v: Any) -> bool:
    return isinstance(v, (types.GeneratorType, map, filter, zip)) or (
        hasattr(v, "__next__") and iter(v) is v)


def _refuse_one_shot(h: Any, v: Any, what: str, depth: int, seen: set[int]) -> None:
    raise Unfingerprintable(f"{what}: a one-shot iterator (reading it to fingerprint it would "
                            "use it up)")


_FEEDERS: list[tuple[Any, Any]] = [
    (_is_torch("tensor"), _tensor),
    (_is_array, _array),
    (lambda v: isinstance(v, (list, tuple, set, frozenset)), _seq),
    (lambda v: isinstance(v, dict), _map),
    (_is_torch("module"), _module),
    (_is_torch("loader"), _loader),
    (_is_one_shot, _refuse_one_shot),
    (lambda v: isinstance(v, types.FunctionType), _function),
    (lambda v: isinstance(v, types.MethodType), _method),
    (lambda v: type(v).__name__ == "partial" and hasattr(v, "func"), _partial),
    (lambda v: isinstance(v, (types.BuiltinFunctionType, type)),
     lambda h, v, *a: h.update(f"named:{getattr(v, '__module__', '')}."
                               f"{getattr(v, '__qualname__', v)};".encode())),
    (lambda v: hasattr(v, "__dict__") and not isinstance(v, types.ModuleType), _object),
]

#: artifact -> its content hash (artifacts are immutable; a cache hit's is its entry's)
_HASHES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def remember_hash(artifact: Any, digest: str) -> None:
    """Record ``artifact``'s content hash (a cache hit's, verified by its entry's files)."""
    _HASHES[artifact] = digest


def _saved_digest(artifact: Any) -> str:
    """The digest of the files a temporary save of ``artifact`` writes (their SHA-256s, as
    its manifest lists them)."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp(prefix="modelopt-hash-"))
    try:
        try:
            artifact.save(tmp / "a")
        except Exception as e:
            raise Unfingerprintable(f"artifact {artifact.name!r}: its {artifact.format} model "
                                    f"cannot be saved to hash it ({type(e).__name__})") from e
        files = json.loads((tmp / "a" / "manifest.json").read_text())["files"]
        return json.dumps({k: v["sha256"] for k, v in sorted(files.items())})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def artifact_hash(artifact: Any) -> str:
    """A SHA-256 hex digest of what ``artifact`` computes: its format, its model's content
    (a torch module's structure and weights, an ONNX proto's bytes, raw bytes), its input and
    output specs and the structure records of its lineage (what loading rebuilds from).
    :class:`Unfingerprintable` for a model kept in a form that cannot be hashed in memory."""
    known = _HASHES.get(artifact)
    if known is not None:
        return known
    hit = artifact.metadata.get("step_cache")  # a cache hit's (this very artifact's only)
    if isinstance(hit, dict) and hit.get("lineage") == len(artifact.lineage) \
            and isinstance(hit.get("content"), str):
        return hit["content"]
    h = hashlib.sha256()
    h.update(f"format:{artifact.format};".encode())
    model = artifact.model
    if isinstance(model, (bytes, bytearray, memoryview)):
        h.update(bytes(model))
    elif hasattr(model, "SerializeToString"):
        h.update(model.SerializeToString())
    elif _is_torch("module")(model):
        _module(h, model, "the artifact's model", _DEPTH, set())
    else:  # another runtime's model object: the files its format saves
        h.update(_saved_digest(artifact).encode())
    _feed(h, [s.to_data() for s in artifact.inputs + artifact.outputs], "specs", _DEPTH, set())
    _feed(h, [s.restore for s in artifact.lineage], "restore records", _DEPTH, set())
    _feed(h, artifact.io, "io", _DEPTH, set())
    props = {k: v for k, v in artifact.props.to_data().items() if not k.startswith("runtime")}
    _feed(h, props, "props", _DEPTH, set())
    digest = h.hexdigest()
    _HASHES[artifact] = digest
    return digest
