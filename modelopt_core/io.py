"""Model call and return structure: keyword inputs, dict / ModelOutput / nested outputs.

Every runtime (ONNX Runtime, TensorRT, OpenVINO...) sees a model as flat, named tensors in and
flat, named tensors out. Real models (Hugging Face transformers among them) take keyword
inputs and return dicts, ``ModelOutput`` objects or nested tuples. This module keeps the two
views apart:

- :func:`flatten_outputs` turns a model's return value into a list of tensors plus a *tree*
  (plain, JSON-able data saved in the artifact's manifest as ``io["outputs"]``);
- :func:`unflatten_outputs` rebuilds the user's structure from flat tensors and that tree, so
  every backend's runner returns what the original model returned;
- :class:`StructuredModule` is a thin view around a module that takes keyword inputs or returns
  a structure: it takes the inputs positionally (in the artifact's input order) and returns the
  flat tensors, which is what exporters, tracers and compression steps work on. It shares the
  user's parameters; nothing is copied or changed.

A tree is one of ``{"type": "tensor"}``, ``{"type": "none"}``,
``{"type": "tuple" | "list", "items": [...]}`` or
``{"type": "dict", "keys": [...], "items": [...], "class": "module.QualName" | None}``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import FormatError, InputSpecError

__all__ = ["flatten_outputs", "unflatten_outputs", "leaf_names",
           "is_trivial", "structured_view", "order_inputs"]

TENSOR = {"type": "tensor"}


def flatten_outputs(out: Any, where: str = "model output") -> tuple[list[Any], dict[str, Any]]:
    """(flat tensors, tree) of a model's return value; FormatError for non-tensor leaves."""
    import torch

    flat: list[Any] = []

    def walk(o: Any, path: str) -> dict[str, Any]:
        if isinstance(o, torch.Tensor):
            flat.append(o)
            return dict(TENSOR)
        if o is None:
            return {"type": "none"}
        if isinstance(o, Mapping):
            keys = [k for k in o.keys() if o[k] is not None]
            if not all(isinstance(k, str) for k in keys):
                raise FormatError(f"{where}{path}: dict keys must be strings, got "
                                  f"{[type(k).__name__ for k in keys]}.")
            cls = type(o)
            name = None if cls is dict else f"{cls.__module__}:{cls.__qualname__}"
            return {"type": "dict", "keys": keys, "class": name,
                    "items": [walk(o[k], f"{path}.{k}") for k in keys]}
        if isinstance(o, (tuple, list)):
            return {"type": "list" if isinstance(o, list) else "tuple",
                    "items": [walk(x, f"{path}[{i}]") for i, x in enumerate(o)]}
        raise FormatError(
            f"{where}{path}: a {type(o).__name__} is not a tensor; models must return tensors, "
            "or dicts / tuples / lists of them (Hugging Face ModelOutput included). Wrap the "
            "model so forward() returns tensors.")

    tree = walk(out, "")
    if not flat:
        raise FormatError(f"{where}: the model returned no tensor at all.")
    return flat, tree


def unflatten_outputs(flat: Sequence[Any], tree: Mapping[str, Any] | None) -> Any:
    """Rebuild the model's own output structure from flat tensors (in tree order).

    A ``ModelOutput`` (or other dict subclass) is rebuilt as its class when that class is
    already imported in this process (nothing is imported from a saved artifact's say-so);
    otherwise as a plain ``dict`` with the same keys.
    """
    if not tree:  # legacy: a tensor, or a tuple when there are several
        return flat[0] if len(flat) == 1 else tuple(flat)
    it = iter(flat)

    def build(t: Mapping[str, Any]) -> Any:
        kind = t["type"]
        if kind == "tensor":
            return next(it)
        if kind == "none":
            return None
        items = [build(x) for x in t["items"]]
        if kind == "tuple":
            return tuple(items)
        if kind == "list":
            return items
        d = dict(zip(t["keys"], items))
        cls = _imported_class(t.get("class"))
        if cls is not None:
            try:
                return cls(**d)
            except Exception:  # a dict subclass with another constructor: plain dict
                return d
        return d

    return build(tree)


def leaf_names(tree: Mapping[str, Any] | None, n_flat: int) -> list[str]:
    """Names for the flat outputs: dict keys (dotted when nested), ``output`` for a single
    tensor, ``output_i`` for tuple items."""
    if not tree or tree.get("type") == "tensor":
        return ["output"] if n_flat == 1 else [f"output_{i}" for i in range(n_flat)]
    names: list[str] = []

    def walk(t: Mapping[str, Any], path: str) -> None:
        kind = t["type"]
        if kind == "tensor":
            names.append(path)
        elif kind == "dict":
            for k, sub in zip(t["keys"], t["items"]):
                walk(sub, f"{path}.{k}" if path else k)
        elif kind in ("tuple", "list"):
            for i, sub in enumerate(t["items"]):
                walk(sub, f"{path}.{i}" if path else f"output_{i}")

    walk(tree, "")
    return names


def export_dynamic_shapes(model: Any, specs: Sequence[Any],
                          max_size: int | None = None) -> Any:
    """``torch.export.export(..., dynamic_shapes=)`` for ``model`` called with one tensor per
    spec: each symbolic dim of the specs (a str) becomes a ``torch.export.Dim`` named after
    it (one Dim per name, shared by every input that uses it; at most ``max_size``); None
    when every dim is static. A ``forward(*xs)`` gets the packed form torch.export expects."""
    import inspect
    import re

    import torch

    def dim(name: str) -> Any:
        ident = re.sub(r"\W", "_", name)
        ident = ident if ident and not ident[0].isdigit() else f"d_{ident}"
        return torch.export.Dim(ident, min=1, max=max_size) if max_size else \
            torch.export.Dim(ident, min=1)

    dims: dict[str, Any] = {}
    per_input = [{d: dims.get(n) or dims.setdefault(n, dim(n))
                  for d, n in enumerate(s.shape) if isinstance(n, str)} for s in specs]
    if not any(per_input):
        return None
    out: Any = tuple(per_input)
    if any(p.kind is p.VAR_POSITIONAL
           for p in inspect.signature(model.forward).parameters.values()):
        out = (out,)  # forward(*xs): torch.export sees one packed argument
    return out


def is_trivial(io: Mapping[str, Any] | None) -> bool:
    """True when the model takes positional tensors and returns a tensor or a flat tuple of
    tensors: it needs no :class:`StructuredModule` view."""
    if not io:
        return True
    if io.get("keyword") or io.get("keep") is not None:
        return False
    tree = io.get("outputs") or TENSOR
    return tree["type"] == "tensor" or (
        tree["type"] == "tuple" and all(t["type"] == "tensor" for t in tree["items"]))


def _imported_class(name: str | None) -> type | None:
    if not name or ":" not in name:
        return None
    mod_name, _, qual = name.partition(":")
    obj: Any = sys.modules.get(mod_name)
    for part in qual.split("."):
        obj = getattr(obj, part, None) if obj is not None else None
    return obj if isinstance(obj, type) and issubclass(obj, Mapping) else None


def order_inputs(args: Sequence[Any], kwargs: Mapping[str, Any], names: Sequence[str],
                 where: str) -> tuple[Any, ...]:
    """Positional arguments, keyword arguments, or one dict of inputs -> a tuple in the
    artifact's input order. Unknown or missing names raise :class:`InputSpecError`."""
    if len(args) == 1 and not kwargs and isinstance(args[0], Mapping) and names:
        kwargs, args = args[0], ()
    if not kwargs:
        return tuple(args)
    if args:
        raise InputSpecError(f"{where}: pass the inputs either positionally or by name, not "
                             "both.")
    unknown = sorted(set(kwargs) - set(names))
    missing = [n for n in names if n not in kwargs]
    if unknown or missing:
        raise InputSpecError(f"{where}: inputs are {list(names)}; got unknown {unknown}, "
                             f"missing {missing}.")
    return tuple(kwargs[n] for n in names)


def _structured_cls() -> type:
    global _STRUCTURED
    if _STRUCTURED is not None:
        return _STRUCTURED
    import torch

    class StructuredModule(torch.nn.Module):
        """Positional, flat view of a module with keyword inputs and/or structured outputs.

        ``forward(*tensors)`` calls ``module(**dict(zip(input_names, tensors)))`` (or
        positionally) and returns the flat output tensors as a tuple; with ``keep`` (indices
        of flat outputs, ``Session(outputs=...)``) only those, in eval mode (in training mode
        a module may return other outputs, which training steps' losses take whole).
        ``module`` is the wrapped module itself (shared, not copied).
        """

        def __init__(self, module: Any, input_names: Sequence[str], keyword: bool,
                     keep: Sequence[int] | None = None) -> None:
            super().__init__()
            self.module = module
            self.input_names = list(input_names)
            self.keyword = keyword
            self.keep = None if keep is None else list(keep)

        def forward(self, *xs: Any) -> tuple[Any, ...]:
            out = (self.module(**dict(zip(self.input_names, xs))) if self.keyword
                   else self.module(*xs))
            flat = flatten_outputs(out)[0]
            if self.keep is not None and not self.training:
                return tuple(flat[i] for i in self.keep)
            return tuple(flat)

    StructuredModule.__module__ = __name__
    StructuredModule.__qualname__ = "StructuredModule"
    _STRUCTURED = StructuredModule
    return StructuredModule


_STRUCTURED: type | None = None


def __getattr__(name: str) -> Any:
    # the nn.Module subclass is built on first use: importing this module stays torch-free
    if name == "StructuredModule":
        return _structured_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def structured_view(model: Any, io: Mapping[str, Any] | None,
                    input_names: Sequence[str]) -> Any:
    """``model`` itself when its I/O is trivial or it already is a view, else a
    :class:`StructuredModule` around it."""
    cls = _structured_cls()
    if is_trivial(io) or isinstance(model, cls):
        return model
    keep = io.get("keep")  # type: ignore[union-attr]
    return cls(model, input_names, bool(io.get("keyword")),  # type: ignore[union-attr]
               None if keep is None else [int(i) for i in keep])
