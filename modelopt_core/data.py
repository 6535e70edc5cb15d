"""Validation of session data (``calibration_data``, ``train_data``) against the model's inputs.

Every check raises :class:`~modelopt_core.errors.DataError` naming the field, the batch index
and what to do. Batches are checked against the session's input specs (``TensorSpec``: string
dims such as ``"batch"`` are free, int dims must match): number of inputs, type, rank, fixed
dims, dtype, and NaN/Inf. The checks are cheap (no forward pass), so training data is checked
lazily, batch by batch, as the training loop draws it.

numpy arrays are accepted and converted with ``torch.from_numpy`` (dtype kept, no copy when
possible); the caller's ``warn`` is told once. The dtype check still applies after conversion,
so a float64 array for a float32 model is refused with the cast to use.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from .errors import DataError

__all__ = ["check_iterable", "check_batch", "check_train_item", "check_train_list",
           "check_not_constant", "prepare_train_data", "is_one_shot", "warn_once",
           "ONE_SHOT_HINT"]

#: appended to errors about a one-shot iterator (a generator) that is empty when read
ONE_SHOT_HINT = ("{field} is a one-shot iterator, already used up by an earlier step (or empty "
                 "from the start): pass a list or a DataLoader, which can be read again.")

Warn = Callable[[str], None]


def as_input_tuple(item: Any, names: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Normalise one calibration item (a tensor, a tuple of tensors, or a dict) to a tuple.

    A dict follows ``names`` (the model's input names) when they are given and its keys are
    exactly those names, whatever its own order; else its insertion order."""
    if isinstance(item, Mapping):
        if names and set(item) == set(names):
            return tuple(item[n] for n in names)
        return tuple(item.values())
    if isinstance(item, (tuple, list)):
        return tuple(item)
    return (item,)


def is_one_shot(data: Any) -> bool:
    """True for iterators (generators, ``iter(list)``), which can be read only once.

    Decided from the type, without calling ``iter()`` (which would start DataLoader workers).
    """
    return isinstance(data, Iterator)


def check_iterable(data: Any, field: str, who: str, specs: Sequence[Any] = ()) -> None:
    """:class:`DataError` when ``data`` cannot serve as ``field``: not iterable, a string, a
    mapping (iterating it yields keys) or one tensor shaped like a single batch (iterating it
    yields samples without the batch dimension)."""
    kind = type(data).__name__
    if isinstance(data, (str, bytes)) or not (isinstance(data, Iterable)
                                              or hasattr(data, "__getitem__")):
        raise DataError(f"{who}: {field} must be an iterable of batches (a list, a DataLoader "
                        f"or a generator), got a {kind}; wrap a single batch in a list: [batch].")
    if isinstance(data, Mapping):
        raise DataError(f"{who}: {field} is a {kind}; iterating it yields its keys, not batches. "
                        "Pass a list of batches, e.g. [{'input': x}].")
    shape = getattr(data, "shape", None)
    if shape is not None and len(specs) == 1 and len(shape) == len(specs[0].shape):
        raise DataError(f"{who}: {field} is one {kind} shaped like a batch {tuple(shape)}; "
                        "iterating it would yield single samples without the batch dimension. "
                        "Pass a list of batches ([x]) or a DataLoader.")


def check_batch(item: Any, specs: Sequence[Any], field: str, index: int, who: str,
                warn: Warn | None = None) -> tuple[Any, ...]:
    """Validate one batch of model inputs; return it as a tuple of tensors.

    ``item`` is a tensor, a tuple/list of tensors or a dict (see ``as_input_tuple``);
    ``specs`` are the model's input ``TensorSpec``\\ s (empty: only NaN/Inf is checked).
    numpy arrays are converted (``warn`` is called with a note). Raises :class:`DataError`
    naming ``field``, the batch ``index`` and the input.
    """
    where = f"{who}: {field} batch {index}"
    if item is None:
        raise DataError(f"{where} is None; every batch must hold the model's input tensor(s).")
    xs = as_input_tuple(item, [s.name for s in specs])
    if not xs:
        raise DataError(f"{where} is empty; every batch must hold the model's input tensor(s).")
    if specs and len(xs) != len(specs):
        raise DataError(f"{where} holds {len(xs)} input(s) but the model takes {len(specs)} "
                        f"({[s.name for s in specs]}); give one tensor per model input, in order.")
    out = []
    for i, x in enumerate(xs):
        spec = specs[i] if specs else None
        label = f"{where}, input {spec.name if spec else i!r}"
        x = _as_tensor(x, label, field, warn, strict=spec is not None)
        if spec is not None:
            _check_spec(x, spec, label)
        _check_finite(x, label)
        out.append(x)
    return tuple(out)


def split_targets(item: Any, specs: Sequence[Any]) -> tuple[Any, bool]:
    """``(inputs, True)`` when a calibration item is an ``(inputs, targets)`` pair as a
    training loader yields it (the model's inputs first, then labels that do not fit the
    model's next input), else ``(item, False)``. Decided from the specs: a one-input model
    given two tensors of which the second does not fit its input spec (labels), or a pair
    whose first element is itself a tuple/list/dict of inputs."""
    import torch

    if not (isinstance(item, (tuple, list)) and len(item) == 2 and specs):
        return item, False
    first, second = item
    if isinstance(first, (tuple, list, Mapping)) and len(specs) != 2:
        return first, True
    if len(specs) == 1 and isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) \
            and not specs[0].matches(tuple(second.shape)):  # two inputs stay a mistake
        return first, True
    return item, False


def check_train_item(item: Any, specs: Sequence[Any], index: int, who: str,
                     warn: Warn | None = None) -> tuple[tuple[Any, ...], Any]:
    """Validate one ``train_data`` item, ``(inputs, targets)`` or ``{"inputs", "targets"}``;
    return ``(input tuple, targets)`` with numpy arrays converted to tensors."""
    where = f"{who}: train_data batch {index}"
    if isinstance(item, Mapping) and "inputs" in item:
        inputs, targets = item["inputs"], item.get("targets")
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        inputs, targets = item
    else:
        raise DataError(f"{where} is not an (inputs, targets) pair: item {index} is a "
                        f"{type(item).__name__}. Yield (inputs, targets) tuples or dicts with "
                        "'inputs' and 'targets' keys.")
    xs = check_batch(inputs, specs, "train_data", index, who, warn)
    if targets is not None:
        targets = _as_tensor(targets, f"{where}, targets", "train_data", warn, strict=False)
        _check_finite(targets, f"{where}, targets")
    return xs, targets


def prepare_train_data(data: Any, specs: Sequence[Any], who: str,
                       warn: Warn | None = None) -> Iterable[Any]:
    """``train_data`` checked up front as far as is cheap, for a component that trains.

    A list/tuple is checked item by item (see :func:`check_train_list`); a one-shot iterator
    has its first item drawn and checked (an empty one gets the one-shot hint) and is returned
    as an iterator over all items; other iterables (DataLoaders) are returned as they are and
    checked batch by batch as :func:`~modelopt_core.training.fit` draws them.
    """
    check_iterable(data, "train_data", who)
    if isinstance(data, (list, tuple)):
        return check_train_list(data, specs, who, warn)
    if is_one_shot(data):
        first = next(data, _END)
        if first is _END:
            raise DataError(f"{who}: " + ONE_SHOT_HINT.format(field="train_data"))
        return itertools.chain([check_train_item(first, specs, 0, who, warn)], data)
    return data


def check_train_list(data: Sequence[Any], specs: Sequence[Any], who: str,
                     warn: Warn | None = None) -> Sequence[Any]:
    """Check every item of an in-memory ``train_data`` (see :func:`check_train_item`).

    Returns ``data`` itself when no item needed converting (so list subclasses that load
    lazily in ``__getitem__`` keep working), else a new list of ``(inputs, targets)`` pairs.
    """
    out = [check_train_item(b, specs, i, who, warn) for i, b in enumerate(data)]
    return data if all(_same(b, c) for b, c in zip(data, out)) else out


def check_not_constant(batches: Sequence[Sequence[Any]], who: str,
                       field: str = "calibration_data", require_float: bool = True) -> None:
    """:class:`DataError` when the batches' floating-point values are all one value
    (activation ranges and quantization scales cannot be computed from such data), or, with
    ``require_float``, when they hold no floating-point values at all (models taking only
    integer inputs, e.g. token ids, pass ``require_float=False``)."""
    import torch

    lo, hi = float("inf"), float("-inf")
    for b in batches:
        for x in b:
            if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel():
                x = x[torch.isfinite(x)]
                if x.numel():
                    lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    if lo == float("inf"):
        if not require_float:
            return
        raise DataError(f"{who}: {field} holds no floating-point tensors.")
    if not (lo < hi):
        raise DataError(
            f"{who}: {field} is constant (every value is {lo:g}); activation ranges and scales "
            "cannot be computed from it. Give real, varied input samples.")


def warn_once(warn: Warn | None) -> Warn | None:
    """``warn`` that passes each distinct message on only the first time (``None`` stays)."""
    if warn is None:
        return None
    seen: set[str] = set()

    def once(message: str) -> None:
        if message not in seen:
            seen.add(message)
            warn(message)
    return once


_END = object()


def _same(item: Any, checked: tuple[tuple[Any, ...], Any]) -> bool:
    """True when ``checked`` holds the very objects of the ``(inputs, targets)`` ``item``."""
    if not (isinstance(item, (tuple, list)) and len(item) == 2) or item[1] is not checked[1]:
        return False
    xs = as_input_tuple(item[0])
    return len(xs) == len(checked[0]) and all(a is b for a, b in zip(xs, checked[0]))


def _as_tensor(x: Any, label: str, field: str, warn: Warn | None, strict: bool) -> Any:
    import numpy as np
    import torch

    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biufc":
            raise DataError(f"{label}: a numpy array of dtype {x.dtype} cannot be a model "
                            "input; give numeric arrays or torch tensors.")
        a = np.ascontiguousarray(x)
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
        if warn is not None:
            warn(f"{field}: numpy arrays were converted to torch tensors (torch.from_numpy, "
                 "dtype kept); pass tensors to skip the conversion.")
        return t
    if strict:
        raise DataError(f"{label}: expected a torch.Tensor, got {type(x).__name__}; convert "
                        "the data to tensors (torch.as_tensor) or use a torch DataLoader.")
    return x


def _check_spec(x: Any, spec: Any, label: str) -> None:
    import torch

    want = "[" + ", ".join(map(str, spec.shape)) + "]"
    got = tuple(x.shape)
    if x.dim() != len(spec.shape):
        hint = (" Add the batch dimension (x.unsqueeze(0)) or batch the samples."
                if x.dim() == len(spec.shape) - 1 else " Reshape it like the example inputs.")
        raise DataError(f"{label}: shape {got} has rank {x.dim()} but the model takes rank "
                        f"{len(spec.shape)} {want}.{hint}")
    for d, (s, n) in enumerate(zip(spec.shape, got)):
        if not isinstance(s, str) and s != n:
            raise DataError(f"{label}: shape {got} does not match the model's input {want}: "
                            f"dim {d} is {n}, expected {s} (wrong channels or size?). Give "
                            "batches shaped like the example inputs (named dims may vary).")
    if x.numel() == 0:
        raise DataError(f"{label}: shape {got} holds no values; drop empty batches.")
    dtype = getattr(torch, str(spec.dtype), None)
    if isinstance(dtype, torch.dtype) and x.dtype != dtype:
        raise DataError(f"{label}: dtype {str(x.dtype).replace('torch.', '')} but the model "
                        f"takes {spec.dtype}; cast the data (x.to(torch.{spec.dtype}), or "
                        f"a.astype(numpy.{spec.dtype}) for numpy arrays).")


def _check_finite(x: Any, label: str) -> None:
    import torch

    if not isinstance(x, torch.Tensor) or not (x.is_floating_point() or x.is_complex()):
        return
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise DataError(f"{label} holds NaN/Inf ({int(bad.sum())} of {x.numel()} values, "
                        f"first at index {first}); clean the data (drop the batch, or "
                        "torch.nan_to_num) before passing it.")
