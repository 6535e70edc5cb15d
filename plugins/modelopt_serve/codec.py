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
declared size), a safetensors header whose declared tensors do not fit the body (the binary
bodies are read by :mod:`.tensor_bodies`). Non-finite
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
        from .tensor_bodies import _from_safetensors

        named = _from_safetensors(body, specs)
    elif kind == NPZ:
        from .tensor_bodies import _from_npz

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
        from .tensor_bodies import _from_npz

        return _from_npz(body)
    return json.loads(body)["outputs"]
