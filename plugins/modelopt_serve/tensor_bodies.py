"""Binary request bodies of ``POST /predict`` (see :mod:`.codec`): a safetensors file or a NumPy
``.npz`` archive, checked against the inputs' specs before they cost memory. A safetensors
header whose declared tensors do not fit the body is refused; an ``.npz`` is never unpickled,
and a member that is not a named input, whose ``.npy`` header does not fit the input's spec,
or whose declared sizes add up to more than ``max_inflated`` bytes (a zip bomb) is refused
before any array is read (members are read with bounded reads, never past their declared
size)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

from modelopt_core.errors import InputSpecError

from .codec import (
    NPZ,
    NPZ_INFLATE_FACTOR,
    SAFETENSORS_HEADER_LIMIT,
    TENSORS,
    BadRequestError,
    _check_names,
    json_depth,
)

#: safetensors dtype names -> bytes per element
_ST_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "U16": 2, "I16": 2,
             "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
             "C64": 8}


def _check_safetensors_header(body: bytes, specs: Sequence[Any]) -> None:
    """Refuse a safetensors body whose header does not describe tensors that fit inside it (or
    names tensors that are not inputs, or of the wrong rank) before any tensor is built."""
    bad = f"malformed {TENSORS} body (a safetensors file is expected)"
    if len(body) < 8:
        raise BadRequestError(f"{bad}: {len(body)} bytes, shorter than its 8-byte header "
                              "length.")
    size = int.from_bytes(body[:8], "little")
    if size > min(len(body) - 8, SAFETENSORS_HEADER_LIMIT):
        raise BadRequestError(f"{bad}: it declares a header of {size} bytes; the body holds "
                              f"{len(body) - 8} after the length (and headers over "
                              f"{SAFETENSORS_HEADER_LIMIT} bytes are refused).")
    raw, data = body[8:8 + size], len(body) - 8 - size
    if json_depth(raw) > 3:
        raise BadRequestError(f"{bad}: its JSON header nests deeper than a safetensors header "
                              "does.")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequestError(f"{bad}: its JSON header does not parse ({e}).") from None
    if not isinstance(header, dict):
        raise BadRequestError(f"{bad}: its header is not a JSON object.")
    by_name = {s.name: s for s in specs}
    _check_names([k for k in header if k != "__metadata__"], specs)
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = [int(d) for d in entry["shape"]]
            start, end = (int(o) for o in entry["data_offsets"])
            itemsize = _ST_SIZES[entry["dtype"]]
        except (KeyError, TypeError, ValueError) as e:
            raise BadRequestError(f"{bad}: tensor {name!r} has no valid dtype, shape and "
                                  f"data_offsets ({type(e).__name__}: {e}).") from None
        count = 1
        for d in shape:
            count *= d
        if min(shape, default=0) < 0 or not 0 <= start <= end <= data or \
                end - start != count * itemsize:
            raise BadRequestError(
                f"{bad}: tensor {name!r} declares shape {shape} of {entry['dtype']} "
                f"({count * itemsize} bytes) at data offsets [{start}, {end}], but the body "
                f"holds {data} bytes of tensor data.")
        _check_rank(name, tuple(shape), by_name[name])


def _check_rank(name: str, shape: tuple[int, ...], spec: Any) -> None:
    if not spec.matches(shape):
        raise InputSpecError(f"input {name!r}: shape {shape} does not match "
                             f"{list(spec.shape)} (send {len(spec.shape)} dims, the fixed ones "
                             "as the spec says; GET /spec lists them).")


def _from_safetensors(body: bytes, specs: Sequence[Any] | None = None) -> dict[str, Any]:
    from safetensors.torch import load

    if specs is not None:
        _check_safetensors_header(body, specs)
    try:
        return dict(load(body))
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends: the body is bad
        raise BadRequestError(f"malformed {TENSORS} body (a safetensors file is expected): "
                              f"{e}.") from None


def _zip_entries(body: bytes) -> int | None:
    """The entry count a zip's end-of-central-directory record declares (None: not found or
    zip64), read before ``zipfile`` builds an object per entry."""
    at = body.rfind(b"PK\x05\x06", max(0, len(body) - 22 - 65535))
    if at < 0 or at + 22 > len(body):
        return None
    n = int.from_bytes(body[at + 10:at + 12], "little")
    return None if n == 0xFFFF else n


def _from_npz(body: bytes, specs: Sequence[Any] | None = None,
              max_inflated: int | None = None) -> dict[str, Any]:
    """An ``.npz`` body's arrays, never unpickled. With ``specs`` (a request): every member must
    be ``NAME.npy`` for an input NAME, with a ``.npy`` header (shape, dtype) that fits that
    input's spec, and the declared sizes must add up to at most ``max_inflated`` bytes; all of
    this is checked before any array is read, and each read is bounded by the declared size."""
    import zipfile

    bad = f"malformed {NPZ} body (numpy.savez output expected)"
    by_name = {s.name: s for s in specs} if specs is not None else None
    if by_name is not None:
        entries = _zip_entries(body)  # (a few extra get the message naming them, below)
        if entries is not None and entries > len(by_name) + 16:
            raise InputSpecError(f"the {NPZ} archive holds {entries} members; this model takes "
                                 f"{len(by_name)} input(s) {list(by_name)}: one array each.")
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as z:
            infos = z.infolist()
            if specs is not None:  # before any member is opened
                _check_names([_member_name(i.filename) for i in infos], specs)
            members = [_npy_header(z, info, by_name, bad) for info in infos]
            if len({m.name for m in members}) < len(members):
                raise BadRequestError(f"{bad}: a member name appears twice.")
            total = sum(m.nbytes for m in members)
            if max_inflated is not None and total > max_inflated:
                raise BadRequestError(
                    f"the {NPZ} body's arrays hold {total} bytes uncompressed, over the limit "
                    f"of {max_inflated} bytes ({NPZ_INFLATE_FACTOR}x --max-body-mb); send fewer "
                    "rows per request or raise --max-body-mb.", status=413)
            return {m.name: _npy_read(z, info, m, bad) for info, m in zip(infos, members)}
    except (BadRequestError, InputSpecError):
        raise
    except Exception as e:  # noqa: BLE001 - zip and npy errors: the body is bad
        raise BadRequestError(f"{bad}: {type(e).__name__}: {e}.") from None


class _Member:
    """What one ``.npz`` member's zip entry and ``.npy`` header declare."""

    def __init__(self, name: str, shape: tuple[int, ...], dtype: Any, fortran: bool,
                 offset: int, nbytes: int) -> None:
        self.name, self.shape, self.dtype, self.fortran = name, shape, dtype, fortran
        self.offset, self.nbytes = offset, nbytes


def _npy_header(z: Any, info: Any, by_name: dict[str, Any] | None, bad: str) -> _Member:
    """One member's name, shape, dtype and sizes, from the zip's central directory and the
    member's ``.npy`` header only (a few hundred bytes inflated)."""
    import zipfile

    from numpy.lib import format as npy

    name = _member_name(info.filename)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise BadRequestError(f"{bad}: member {info.filename!r} uses zip compression method "
                              f"{info.compress_type}; send numpy.savez or savez_compressed "
                              "output (stored or deflated).")
    with z.open(info) as f:
        version = npy.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(f)
        else:
            raise BadRequestError(f"{bad}: member {info.filename!r} is .npy format version "
                                  f"{version}; versions 1.0 and 2.0 are read.")
        offset = f.tell()
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise InputSpecError(f"input {name!r}: {NPZ} arrays of dtype {dtype} are not accepted; "
                             "send numbers (bool, int, uint or float arrays).")
    shape = tuple(int(d) for d in shape)
    count = 1
    for d in shape:
        count *= d
    nbytes = count * dtype.itemsize
    if info.file_size != offset + nbytes:
        raise BadRequestError(f"{bad}: member {info.filename!r} declares {info.file_size} "
                              f"bytes, but its .npy header describes {shape} {dtype} "
                              f"({offset} + {nbytes} bytes).")
    if by_name is not None:
        spec = by_name[name]
        _check_rank(name, shape, spec)
        want = _np_dtype(spec.dtype)
        if want is not None and dtype.newbyteorder("=") != want:
            raise InputSpecError(f"input {name!r}: dtype {dtype.newbyteorder('=')} but the "
                                 f"model takes {spec.dtype}; send {spec.dtype} arrays.")
    return _Member(name, shape, dtype, fortran, offset, nbytes)


def _member_name(filename: str) -> str:
    return filename[:-4] if filename.endswith(".npy") else filename


def _np_dtype(name: str) -> Any:
    import numpy as np

    try:
        return np.dtype(name)
    except TypeError:  # bfloat16 and friends: no numpy dtype
        return None


def _npy_read(z: Any, info: Any, m: _Member, bad: str) -> Any:
    """A member's array, read in bounded pieces: never more than its declared bytes inflated
    (``zipfile`` itself stops at the entry's declared size and checks its CRC)."""
    import numpy as np
    import torch

    flat = np.empty(m.nbytes // m.dtype.itemsize if m.dtype.itemsize else 0, m.dtype)
    out = memoryview(flat.view(np.uint8).reshape(-1))
    with z.open(info) as f:
        f.read(m.offset)  # the .npy header, read and checked before
        done = 0
        while done < m.nbytes:
            piece = f.read(min(1 << 20, m.nbytes - done))
            if not piece:
                raise BadRequestError(f"{bad}: member {info.filename!r} ends after {done} of "
                                      f"its {m.nbytes} bytes of data.")
            out[done:done + len(piece)] = piece
            done += len(piece)
    arr = flat.reshape(m.shape, order="F" if m.fortran else "C")
    if not m.dtype.isnative:
        arr = arr.astype(m.dtype.newbyteorder("="))
    return torch.from_numpy(np.ascontiguousarray(arr))
