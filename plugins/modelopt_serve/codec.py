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
  unpickled (``allow_pickle=False``); bfloat16 outputs are sent as float32.

A response uses the ``Accept`` type when it names one of these, else the request's own type.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from modelopt_core.errors import InputSpecError

from .errors import ServeError

__all__ = [
    "JSON",
    "MEDIA_TYPES",
    "NPZ",
    "TENSORS",
    "BadRequestError",
    "decode_inputs",
    "decode_outputs",
    "encode_inputs",
    "encode_outputs",
    "response_type",
    "to_jsonable",
]

JSON = "application/json"
TENSORS = "application/x-modelopt-tensors"
NPZ = "application/x-npz"
MEDIA_TYPES = (JSON, TENSORS, NPZ)


class BadRequestError(ServeError):
    """A request the server cannot read (HTTP ``status``: 400 malformed, 413 too large, 415
    unsupported content type)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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


def decode_inputs(body: bytes, content_type: str | None, specs: Sequence[Any]) -> tuple[Any, ...]:
    """The request's input tensors in ``specs`` order; :class:`BadRequestError` for a body that
    cannot be parsed, :class:`InputSpecError` for missing, unknown or mistyped inputs."""
    kind = _media(content_type) or JSON
    if kind == JSON:
        named = _from_json(body, specs)
    elif kind == TENSORS:
        named = _from_safetensors(body)
    elif kind == NPZ:
        named = _from_npz(body)
    else:
        raise BadRequestError(f"unsupported Content-Type {content_type!r}; send one of "
                              f"{list(MEDIA_TYPES)}.", status=415)
    return _ordered(named, specs)


def _ordered(named: Mapping[str, Any], specs: Sequence[Any]) -> tuple[Any, ...]:
    names = [s.name for s in specs]
    missing = [n for n in names if n not in named]
    extra = [n for n in named if n not in names]
    if missing or extra:
        raise InputSpecError(f"request inputs {sorted(named)} do not match the model's inputs "
                             f"{names}" + (f"; missing {missing}" if missing else "")
                             + (f"; unknown {extra}" if extra else "") + ".")
    return tuple(named[n] for n in names)


def _from_json(body: bytes, specs: Sequence[Any]) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequestError(f"malformed JSON body: {e}.") from None
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
        arr = arr.astype(np.float32 if want != torch.float64 else np.float64)
    return torch.from_numpy(np.ascontiguousarray(arr)).to(want)


def _from_safetensors(body: bytes) -> dict[str, Any]:
    from safetensors.torch import load

    try:
        return dict(load(body))
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends: the body is bad
        raise BadRequestError(f"malformed {TENSORS} body (a safetensors file is expected): "
                              f"{e}.") from None


def _from_npz(body: bytes) -> dict[str, Any]:
    import numpy as np
    import torch

    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as z:
            return {k: torch.from_numpy(np.ascontiguousarray(z[k])) for k in z.files}
    except Exception as e:  # noqa: BLE001 - zip and npy errors: the body is bad
        raise BadRequestError(f"malformed {NPZ} body (numpy.savez output expected): {e}.") \
            from None


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
    from modelopt_core.io import flatten_outputs, leaf_names

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
    return json.dumps({"outputs": to_jsonable(out)}, separators=(",", ":")).encode()


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
