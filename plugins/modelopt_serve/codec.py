"""Request and response bodies of ``POST /predict``: JSON and binary tensors.

Formats (the ``Content-Type`` of a request, the ``Accept`` of its response):

- ``application/json``: ``{"inputs": {"NAME": nested lists, ...}}`` or ``{"inputs": [nested
  lists in the artifact's input order]}``; every input has its leading batch dim. Values are
  cast to the dtype of the artifact's input spec (integers only for integer inputs). The
  response mirrors the model's output structure with tensors as nested lists:
  ``{"outputs": ...}`` (a list for a single tensor, an object for a dict output, a list for a
  tuple).
- ``application/x-modelopt-tensors``: a safetensors file (https://huggingface.co/docs/safetensors)
  whose tensor names are the input names. The response is a safetensors file whose tensor names
  are the flat output names (``output`` for a single tensor, ``output_0``... for a tuple,
  dotted keys for a dict), with the output structure as JSON in the metadata key ``outputs``.
- ``application/x-npz``: a NumPy ``.npz`` archive (``numpy.savez``) keyed the same way; never
  unpickled; bfloat16 outputs are sent as float32.

A response uses the ``Accept`` type when it names one of these, else the request's own type.

Hostile bodies are refused before they cost memory: a JSON body nested deeper than the inputs'
rank (checked on the bytes, before parsing), an ``.npz`` member that is not a named input, whose
``.npy`` header does not fit the input's spec, or whose declared sizes add up to more than
``max_inflated`` bytes (a zip bomb; members are read with bounded reads, never past their
declared size), a safetensors header whose declared tensors do not fit the body. Non-finite
float inputs (NaN, Infinity, literals that overflow the input's dtype) get 400; JSON answers
are strict JSON (a non-finite output is a :class:`~modelopt_serve.errors.NonFiniteOutputError`).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from modelopt_core.errors import InputSpecError

from .errors import NonFiniteOutputError, ServeError

__all__ = [
    "JSON",
    "MEDIA_TYPES",
    "NPZ",
    "NPZ_INFLATE_FACTOR",
    "TENSORS",
    "BadRequestError",
    "NonFiniteInputError",
    "decode_inputs",
    "decode_outputs",
    "encode_inputs",
    "encode_outputs",
    "json_depth",
    "response_type",
    "to_jsonable",
]

JSON = "application/json"
TENSORS = "application/x-modelopt-tensors"
NPZ = "application/x-npz"
MEDIA_TYPES = (JSON, TENSORS, NPZ)

#: an ``.npz`` body may inflate to at most this many times the body limit (``max_body_mb``)
NPZ_INFLATE_FACTOR = 4
#: the most bytes of a safetensors body's JSON header (a few inputs need a few hundred)
SAFETENSORS_HEADER_LIMIT = 1 << 20


class BadRequestError(ServeError):
    """A request the server cannot read (HTTP ``status``: 400 malformed, 413 too large, 415
    unsupported content type)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self):  # keep the status across pickling
        return (type(self), (str(self), self.status))


class NonFiniteInputError(BadRequestError):
    """A float input holds NaN or infinite values (HTTP 400): the model's answer for them would
    be meaningless, and JSON cannot carry them back."""


def _media(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


def response_type(accept: str | None, request_type: str | None) -> str:
    """The media type to answer in: the first supported one ``accept`` names, else the
    request's own type, else JSON."""
    for part in (accept or "").split(","):
        if _media(part) in MEDIA_TYPES:
            return _media(part)
    req = _media(request_type)
    return req if req in MEDIA_TYPES else JSON


def decode_inputs(body: bytes, content_type: str | None, specs: Sequence[Any],
                  max_inflated: int | None = None) -> tuple[Any, ...]:
    """The request's input tensors in ``specs`` order; :class:`BadRequestError` for a body that
    cannot be parsed (or an ``.npz`` that would inflate past ``max_inflated`` bytes: 413),
    :class:`NonFiniteInputError` for NaN or infinite floats, :class:`InputSpecError` for
    missing, unknown or mistyped inputs."""
    kind = _media(content_type) or JSON
    if kind == JSON:
        named = _from_json(body, specs)
    elif kind == TENSORS:
        named = _from_safetensors(body, specs)
    elif kind == NPZ:
        named = _from_npz(body, specs, max_inflated)
    else:
        raise BadRequestError(f"unsupported Content-Type {content_type!r}; send one of "
                              f"{list(MEDIA_TYPES)}.", status=415)
    tensors = _ordered(named, specs)
    _check_finite(specs, tensors)
    return tensors


def _check_finite(specs: Sequence[Any], tensors: Sequence[Any]) -> None:
    import torch

    for spec, t in zip(specs, tensors):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                bad = int(t.numel() - int(finite.sum()))
                raise NonFiniteInputError(
                    f"input {spec.name!r}: {bad} of {t.numel()} values are NaN or infinite "
                    f"(as {str(t.dtype).replace('torch.', '')}: JSON NaN/Infinity, or numbers "
                    "too large for the dtype); send finite numbers.")


def _ordered(named: Mapping[str, Any], specs: Sequence[Any]) -> tuple[Any, ...]:
    _check_names(list(named), specs)
    return tuple(named[s.name] for s in specs)


def _check_names(keys: Sequence[str], specs: Sequence[Any]) -> None:
    names = [s.name for s in specs]
    missing = [n for n in names if n not in keys]
    extra = [n for n in keys if n not in names]
    if missing or extra:
        raise InputSpecError(f"request inputs {sorted(keys)} do not match the model's inputs "
                             f"{names}" + (f"; missing {missing}" if missing else "")
                             + (f"; unknown {extra}" if extra else "") + ".")


#: a JSON string (escapes included); an unterminated one runs to the end. No backtracking:
#: a failed match never rescans, so the scan is linear in the body
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_OPEN, _CLOSE = (ord("["), ord("{")), (ord("]"), ord("}"))


def json_depth(body: bytes, chunk: int = 1 << 20) -> int:
    """The deepest nesting of arrays and objects in a JSON document, from its bytes alone
    (brackets inside strings left out), without parsing it: ``json.loads`` recurses once per
    level, so a body of 100000 ``[`` would exhaust the stack. Linear, in C (regex, numpy)."""
    import numpy as np

    if body.count(b"[") + body.count(b"{") <= 1:
        return body.count(b"[") + body.count(b"{")
    if b'"' in body:
        body = _JSON_STRING.sub(b"", body)
    deepest, depth = 0, 0
    for i in range(0, len(body), chunk):
        b = np.frombuffer(body, np.uint8, count=min(chunk, len(body) - i), offset=i)
        b = b[(b == _OPEN[0]) | (b == _OPEN[1]) | (b == _CLOSE[0]) | (b == _CLOSE[1])]
        if not len(b):
            continue
        levels = np.cumsum(np.where((b == _OPEN[0]) | (b == _OPEN[1]), 1, -1)) + depth
        deepest, depth = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def _from_json(body: bytes, specs: Sequence[Any]) -> dict[str, Any]:
    # {"inputs": {NAME: nested lists}} or {"inputs": [nested lists]}: two levels of wrapping
    rank = max((len(s.shape) for s in specs), default=0)
    limit = 2 + rank
    if body.count(b"[") + body.count(b"{") > limit:
        depth = json_depth(body)
        if depth > limit:
            raise BadRequestError(
                f"the JSON body nests {depth} levels deep; this model takes at most {limit} "
                f'({{"inputs": ...}} around nested lists of rank {rank}): send each input as '
                "nested lists of its own rank.")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequestError(f"malformed JSON body: {e}.") from None
    except RecursionError:  # unreachable after the depth check; a last guard
        raise BadRequestError("the JSON body nests too deep.") from None
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise BadRequestError('the JSON body must be an object {"inputs": {NAME: nested lists}}'
                              ' or {"inputs": [nested lists in input order]}.')
    inputs = doc["inputs"]
    names = [s.name for s in specs]
    if isinstance(inputs, list):
        if len(inputs) != len(names):
            raise InputSpecError(f"expected {len(names)} input(s) {names}, got {len(inputs)}.")
        inputs = dict(zip(names, inputs))
    if not isinstance(inputs, dict):
        raise BadRequestError('"inputs" must be an object or a list.')
    by_name = {s.name: s for s in specs}
    return {n: _tensor(v, by_name[n]) if n in by_name else v for n, v in inputs.items()}


def _tensor(value: Any, spec: Any) -> Any:
    import numpy as np
    import torch

    try:
        arr = np.asarray(value)
    except ValueError as e:  # ragged nesting
        raise InputSpecError(f"input {spec.name!r}: not a rectangular array ({e}).") from None
    if arr.dtype.kind not in "biuf":
        raise InputSpecError(f"input {spec.name!r}: expected numbers of dtype {spec.dtype}, got "
                             f"{arr.dtype.name} values.")
    want = getattr(torch, spec.dtype, None)
    if not isinstance(want, torch.dtype):
        raise InputSpecError(f"input {spec.name!r}: dtype {spec.dtype!r} cannot be sent as JSON;"
                             f" use {TENSORS}.")
    if not want.is_floating_point and arr.dtype.kind == "f":
        raise InputSpecError(f"input {spec.name!r}: the model takes {spec.dtype}; send integers, "
                             "not floats.")
    if arr.dtype.kind == "f" and want.is_floating_point:
        with np.errstate(over="ignore"):  # an overflow is an infinity: refused as non-finite
            arr = arr.astype(np.float32 if want != torch.float64 else np.float64)
    return torch.from_numpy(np.ascontiguousarray(arr)).to(want)


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


def to_jsonable(out: Any) -> Any:
    """A model output as JSON data: tensors as nested lists, dicts as objects, tuples as lists."""
    import torch

    if isinstance(out, torch.Tensor):
        return (out.float() if out.dtype in (torch.bfloat16, torch.float16) else out).tolist()
    if isinstance(out, Mapping):
        return {k: to_jsonable(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return [to_jsonable(v) for v in out]
    return out


def _flat(out: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    from modelopt_core import flatten_outputs, leaf_names

    flat, tree = flatten_outputs(out, "response")
    names = leaf_names(tree, len(flat))
    return {n: t.detach().contiguous() for n, t in zip(names, flat)}, tree


def encode_outputs(out: Any, media_type: str) -> bytes:
    """The response body for one request's result in ``media_type``."""
    if media_type == TENSORS:
        from safetensors.torch import save

        named, tree = _flat(out)
        return save(named, metadata={"outputs": json.dumps(tree)})
    if media_type == NPZ:
        import numpy as np
        import torch

        named, _ = _flat(out)
        buf = io.BytesIO()
        np.savez(buf, **{k: (v.float() if v.dtype == torch.bfloat16 else v).numpy()
                         for k, v in named.items()})
        return buf.getvalue()
    try:
        return json.dumps({"outputs": to_jsonable(out)}, separators=(",", ":"),
                          allow_nan=False).encode()
    except ValueError:  # NaN or infinity: not JSON
        import torch

        named, _ = _flat(out)
        bad = [n for n, t in named.items()
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        raise NonFiniteOutputError(
            f"the model produced non-finite values (NaN or infinity) in output(s) {bad} for "
            f"this request, which JSON cannot carry; check the inputs, or ask for {TENSORS} or "
            f"{NPZ} (Accept header) to get them as they are.") from None


def encode_inputs(inputs: Mapping[str, Any], media_type: str = TENSORS) -> bytes:
    """A request body for named input tensors (what clients send)."""
    if media_type == TENSORS:
        from safetensors.torch import save

        return save({k: v.contiguous() for k, v in inputs.items()})
    if media_type == NPZ:
        import numpy as np

        buf = io.BytesIO()
        np.savez(buf, **{k: v.numpy() for k, v in inputs.items()})
        return buf.getvalue()
    return json.dumps({"inputs": {k: v.tolist() for k, v in inputs.items()}}).encode()


def decode_outputs(body: bytes, media_type: str) -> Any:
    """A response body back as data: JSON's ``outputs``, or ``{name: tensor}`` for binary."""
    if media_type == TENSORS:
        from safetensors.torch import load

        return dict(load(body))
    if media_type == NPZ:
        return _from_npz(body)
    return json.loads(body)["outputs"]
