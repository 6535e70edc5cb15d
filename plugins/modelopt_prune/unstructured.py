"""``prune.unstructured`` (per-layer L1 magnitude) and ``prune.global`` (one magnitude threshold
across layers). Exactly ``round(amount * n)`` weights are zeroed (per layer, or over all the
selected weights for global), written into the weights themselves: no masks, no ``*_orig``
tensors, no forward hooks remain. The step's restore record lists the pruned tensors
(``modelopt_core.sparsity.SPARSE_RECORD``), so every later training step (distillation, QAT,
fine-tuning) keeps their zeros fixed (see :mod:`modelopt_core.training`)."""

from __future__ import annotations

from typing import Any, Literal

import modelopt_core as mo

from .common import amount_in_range, copy_model, noop, prunable_layers, resolve_names


@mo.config
class UnstructuredConfig:
    amount: float = mo.field(0.5, validator=amount_in_range,
                             help="fraction of weights to zero, in [0, 1)")
    layer_types: tuple[Literal["conv", "linear"], ...] = mo.field(
        ("conv", "linear"), help="which layer types to prune")
    ignored_layers: tuple[str, ...] = mo.field((), help="qualified layer names left dense")
    include_bias: bool = mo.field(False, help="also prune biases")


def magnitude_mask_(tensors: list[Any], amount: float) -> int:
    """Zero the ``round(amount * n)`` smallest-magnitude entries over all ``tensors`` together
    (in place); returns how many were zeroed. Ties break by position (stable sort)."""
    import torch

    flat = torch.cat([t.detach().reshape(-1).abs() for t in tensors])
    k = int(round(amount * flat.numel()))
    if k <= 0:
        return 0
    idx = torch.argsort(flat, stable=True)[:k]
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[idx] = False
    off = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.mul_(keep[off:off + n].view_as(t).to(t.dtype))
            off += n
    return k


class _MagnitudeBase(mo.Optimizer):
    Config = UnstructuredConfig
    scope = "local"

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        cfg = self.config
        model = copy_model(artifact)
        mo.check_finite_weights(model, self.name, "pruning")  # NaN would sort as the largest
        layers = prunable_layers(model, cfg.layer_types)
        skip = {id(m) for m in resolve_names(model, cfg.ignored_layers, self.name,
                                             "ignored_layers")}
        layers = {n: m for n, m in layers.items() if id(m) not in skip
                  and getattr(m, "weight", None) is not None}
        if not layers:
            return noop(self, artifact, ctx, f"no {'/'.join(cfg.layer_types)} layers to prune")
        from modelopt_core.sparsity import SPARSE_RECORD, kept_zeros

        earlier = sorted(kept_zeros(model, artifact).masks)  # sparse tensors of earlier steps
        groups: dict[str, list[Any]] = {}
        sparse = set(earlier)
        for n, m in layers.items():
            ts = [m.weight]
            sparse.add(f"{n}.weight")
            if cfg.include_bias and getattr(m, "bias", None) is not None:
                ts.append(m.bias)
                sparse.add(f"{n}.bias")
            groups[n] = ts
        if self.scope == "global":
            zeroed = magnitude_mask_([t for ts in groups.values() for t in ts], cfg.amount)
        else:
            zeroed = sum(magnitude_mask_(ts, cfg.amount) for ts in groups.values())
        total = sum(t.numel() for ts in groups.values() for t in ts)
        per_layer = {n: round(float((m.weight == 0).float().mean()), 4)
                     for n, m in layers.items()}
        notes = [f"{self.scope} magnitude pruning: zeroed {zeroed}/{total} weights "
                 f"({100 * zeroed / max(total, 1):.1f}%) in {len(layers)} layers",
                 "per-layer sparsity: " + ", ".join(f"{n}={s:.2f}" for n, s in per_layer.items()),
                 "unstructured zeros save compute only on sparse kernels; combine with "
                 "prune.structured or compression for real speed/size gains"]
        restore = {SPARSE_RECORD: sorted(sparse)}
        return artifact.evolve(step=self.step(notes=notes, restore=restore), model=model,
                               metadata={"sparsity": zeroed / max(total, 1),
                                         "layer_sparsity": per_layer})


class UnstructuredPrune(_MagnitudeBase):
    """Per-layer L1-magnitude pruning: each layer loses exactly round(amount * n) weights."""

    name = "prune.unstructured"
    stage = "structure"
    scope = "local"


class GlobalPrune(_MagnitudeBase):
    """Global magnitude pruning: one threshold over all selected layers' weights."""

    name = "prune.global"
    stage = "structure"
    scope = "global"
