"""The user's model as the first artifact: input specs from the example inputs (with their
dynamic axes), output specs and the call/return structure found by calling the model, and the
outputs a user chose to keep."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .artifact import ModelArtifact, Step, TensorSpec
from .errors import FormatError, InputSpecError
from .interfaces import spec_inputs
from .io import flatten_outputs, leaf_names, structured_view

__all__ = ["first_artifact"]


def first_artifact(model: Any, example_inputs: tuple[Any, ...], input_names: Sequence[str] | None,
                   keyword: bool, dynamic_batch: bool,
                   dynamic_axes: Mapping[str, Mapping[int, str]] | None,
                   outputs: Sequence[int | str] | None) -> ModelArtifact:
    """The original artifact of ``model`` (a torch module, wrapped, never changed)."""
    inputs = spec_inputs(example_inputs, input_names, dynamic_batch)
    inputs = _with_dynamic_axes(inputs, dynamic_axes or {})
    names = [s.name for s in inputs]
    specs, tree = _probe_outputs(model, example_inputs, names, keyword, inputs)
    io: dict[str, Any] = {"keyword": keyword, "outputs": tree}
    if outputs is not None:
        keep = _select_outputs(outputs, [o.name for o in specs])
        specs = tuple(specs[i] for i in keep)
        io = {"keyword": keyword, "keep": keep, "outputs": {
            "type": "tuple", "items": [{"type": "tensor"}] * len(keep)}
            if len(keep) > 1 else {"type": "tensor"}}
    return ModelArtifact(
        "torch", structured_view(model, io, names), inputs, specs,
        (Step("original", "source", config={"class": type(model).__qualname__}),), io=io)


def _call(model: Any, xs: Sequence[Any], names: Sequence[str], keyword: bool) -> Any:
    return model(**dict(zip(names, xs))) if keyword else model(*xs)


def _probe_outputs(model: Any, inputs: tuple[Any, ...], names: Sequence[str], keyword: bool,
                   specs: tuple[TensorSpec, ...]) -> tuple[tuple[TensorSpec, ...], dict]:
    """Run a copy of the model once to learn its output specs and structure (dim 0 is the
    symbolic batch when the inputs' is); when inputs have symbolic dims beyond the batch, once
    more with those dims grown by one to learn which output dims follow them."""
    import torch

    probe = copy.deepcopy(model).eval()
    with torch.no_grad():
        try:
            flat, tree = flatten_outputs(_call(probe, inputs, names, keyword),
                                         "Session: model output")
        except FormatError:
            raise
        except Exception as e:
            raise InputSpecError(f"Session: the model failed on example_inputs "
                                 f"{dict(zip(names, [tuple(x.shape) for x in inputs]))}: "
                                 f"{e}") from e
        grown = None
        if any(isinstance(d, str) for s in specs for d in s.shape[1:]):
            xs = [_grow(x, s) for x, s in zip(inputs, specs)]
            try:
                grown = flatten_outputs(_call(probe, xs, names, keyword))[0]
            except Exception as e:
                raise InputSpecError(
                    f"Session: the model failed when the dynamic dims of example_inputs grew by "
                    f"one ({[s.shape for s in specs]}): {e}. Declare only dims that may "
                    "vary.") from e
    batch = bool(specs) and specs[0].shape[:1] == ("batch",)
    outs = []
    for i, (n, o) in enumerate(zip(leaf_names(tree, len(flat)), flat)):
        spec = TensorSpec.from_tensor(n, o, batch)
        if grown is not None and len(grown) == len(flat):
            shape = list(spec.shape)
            for j, (a, b) in enumerate(zip(o.shape, grown[i].shape)):
                if a != b and not isinstance(shape[j], str):
                    shape[j] = _dim_name(a, inputs, specs, j, n)
            spec = attrs.evolve(spec, shape=tuple(shape))
        outs.append(spec)
    return tuple(outs), tree


def _select_outputs(wanted: Sequence[int | str], names: Sequence[str]) -> list[int]:
    """Indices of the flat outputs ``wanted`` names (index or leaf name), in that order."""
    if isinstance(wanted, (str, int)) or not wanted:
        raise InputSpecError(f"Session: outputs must be a non-empty list of output indices or "
                             f"names, e.g. [0] or ['output_0']; the model's outputs are "
                             f"{list(names)}.")
    keep: list[int] = []
    for w in wanted:
        if isinstance(w, bool) or not isinstance(w, (int, str)):
            raise InputSpecError(f"Session: outputs item {w!r} is not an index or a name.")
        i = names.index(w) if isinstance(w, str) and w in names else w
        if not isinstance(i, int) or not -len(names) <= i < len(names):
            raise InputSpecError(f"Session: outputs names {w!r}, which the model does not "
                                 f"return; its outputs are {list(names)} (indices 0.."
                                 f"{len(names) - 1}).")
        keep.append(i % len(names))
    if len(set(keep)) != len(keep):
        raise InputSpecError(f"Session: outputs lists an output twice: {list(wanted)}.")
    return keep


def _grow(x: Any, spec: TensorSpec) -> Any:
    """``x`` with each symbolic dim after the batch one longer (repeating its last slice)."""
    import torch

    for d, s in enumerate(spec.shape):
        if isinstance(s, str) and d > 0:
            x = torch.cat([x, x.narrow(d, x.shape[d] - 1, 1)], dim=d)
    return x


def _dim_name(size: int, inputs: Sequence[Any], specs: Sequence[TensorSpec], j: int,
              out_name: str) -> str:
    """The name of the input dim an output dim follows (same size; the same position first),
    else a name of its own."""
    found = sorted((d != j, name) for x, s in zip(inputs, specs)
                   for d, name in enumerate(s.shape)
                   if d > 0 and isinstance(name, str) and x.shape[d] == size)
    return found[0][1] if found else f"{out_name}_dim{j}"


def _with_dynamic_axes(specs: tuple[TensorSpec, ...],
                       axes: Mapping[str, Mapping[int, str]]) -> tuple[TensorSpec, ...]:
    """Apply ``dynamic_axes`` ({input name: {dim: symbol}}) to the input specs."""
    known = {s.name: s for s in specs}
    unknown = sorted(set(axes) - set(known))
    if unknown:
        raise InputSpecError(f"Session: dynamic_axes names unknown input(s) {unknown}; inputs "
                             f"are {list(known)}.")
    out = []
    for s in specs:
        shape = list(s.shape)
        for d, sym in (axes.get(s.name) or {}).items():
            if not isinstance(d, int) or not -len(shape) <= d < len(shape) or \
                    not isinstance(sym, str) or not sym:
                raise InputSpecError(
                    f"Session: dynamic_axes[{s.name!r}] must map dim indices of its "
                    f"{len(shape)}-D input to non-empty names, e.g. {{1: 'sequence'}}; got "
                    f"{d!r}: {sym!r}.")
            shape[d] = sym
        out.append(attrs.evolve(s, shape=tuple(shape)))
    return tuple(out)
