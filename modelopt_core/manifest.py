"""Schema checks for ``manifest.json``: every field's type and range is checked before anything
is built from it, so a damaged or hostile manifest is an :class:`ArtifactError` naming the field,
never a raw ``TypeError``/``KeyError`` and never an allocation sized by an unchecked number.

Forward compatibility: a manifest from a newer modelopt (higher ``modelopt_manifest``) loads when
its ``min_reader_version`` is one this code reads; unknown fields are ignored (a lineage Step
records which ones in its notes). A manifest that needs a newer reader says so.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .errors import ArtifactError, UnsafeArtifactError

__all__ = ["MANIFEST_VERSION", "MAX_SPEC_ELEMENTS", "check_manifest", "spec_fields",
           "step_fields", "read_json"]

MANIFEST_VERSION = 1
#: largest ``manifest.json`` / ``torch_model.json`` read (bytes)
MAX_JSON_BYTES = 64 << 20
#: largest tensor a TensorSpec may describe (elements, symbolic dims counted as 2): loading
#: builds example inputs from specs, so they must not drive a huge allocation
MAX_SPEC_ELEMENTS = 1 << 28
MAX_RANK = 16
MAX_DIM = (1 << 31) - 1
_MAX_ITEMS = 100_000
_SHA = re.compile(r"[0-9a-f]{64}")
_STEP_KEYS = ("component", "kind", "plugin", "version", "config", "duration_s", "notes",
              "restore")


def read_json(path: Path, what: str = "file") -> Any:
    """Parse a JSON file (size-capped); ArtifactError naming the file when it is not JSON."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ArtifactError(f"{path}: {size} bytes is too large for a {what} "
                                f"(limit {MAX_JSON_BYTES}); the file is not one modelopt wrote.")
        return json.loads(path.read_bytes())
    except ArtifactError:
        raise
    except (OSError, ValueError, RecursionError) as e:
        raise ArtifactError(f"{path}: {what} is not valid JSON ({type(e).__name__}: "
                            f"{str(e)[:200]}); re-save the artifact.") from e


def _fail(where: str, msg: str) -> ArtifactError:
    return ArtifactError(f"field {where}: {msg}")


def _type(where: str, v: Any, types: type | tuple[type, ...], name: str) -> Any:
    if not isinstance(v, types) or isinstance(v, bool) and bool not in (
            types if isinstance(types, tuple) else (types,)):
        raise _fail(where, f"expected {name}, got {type(v).__name__} {_short(v)}")
    return v


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _int(where: str, v: Any, lo: int, hi: int) -> int:
    _type(where, v, int, "an integer")
    if not lo <= v <= hi:
        raise _fail(where, f"{v} is out of range [{lo}, {hi}]")
    return v


def _list(where: str, v: Any) -> list[Any]:
    _type(where, v, list, "a list")
    if len(v) > _MAX_ITEMS:
        raise _fail(where, f"{len(v)} entries is more than {_MAX_ITEMS}")
    return v


def spec_fields(d: Any, where: str) -> tuple[str, tuple[int | str, ...], str]:
    """Checked ``(name, shape, dtype)`` of a TensorSpec record; unknown keys are ignored."""
    _type(where, d, dict, "an object")
    if "name" not in d or "shape" not in d:
        raise _fail(where, f"missing key {'name' if 'name' not in d else 'shape'!r}")
    name = _type(f"{where}.name", d["name"], str, "a string")
    shape = _type(f"{where}.shape", d["shape"], (list, tuple), "a list")
    if len(shape) > MAX_RANK:
        raise _fail(f"{where}.shape", f"rank {len(shape)} is more than {MAX_RANK}")
    numel = 1
    for i, s in enumerate(shape):
        if isinstance(s, str):
            numel *= 2
        else:
            numel *= _int(f"{where}.shape[{i}]", s, 0, MAX_DIM)
    if numel > MAX_SPEC_ELEMENTS:
        raise _fail(f"{where}.shape", f"{list(shape)} describes {numel} elements, more than "
                    f"the {MAX_SPEC_ELEMENTS} a model input may have")
    dtype = _type(f"{where}.dtype", d.get("dtype", "float32"), str, "a string")
    return name, tuple(shape), dtype


def step_fields(d: Any, where: str) -> dict[str, Any]:
    """Checked keyword arguments for a Step; unknown keys are dropped and named in its notes."""
    _type(where, d, dict, "an object")
    for k in ("component", "kind"):
        if k not in d:
            raise _fail(where, f"missing key {k!r}")
    out: dict[str, Any] = {}
    for k in ("component", "kind", "plugin", "version"):
        if k in d:
            out[k] = _type(f"{where}.{k}", d[k], str, "a string")
    for k in ("config", "restore"):
        if k in d:
            out[k] = _type(f"{where}.{k}", d[k], dict, "an object")
    if "duration_s" in d:
        v = _type(f"{where}.duration_s", d["duration_s"], (int, float), "a number")
        if not math.isfinite(v) or v < 0:
            raise _fail(f"{where}.duration_s", f"{v} is not a duration in seconds")
        out["duration_s"] = float(v)
    notes = _list(f"{where}.notes", d.get("notes", []))
    for i, n in enumerate(notes):
        _type(f"{where}.notes[{i}]", n, str, "a string")
    unknown = sorted(str(k) for k in d if k not in _STEP_KEYS)
    if unknown:
        notes = [*notes, f"ignored unknown step field(s) {unknown} (written by a newer modelopt)"]
    out["notes"] = tuple(notes)
    return out


def _check_file_name(where: str, name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", name):
        raise UnsafeArtifactError(f"field {where}: {name!r} points outside the artifact folder "
                                  "(path traversal); refused")
    if not name or "\\" in name or "\x00" in name or any(p in ("", ".") for p in parts):
        raise _fail(where, f"{name!r} is not a plain relative file name inside the folder")
    if name == "manifest.json":
        raise _fail(where, "the manifest cannot list itself")


def check_manifest(m: Any, mpath: Path) -> dict[str, Any]:
    """Validate a parsed manifest; returns it with defaults filled in. ArtifactError names the
    file and the field at fault."""
    try:
        return _check(m)
    except ArtifactError as e:
        raise type(e)(f"{mpath}: {e}; re-save the artifact.") from None


def _check(m: Any) -> dict[str, Any]:
    _type("(top level)", m, dict, "an object")
    if "modelopt_manifest" not in m:
        raise _fail("modelopt_manifest", "missing: this is not a modelopt manifest")
    version = _int("modelopt_manifest", m["modelopt_manifest"], 1, MAX_DIM)
    needs = _int("min_reader_version", m.get("min_reader_version", 1), 1, MAX_DIM)
    if needs > MANIFEST_VERSION:
        wrote = m.get("modelopt_version")
        raise ArtifactError(
            f"field modelopt_manifest: version {version} needs a reader of manifest version "
            f"{needs}, this modelopt reads version {MANIFEST_VERSION}; upgrade modelopt (the "
            f"artifact was written by modelopt {wrote if isinstance(wrote, str) else '(newer)'})")
    for k in ("format", "files"):
        if k not in m:
            raise _fail(k, "missing")
    fmt = _type("format", m["format"], str, "a string")
    if not fmt or len(fmt) > 64:
        raise _fail("format", f"{fmt!r} is not a format name")
    files = _type("files", m["files"], dict, "an object")
    if len(files) > _MAX_ITEMS:
        raise _fail("files", f"{len(files)} entries is more than {_MAX_ITEMS}")
    for name, info in files.items():
        where = f"files[{name!r}]"
        _check_file_name(where, name)
        _type(where, info, dict, "an object")
        if "sha256" not in info:
            raise _fail(where, "missing key 'sha256'")
        sha = _type(f"{where}.sha256", info["sha256"], str, "a string")
        if not _SHA.fullmatch(sha):
            raise _fail(f"{where}.sha256", f"{_short(sha)} is not a hex SHA-256")
        if "bytes" in info:
            _int(f"{where}.bytes", info["bytes"], 0, 1 << 50)
    out = dict(m)
    for k in ("inputs", "outputs", "lineage"):
        out[k] = _list(k, m.get(k, []))
    for k in ("metadata", "io", "props"):
        out[k] = _type(k, m.get(k, {}), dict, "an object")
    return out
