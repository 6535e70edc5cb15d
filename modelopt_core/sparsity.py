"""Sparsity kept through training: the zeros of unstructured pruning stay exactly zero.

A step that zeroes weights one by one (``prune.unstructured``, ``prune.global``,
``prune.iterative``'s unstructured mode) lists those parameters in its lineage Step's restore
record under :data:`SPARSE_RECORD`. Every step that trains afterwards finds the newest such
record (:func:`kept_zeros`), derives a keep-mask ``param != 0`` from the weights it is about to
train, and trains with the :class:`KeepZeros` callback (``fit(masks=...)`` adds it), which
zeroes the masked entries before training and again after every optimizer step: the zero count
of each listed tensor is exactly the same after training. The training step lists the
parameters in its own restore record (:attr:`KeptZeros.restore`), under the names they have in
its result, so the zeros stay fixed through any later training too. torch is imported lazily.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .errors import ConfigError
from .trainer import Callback

__all__ = ["SPARSE_RECORD", "sparse_param_names", "zero_masks", "apply_masks", "kept_zeros",
           "KeptZeros", "KeepZeros"]

#: key of a lineage Step's restore record listing the parameters whose zeros must stay zero
SPARSE_RECORD = "sparse_params"


def sparse_param_names(artifact: Any) -> list[str]:
    """Parameter names of the newest lineage step of ``artifact`` that records them under
    :data:`SPARSE_RECORD` (each such record is complete: it lists every sparse tensor of that
    step's result); ``[]`` when no step did."""
    for step in reversed(getattr(artifact, "lineage", ()) or ()):
        rec = step.restore.get(SPARSE_RECORD) if isinstance(step.restore, dict) else None
        if isinstance(rec, list):
            return [n for n in rec if isinstance(n, str)]
    return []


def zero_masks(model: Any, names: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``({name in model: keep-mask}, [names not found])``: the keep-mask is ``param != 0``
    of the parameter now (so shapes follow any structured pruning since). A recorded name is
    found as is, or as the one parameter under the same module path with the same leaf name
    (a layer wrapped by a later step: ``fc.weight`` -> ``fc.layer.weight``); a name matching
    none or several (a layer rewritten into several) is returned as not found."""
    params = dict(model.named_parameters())
    masks: dict[str, Any] = {}
    missing: list[str] = []
    for name in dict.fromkeys(names):
        found = name if name in params else None
        if found is None:
            mod, _, leaf = name.rpartition(".")
            near = [n for n in params if n.endswith("." + leaf)
                    and (not mod or n.startswith(mod + "."))]
            found = near[0] if len(near) == 1 else None
        if found is None:
            missing.append(name)
        elif found not in masks:
            masks[found] = params[found].detach() != 0
    return masks, missing


def apply_masks(masks: Any) -> None:
    """Zero, in place, the entries of each ``param`` where its boolean ``keep`` mask is False
    (``masks``: pairs ``(param, keep)``); ``masked_fill`` writes +0.0, even over NaN."""
    import torch

    with torch.no_grad():
        for p, keep in masks:
            p.masked_fill_(~keep, 0)


class KeepZeros(Callback):
    """Trainer callback: the masked-out entries of the named parameters stay exactly zero.

    ``masks`` maps parameter names of the trained model to boolean keep-masks of their shape
    (see :func:`zero_masks`). They are checked and zeroed when training starts and zeroed
    again after every optimizer step (momentum and weight decay included)."""

    def __init__(self, masks: Mapping[str, Any]) -> None:
        self.masks = dict(masks)
        self._pairs: list[tuple[Any, Any]] = []

    def on_train_start(self, trainer: Any) -> None:
        """Resolve the names against the model (typed errors for unknown names or shapes)."""
        params = dict(trainer.model.named_parameters())
        self._pairs = []
        for name, keep in self.masks.items():
            if name not in params:
                raise ConfigError(f"fit: masks names parameter {name!r}, which the model does "
                                  f"not have (some: {list(params)[:8]}).")
            p = params[name]
            if tuple(keep.shape) != tuple(p.shape):
                raise ConfigError(f"fit: the mask of {name!r} has shape {tuple(keep.shape)}, "
                                  f"the parameter {tuple(p.shape)}.")
            self._pairs.append((p, keep.to(device=p.device, dtype=bool)))
        apply_masks(self._pairs)

    def on_step_end(self, trainer: Any) -> None:
        apply_masks(self._pairs)


@attrs.define(eq=False)
class KeptZeros:
    """What a training step needs to keep earlier unstructured pruning: the masks for
    :func:`~modelopt_core.training.fit` (or a :class:`KeepZeros` callback), the restore record
    for its own lineage Step, and a note."""

    masks: dict[str, Any]
    missing: list[str]
    source: str = ""

    @property
    def restore(self) -> dict[str, Any]:
        """``{SPARSE_RECORD: names}`` for ``Component.step(restore=...)`` ({} when none)."""
        return {SPARSE_RECORD: sorted(self.masks)} if self.masks else {}

    @property
    def callback(self) -> KeepZeros:
        """A :class:`KeepZeros` callback for these masks."""
        return KeepZeros(self.masks)

    @property
    def notes(self) -> list[str]:
        """Lineage notes: what was kept and what could no longer be found."""
        out = []
        if self.masks:
            zeros = sum(int((~m).sum()) for m in self.masks.values())
            total = sum(m.numel() for m in self.masks.values())
            out.append(f"kept the {zeros} zero(s) of {len(self.masks)} pruned tensor(s) "
                       f"({zeros / max(total, 1):.1%} of their weights, from {self.source}) "
                       "fixed through training")
        if self.missing:
            out.append(f"{len(self.missing)} pruned tensor(s) recorded by {self.source} are no "
                       f"longer in the model under their names (a later step rewrote them); "
                       f"their zeros are not enforced: {self.missing[:6]}")
        return out

    def apply(self, model: Any) -> None:
        """Zero the masked-out entries of ``model``'s parameters of the same names."""
        params = dict(model.named_parameters())
        apply_masks([(params[n], m.to(params[n].device)) for n, m in self.masks.items()
                     if n in params and tuple(params[n].shape) == tuple(m.shape)])


def kept_zeros(model: Any, artifact: Any) -> KeptZeros:
    """The zeros of ``artifact``'s unstructured pruning, as masks over ``model`` (the copy a
    training step is about to train; see :func:`sparse_param_names`, :func:`zero_masks`)."""
    names = sparse_param_names(artifact)
    if not names:
        return KeptZeros({}, [])
    source = next((s.component for s in reversed(artifact.lineage)
                   if isinstance(s.restore, dict) and SPARSE_RECORD in s.restore), "")
    masks, missing = zero_masks(model, names)
    return KeptZeros(masks, missing, source)
