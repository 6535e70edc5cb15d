"""Model inputs and labels read from NumPy files: the data of the no-code entry
(``modelopt optimize --model ... --calibration ... --eval ...``, see :mod:`.nocode`).

``--calibration`` is one of:

- ``data.npz``: one array per model input, named by the input's name (a single-input model
  may also save its one array unnamed, ``np.savez("calib.npz", x)``); the leading dim
  counts samples.
- a folder of ``.npy`` files (single-input models), read in name order: a file of the input's
  rank holds several samples (leading dim), a file of one dim less holds one sample. For a
  ``module:callable`` model, whose input rank is known only from the data, every file holds
  several samples (save one sample with a leading dim of 1).
- a folder of ``.npz`` files, each like ``data.npz`` (several samples per input), for models
  with several inputs. A capture folder (``modelopt serve --capture DIR``) is one; its own
  flag, ``--calibration-from DIR`` (:mod:`.captured`), reads it through its manifest.

``--eval`` is ``eval.npz`` (the inputs as above plus ``labels``: one integer class per sample)
or ``labels.npy`` (one integer class per calibration sample: the last quarter of the
calibration batches is then held out to evaluate on, not calibrated on).

Checked against the model's input specs, each problem a :class:`DataError` naming the file
and array: an unknown or missing input name, the rank, a fixed dim, the dtype kind (a float
input takes float arrays, cast to its dtype; an integer input integer arrays), NaN/Inf, no
samples, inputs of different sample counts; labels that are not integers >= 0, or not one
per sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifact import TensorSpec
from .errors import DataError

__all__ = ["LABELS", "batch_samples", "read_labels", "read_samples"]

#: the array of ``eval.npz`` holding the labels
LABELS = "labels"


def read_samples(path: str | Path, specs: tuple[TensorSpec, ...] | None,
                 field: str = "--calibration", labels: bool = False
                 ) -> tuple[dict[str, Any], Any]:
    """(input name -> array with samples first, in the model's input order; the ``labels``
    array or None) from ``path`` (see the module doc). ``specs``: the model's input specs, or
    None when unknown (a ``module:callable`` model: the arrays define the inputs).
    ``labels``: the file must hold a ``labels`` array too (``--eval eval.npz``)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{field} {p}: no such file or folder.")
    if p.is_dir():
        arrays, found = _read_folder(p, specs, field)
    elif p.suffix == ".npz":
        arrays, found = _read_npz(p, specs, field, labels)
    else:
        raise DataError(f"{field} {p}: expected a .npz file or a folder of .npy/.npz files"
                        + (" (labels alone, labels.npy, go with --eval)" if p.suffix == ".npy"
                           and field == "--calibration" else "") + ".")
    if labels and found is None:
        raise DataError(f"{field} {p}: no {LABELS!r} array: save the inputs and their labels "
                        f"together, np.savez(path, {_names_hint(specs)}, {LABELS}=y).")
    out = {name: _checked(p, name, a, _spec_of(specs, name), field)
           for name, a in arrays.items()}
    counts = {name: a.shape[0] for name, a in out.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"{field} {p}: the inputs hold different numbers of samples {counts}; "
                        "each needs one row per sample.")
    if found is not None:
        found = check_labels(found, next(iter(counts.values())), f"{field} {p}: {LABELS!r}")
    return out, found


def read_labels(path: str | Path, count: int, field: str = "--eval") -> Any:
    """The integer labels of ``labels.npy``, one per each of ``count`` samples."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{field} {p}: no such file.")
    return check_labels(_load(p, field), count, f"{field} {p}")


def check_labels(y: Any, count: int, where: str) -> Any:
    """``y`` as int64 class indices, one per each of ``count`` samples."""
    import numpy as np

    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integer class indices, got dtype {y.dtype} "
                        "(save them with .astype('int64')).")
    if y.ndim != 1 or y.shape[0] != count:
        raise DataError(f"{where}: expected one label per sample, shape ({count},), got "
                        f"{tuple(y.shape)}.")
    if count and int(y.min()) < 0:
        raise DataError(f"{where}: labels must be >= 0 (class indices), got {int(y.min())}.")
    return y.astype(np.int64)


def batch_samples(arrays: dict[str, Any], size: int, keep_partial: bool) -> list[tuple[Any, ...]]:
    """The samples as batches of ``size`` rows (tuples of torch tensors, in input order); the
    last, smaller batch is kept when ``keep_partial`` (a model with a fixed batch size cannot
    take it)."""
    import torch

    n = next(iter(arrays.values())).shape[0]
    ends = range(size, n + (size if keep_partial else 1), size)
    return [tuple(torch.from_numpy(a[e - size:min(e, n)]) for a in arrays.values())
            for e in ends if e - size < n]


def _names_hint(specs: tuple[TensorSpec, ...] | None) -> str:
    names = [s.name for s in specs or ()] or ["input"]
    return ", ".join(f"{n}=x" if n.isidentifier() else f"**{{{n!r}: x}}" for n in names)


def _spec_of(specs: tuple[TensorSpec, ...] | None, name: str) -> TensorSpec | None:
    return next((s for s in specs or () if s.name == name), None)


def _load(p: Path, field: str) -> Any:
    """An array or an npz archive, loaded without pickles (nothing in the file runs)."""
    import numpy as np

    try:
        got = np.load(p, allow_pickle=False)
        if hasattr(got, "files"):  # an NpzFile: read every array now, then close it
            with got:
                return {k: got[k] for k in got.files}
        return got
    except Exception as e:  # ValueError (pickled objects), OSError, zipfile's errors...
        raise DataError(f"{field} {p}: not a readable .npy/.npz file of numeric arrays "
                        f"({type(e).__name__}: {str(e)[:200]}); save them with np.save / "
                        "np.savez (pickled objects are refused: nothing in the file "
                        "runs).") from e


def _read_npz(p: Path, specs: tuple[TensorSpec, ...] | None, field: str,
              labels: bool) -> tuple[dict[str, Any], Any]:
    """The input arrays of one ``.npz`` in the model's input order, and its labels."""
    got = _load(p, field)
    found = got.pop(LABELS, None) if labels else None
    if not got:
        raise DataError(f"{field} {p}: holds no input arrays" + (
            f" (only {LABELS!r})" if found is not None else "") + ".")
    if specs is None:
        return got, found
    names = [s.name for s in specs]
    key = next(iter(got))
    if len(specs) == 1 and len(got) == 1 and key.startswith("arr_"):  # np.savez(path, x)
        return {names[0]: got[key]}, found
    unknown, missing = sorted(set(got) - set(names)), [n for n in names if n not in got]
    if unknown or missing:
        raise DataError(
            f"{field} {p}: arrays {sorted(got)} do not name the model's inputs {names}"
            + (f": unknown {unknown}" if unknown else "")
            + (f", missing {missing}" if missing else "")
            + f". Save one array per input under its name: np.savez(path, {_names_hint(specs)})"
            + (f" (and {LABELS}=y)" if labels else "") + ".")
    return {n: got[n] for n in names}, found


def _read_folder(p: Path, specs: tuple[TensorSpec, ...] | None,
                 field: str) -> tuple[dict[str, Any], Any]:
    """The samples of a folder of ``.npy`` (one input) or ``.npz`` files, concatenated."""
    import numpy as np

    files = sorted(f for f in p.iterdir() if f.suffix in (".npy", ".npz") and f.is_file())
    kinds = {f.suffix for f in files}
    if not files:
        raise DataError(f"{field} {p}: the folder holds no .npy or .npz files.")
    if len(kinds) > 1:
        raise DataError(f"{field} {p}: mixes .npy and .npz files; use .npy files for a "
                        "single-input model, .npz files (one array per input) for several.")
    parts: dict[str, list[Any]] = {}
    for f in files:
        if f.suffix == ".npz":
            got = _read_npz(f, specs, field, False)[0]
        else:
            if specs is not None and len(specs) != 1:
                raise DataError(f"{field} {f}: the model has {len(specs)} inputs "
                                f"{[s.name for s in specs]}; a .npy file holds one: use .npz "
                                "files, one array per input.")
            a = _load(f, field)
            rank = len(specs[0].shape) if specs else None
            if rank is not None and a.ndim == rank - 1:
                a = a[None]  # one sample
            got = {specs[0].name if specs else "input": a}
        for name, a in got.items():
            _checked(f, name, a, _spec_of(specs, name), field)  # names the file at fault
            parts.setdefault(name, []).append(a)
    try:
        return {n: np.concatenate(v) for n, v in parts.items()}, None
    except ValueError as e:
        raise DataError(f"{field} {p}: the files' samples differ in shape ({e}); every sample "
                        "must have the same shape (pad variable-length inputs).") from e


def _checked(p: Path, name: str, a: Any, spec: TensorSpec | None, field: str) -> Any:
    """``a`` checked against ``spec`` (rank, fixed dims, dtype kind, finite, not empty) and
    cast to its dtype; without a spec, float arrays become float32."""
    import numpy as np

    where = f"{field} {p}: array {name!r}"
    if a.ndim == 0 or a.shape[0] == 0:
        raise DataError(f"{where} holds no samples (shape {tuple(a.shape)}); the leading dim "
                        "counts samples.")
    want = np.dtype(spec.dtype) if spec is not None and _numpy_dtype(spec.dtype) else None
    if spec is not None:
        if a.ndim != len(spec.shape):
            raise DataError(f"{where}: shape {tuple(a.shape)} has rank {a.ndim}, the model's "
                            f"input {name!r} is {list(spec.shape)} (rank {len(spec.shape)}, "
                            "samples first).")
        bad = [(j, d, s) for j, (d, s) in enumerate(zip(a.shape, spec.shape))
               if j > 0 and isinstance(s, int) and d != s]
        if bad:
            raise DataError(f"{where}: shape {tuple(a.shape)} does not fit the model's input "
                            f"{list(spec.shape)} (dim {bad[0][0]} is {bad[0][1]}, the model "
                            f"takes {bad[0][2]}).")
    kind = a.dtype.kind
    wrong = kind not in "fiub" or want is not None and not (
        (kind == "f") == (want.kind == "f") and (kind == "b") == (want.kind == "b"))
    if wrong:
        raise DataError(f"{where}: dtype {a.dtype}, but the model's input takes "
                        f"{want if want is not None else 'numbers'}"
                        + (f" (save it with .astype('{want}'), scaled as the model expects)"
                           if want is not None else "") + ".")
    if kind == "f" and not np.isfinite(a).all():
        bad_n = int((~np.isfinite(a)).sum())
        raise DataError(f"{where}: {bad_n} NaN/Inf value(s); calibration and evaluation data "
                        "must be finite.")
    if want is not None:
        return np.ascontiguousarray(a.astype(want, copy=False))
    return np.ascontiguousarray(a.astype(np.float32, copy=False) if kind == "f" else a)


def _numpy_dtype(name: str) -> bool:
    import numpy as np

    try:
        np.dtype(name)
        return True
    except TypeError:
        return False
