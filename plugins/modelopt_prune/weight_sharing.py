"""``compress.weight_sharing``: per-layer k-means weight sharing (Deep Compression, stage 2).

Each selected Conv/Linear layer is replaced by a :class:`SharedConv` / :class:`SharedLinear`
holding a float ``codebook`` (n_clusters) and a ``uint8`` ``indices`` buffer (two 4-bit indices
per byte when n_clusters <= 16). The weight is rebuilt from them in ``forward``, so the saved
state dict (safetensors) really holds log2(n) bits per weight plus the codebook. Optional
centroid fine-tuning trains the codebook with the shared training loop: the gradient of each
centroid is the sum of the gradients of the weights sharing it.

The layer classes live in :mod:`modelopt_prune.layers` (they subclass ``nn.Module``, so
importing them imports torch); they are imported on first use and stay importable from here.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs

import modelopt_core as mo

from .common import (check_same_outputs, copy_model, noop, prunable_layers, ignored_ids,
                     run_outputs)
from .low_rank import set_module


def kmeans_1d(values: Any, k: int, iters: int = 30, init: str = "linear") -> tuple[Any, Any]:
    """1-D k-means (Lloyd) on a flat tensor: (centroids sorted ascending, int64 labels).

    ``init="linear"`` spreads centroids evenly between min and max (Deep Compression's best
    choice: large weights keep their own centroids); ``"density"`` uses quantiles. In 1-D the
    nearest centroid is found by bisection on the midpoints, O(n log k) per iteration."""
    import torch

    x = values.detach().reshape(-1).double()
    uniq = torch.unique(x)
    if len(uniq) <= k:  # fewer distinct values than clusters: exact
        c = uniq
        return c.float(), torch.bucketize(x, c).clamp_max(len(c) - 1)
    if init == "linear":
        c = torch.linspace(float(x.min()), float(x.max()), k, dtype=torch.float64)
    else:
        c = torch.quantile(x[:1_000_000], torch.linspace(0, 1, k, dtype=torch.float64))
    for _ in range(iters):
        labels = torch.bucketize(x, (c[1:] + c[:-1]) / 2)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).double()
        new = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        new, _ = torch.sort(new)
        if torch.allclose(new, c, rtol=0, atol=1e-12):
            c = new
            break
        c = new
    labels = torch.bucketize(x, (c[1:] + c[:-1]) / 2)
    return c.float(), labels


def pack_indices(labels: Any, k: int) -> Any:
    """uint8 index buffer: two 4-bit indices per byte when k <= 16, else one per byte."""
    import torch

    lab = labels.reshape(-1).to(torch.uint8)
    if k > 16:
        return lab
    if lab.numel() % 2:
        lab = torch.cat([lab, lab.new_zeros(1)])
    return lab[0::2] | (lab[1::2] << 4)


def unpack_indices(packed: Any, n: int, k: int) -> Any:
    """Inverse of :func:`pack_indices`: int64 labels of length ``n``."""
    import torch

    if k > 16:
        return packed.long()
    p = packed.long()  # plain int64 arithmetic: exports cleanly to ONNX (no uint8 bit ops)
    return torch.stack([p % 16, p // 16], 1).reshape(-1)[:n]


def _make_shared(layer: Any, k: int, iters: int, init: str,
                 saved: dict[str, Any] | None = None) -> Any:
    """A shared copy of ``layer`` by k-means; with ``saved`` (``{"shape", "clusters"}`` from
    the metadata of a saved artifact) an empty one of that shape, for loading weights into."""
    import torch
    from torch import nn

    from .layers import SharedConv, SharedLinear

    if isinstance(layer, nn.Linear):
        class_ = SharedLinear
    elif isinstance(layer, nn.modules.conv._ConvNd) and not layer.transposed:
        class_ = SharedConv
    else:
        return None
    new = class_.__new__(class_)
    nn.Module.__init__(new)
    for attr in ("in_features", "out_features", "in_channels", "out_channels", "kernel_size",
                 "stride", "padding", "dilation", "groups", "padding_mode"):
        if hasattr(layer, attr):
            setattr(new, attr, getattr(layer, attr))
    if isinstance(layer, nn.modules.conv._ConvNd):
        new.ndim = layer.weight.dim() - 2
        new._reversed_padding_repeated_twice = layer._reversed_padding_repeated_twice
    if saved is None:
        new._init_shared(layer.weight.detach(), k, iters, init)
    else:
        shape = tuple(int(d) for d in saved["shape"])
        if isinstance(layer, nn.Linear):
            new.out_features, new.in_features = shape
        else:
            if layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels \
                    and shape[1] == 1:  # a pruned depthwise conv: one group per channel
                new.groups = shape[0]
            new.out_channels, new.in_channels = shape[0], shape[1] * new.groups
        new._set_shared(torch.zeros(int(saved["clusters"]), dtype=layer.weight.dtype),
                        torch.zeros(math.prod(shape), dtype=torch.long), shape)
    new.bias = (nn.Parameter(layer.bias.detach().clone()) if layer.bias is not None else None)
    return new.to(torch.device(layer.weight.device))


@mo.config
class WeightSharingConfig:
    n_clusters: int = mo.field(16, validator=mo.in_range(2, 256),
                               help="clusters (shared values) per layer; <= 16 packs 4-bit")
    init: Literal["linear", "density"] = mo.field("linear", help="k-means initialisation")
    iterations: int = mo.field(30, validator=mo.positive, help="k-means iterations")
    layer_types: tuple[Literal["conv", "linear"], ...] = mo.field(("conv", "linear"))
    ignored_layers: tuple[str, ...] = mo.field((), help="qualified layer names left alone")
    min_weights: int = mo.field(64, validator=mo.in_range(0, 1e12),
                                help="skip layers with fewer weights than this")
    finetune_epochs: int = mo.field(0, validator=mo.in_range(0, 10_000),
                                    help="centroid fine-tuning epochs (0: none; needs train_data)")
    lr: float = mo.field(1e-4, validator=mo.positive, help="centroid fine-tuning learning rate")


class WeightSharing(mo.Optimizer):
    """Per-layer k-means weight sharing: codebook + packed indices, really smaller on disk."""

    name = "compress.weight_sharing"
    stage = "structure"
    Config = WeightSharingConfig

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        cfg = self.config
        model = copy_model(artifact)
        mo.check_finite_weights(model, self.name, "clustering")
        xs = tuple(ctx.example_inputs)
        skip = ignored_ids(model, cfg.ignored_layers, self.name)
        layers = {n: m for n, m in prunable_layers(model, cfg.layer_types).items()
                  if id(m) not in skip and m.weight.numel() >= max(cfg.min_weights, 1)}
        if not layers:
            out = noop(self, artifact, ctx, "no Conv/Linear layers large enough to share")
            step = attrs.evolve(out.lineage[-1], restore={"shared_layers": {}})
            return attrs.evolve(out, lineage=out.lineage[:-1] + (step,))
        ref = run_outputs(model, xs)
        bits = 4 if cfg.n_clusters <= 16 else 8
        before = after = 0
        shared: dict[str, dict[str, Any]] = {}
        for name, layer in ctx.progress(list(layers.items()), len(layers), self.name):
            new = _make_shared(layer, cfg.n_clusters, cfg.iterations, cfg.init)
            if new is None:
                continue
            shared[name] = {"shape": list(new.weight_shape), "clusters": new.n_clusters}
            before += layer.weight.numel() * layer.weight.element_size()
            after += new.indices.numel() + new.codebook.numel() * new.codebook.element_size()
            set_module(model, name, new)
        notes = [f"{len(layers)} layer(s) shared with {cfg.n_clusters} clusters ({bits}-bit "
                 f"indices): weight bytes {before} -> {after} ({before / max(after, 1):.1f}x)"]
        if cfg.finetune_epochs:
            notes.append(self._finetune(model, ctx))
        model.eval()
        check_same_outputs(self.name, ref, run_outputs(model, xs))
        return artifact.evolve(step=self.step(notes=notes, restore={"shared_layers": shared}),
                               model=model,
                               metadata={"weight_sharing_clusters": cfg.n_clusters,
                                         "shared_layers": shared})

    def rebuild(self, model: Any, example_inputs: tuple[Any, ...], metadata: Any,
                restore: Any = None) -> Any:
        """Empty shared layers where this step made them (shapes and cluster counts from the
        step's restore record ``{"shared_layers": ...}``, or ``metadata["shared_layers"]`` for
        artifacts saved before per-step records); codebooks and indices come from the
        weights."""
        if restore and "shared_layers" in restore:
            shared = restore["shared_layers"]
        else:
            shared = metadata.get("shared_layers")
        if shared is None:
            raise mo.ArtifactError(
                f"{self.name}: neither the lineage step nor the artifact's metadata has a "
                "'shared_layers' record (saved by an older version); load its ONNX export "
                "instead.")
        if not isinstance(shared, dict):
            raise mo.ArtifactError(f"{self.name}: the 'shared_layers' record is "
                                   f"{type(shared).__name__}, not a mapping; re-save the "
                                   "artifact.")
        from .layers import _Shared

        for name, saved in shared.items():
            try:
                layer = model.get_submodule(name)
            except AttributeError:
                raise mo.ArtifactError(f"{self.name}: the model has no layer {name!r} to "
                                       "rebuild as a shared layer.") from None
            if isinstance(layer, _Shared) and list(layer.weight_shape) == list(saved["shape"]) \
                    and layer.n_clusters == int(saved["clusters"]):
                continue  # the skeleton is the shared model itself
            new = _make_shared(layer, int(saved["clusters"]), 0, "linear", saved=saved)
            if new is None:
                raise mo.ArtifactError(f"{self.name}: layer {name!r} is "
                                       f"{type(layer).__name__}, not a Conv/Linear layer.")
            set_module(model, name, new)
        return model

    def _finetune(self, model: Any, ctx: mo.Context) -> str:
        from modelopt_core.training import TrainConfig, fit

        from .layers import _Shared

        cfg = self.config
        data = ctx.training_batches(self.name)
        for p in model.parameters():  # only centroids train: indices (assignments) stay fixed
            p.requires_grad_(False)
        cbs = [m.codebook for m in model.modules() if isinstance(m, _Shared)]
        for c in cbs:
            c.requires_grad_(True)
        res = fit(model, data, config=TrainConfig(epochs=cfg.finetune_epochs, lr=cfg.lr),
                  ctx=ctx, params=cbs)
        for p in model.parameters():
            p.requires_grad_(True)
        return f"centroid fine-tuning: {cfg.finetune_epochs} epoch(s), best {res.best_metric}"


def __getattr__(name: str) -> Any:
    # the shared layers subclass nn.Module: imported (with torch) on first use only
    if name in ("SharedConv", "SharedLinear"):
        from . import layers

        return getattr(layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
