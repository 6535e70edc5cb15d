"""Request checking, bucketing, padding and output splitting for the dynamic batcher."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

import modelopt_core as mo

from .errors import ServeError

__all__ = ["RequestChecker", "pad_rows", "split_rows", "target_rows"]


class RequestChecker:
    """Checks one request's flat inputs against the artifact's input specs, with the batch
    dim (dim 0) free up to the batch limit: the runner's own ``check_inputs`` messages on a
    copy of the specs whose dim 0 is symbolic. ``fixed`` is the artifact's fixed batch size
    (its dim 0 is a number), or None when the batch dim is dynamic."""

    def __init__(self, artifact: mo.ModelArtifact) -> None:
        specs = artifact.inputs
        if any(not s.shape for s in specs):
            raise ServeError(f"batcher for {artifact.name!r}: input(s) "
                             f"{[s.name for s in specs if not s.shape]} have no dims, so there "
                             "is no batch dim to group requests on; call the runner directly.")
        fixed = {s.shape[0] for s in specs if isinstance(s.shape[0], int)}
        if fixed and any(isinstance(s.shape[0], str) for s in specs):
            raise ServeError(f"batcher for {artifact.name!r}: some inputs have a dynamic batch "
                             "dim and others a fixed dim 0 "
                             f"({[(s.name, s.shape[0]) for s in specs]}), so requests cannot be "
                             "stacked on dim 0; call the runner directly.")
        if len(fixed) > 1:
            raise ServeError(f"batcher for {artifact.name!r}: the inputs' fixed batch sizes "
                             f"differ ({sorted(fixed)}); export with one batch size or a "
                             "dynamic batch dim.")
        self.fixed: int | None = fixed.pop() if fixed else None
        self.name = artifact.name
        relaxed = tuple(attrs.evolve(s, shape=("batch",) + tuple(s.shape[1:])) for s in specs)
        self._runner = mo.Runner(attrs.evolve(artifact, inputs=relaxed))
        self.n_inputs = len(specs)

    def rows(self, inputs: Sequence[Any]) -> int:
        """Check ``inputs``; return its number of rows (the shared dim 0).
        :class:`~modelopt_core.InputSpecError` when they do not fit the artifact."""
        self._runner.check_inputs(inputs)
        if not inputs:
            raise mo.InputSpecError(f"batcher for {self.name!r}: a request needs at least one "
                                    "input tensor.")
        for x in inputs:
            if not hasattr(x, "dim") or x.dim() == 0:
                raise mo.InputSpecError(f"batcher for {self.name!r}: every input needs a "
                                        "leading batch dim (shape (1, ...) for one item).")
        n = int(inputs[0].shape[0])
        if any(int(x.shape[0]) != n for x in inputs):
            raise mo.InputSpecError(f"batcher for {self.name!r}: the inputs' batch dims differ "
                                    f"({[int(x.shape[0]) for x in inputs]}); give every input "
                                    "the same number of rows.")
        if n < 1:
            raise mo.InputSpecError(f"batcher for {self.name!r}: a request with 0 rows; give "
                                    "at least one row (shape (1, ...)).")
        if self.fixed is not None and n > self.fixed:
            raise mo.InputSpecError(f"batcher for {self.name!r}: {n} rows, but the model takes "
                                    f"a fixed batch of {self.fixed}; send at most {self.fixed} "
                                    "rows per request.")
        return n


def bucket_of(inputs: Sequence[Any]) -> tuple[Any, ...]:
    """Requests with equal buckets (non-batch shapes and dtypes) can be concatenated."""
    return tuple((tuple(x.shape[1:]), x.dtype) for x in inputs)


def target_rows(rows: int, fixed: int | None, preferred: Sequence[int]) -> int:
    """Rows a batch of ``rows`` is padded to: the fixed batch size, else the smallest
    preferred size that holds it, else ``rows``."""
    if fixed is not None:
        return fixed
    for p in preferred:  # sorted ascending
        if p >= rows:
            return p
    return rows


def concat_rows(requests: Sequence[Sequence[Any]]) -> list[Any]:
    """Concatenate several requests' flat inputs on dim 0."""
    import torch

    if len(requests) == 1:
        return list(requests[0])
    return [torch.cat([r[i] for r in requests]) for i in range(len(requests[0]))]


def pad_rows(inputs: Sequence[Any], target: int) -> list[Any]:
    """Pad every input to ``target`` rows by repeating its last row."""
    import torch

    n = int(inputs[0].shape[0])
    if target <= n:
        return list(inputs)
    return [torch.cat([x, x[-1:].expand(target - n, *x.shape[1:])]) for x in inputs]


def split_rows(outputs: Sequence[Any], counts: Sequence[int], padded: int
               ) -> list[list[Any]] | None:
    """Per-request flat outputs (row slices) of a batch's outputs, or None when an output has
    no batch dim of ``padded`` rows (the model mixes rows: run the requests one by one)."""
    if len(counts) == 1 and sum(counts) == padded:
        return [list(outputs)]
    if any(o.dim() == 0 or int(o.shape[0]) != padded for o in outputs):
        return None
    out, off = [], 0
    for n in counts:
        out.append([o[off:off + n].clone() for o in outputs])
        off += n
    return out
