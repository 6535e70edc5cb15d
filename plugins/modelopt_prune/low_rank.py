"""``compress.low_rank``: truncated-SVD factorization of Linear and Conv layers.

Linear (out, in) -> Linear(in, r, no bias) then Linear(r, out, bias). Conv with kernel K, stride,
padding, dilation and groups g -> Conv(in, g*r, K, same stride/padding/dilation, groups=g, no
bias) then a 1x1 Conv(g*r, out, groups=g, bias): each group's (out/g, in/g*K) matrix is
factorized separately, so the pair computes exactly the rank-r approximation of the layer.
The rank comes from an explicit value, a retained-energy fraction, or a target parameter
reduction; layers where the factorization would not save parameters are left alone.
"""

from __future__ import annotations

from typing import Any, Literal

import modelopt_core as mo

from .common import (check_same_outputs, copy_model, count_macs_params, format_delta, noop,
                     prunable_layers, ignored_ids, run_outputs)


@mo.config
class LowRankConfig:
    rank: int | None = mo.field(None, validator=mo.positive,
                                help="explicit rank per layer (per group for grouped convs)")
    energy: float | None = mo.field(None, validator=mo.in_range(0.0, 1.0, lo_open=True),
                                    help="keep the smallest rank retaining this fraction of "
                                         "the squared singular values")
    param_reduction: float | None = mo.field(
        None, validator=mo.in_range(0.0, 1.0, lo_open=True, hi_open=True),
        help="rank so each factorized layer has at most (1 - this) of its parameters")
    layer_types: tuple[Literal["conv", "linear"], ...] = mo.field(("conv", "linear"))
    ignored_layers: tuple[str, ...] = mo.field((), help="qualified layer names left alone")
    keep_output_layers: bool = mo.field(False, help="never factorize the output layers")

    def __attrs_post_init__(self) -> None:
        given = [k for k in ("rank", "energy", "param_reduction") if getattr(self, k) is not None]
        if len(given) != 1:
            raise mo.ConfigError("compress.low_rank: give exactly one of rank, energy or "
                                 f"param_reduction (got {given or 'none'}).")


def layer_matrices(layer: Any) -> list[Any]:
    """The matrices factorized for a layer: one (out, in) for Linear, one (out/g, in/g*K) per
    group for Conv."""
    w = layer.weight.detach()
    if w.dim() == 2:
        return [w]
    g = layer.groups
    return list(w.reshape(w.shape[0], -1).chunk(g, dim=0))


def choose_rank(s: Any, m: int, n: int, *, rank: int | None = None, energy: float | None = None,
                param_reduction: float | None = None) -> int:
    """Rank for an m x n matrix with singular values ``s`` (descending)."""
    import torch

    full = len(s)
    if rank is not None:
        return max(1, min(rank, full))
    if energy is not None:
        e = torch.cumsum(s.double() ** 2, 0)
        total = float(e[-1])
        if total == 0:
            return 1
        return max(1, min(full, int(torch.searchsorted(e / total, energy - 1e-12)) + 1))
    budget = (1.0 - float(param_reduction)) * m * n
    return max(1, min(full, int(budget // (m + n))))


def svd_factors(mat: Any, r: int, svd: tuple[Any, Any, Any] | None = None) -> tuple[Any, Any]:
    """(A, B) with A @ B the best rank-r approximation of ``mat``; A: (m, r), B: (r, n), the
    singular values split evenly (sqrt) between the two. ``svd``: a precomputed (U, S, Vh)."""
    import torch

    u, s, vh = svd if svd is not None else torch.linalg.svd(mat.double(), full_matrices=False)
    root = s[:r].sqrt()
    return (u[:, :r] * root).to(mat.dtype), (root[:, None] * vh[:r]).to(mat.dtype)


def factorize(layer: Any, r: int, svds: list[Any] | None = None) -> Any:
    """A two-layer module computing the rank-``r`` approximation of ``layer``."""
    import torch
    from torch import nn

    mats = layer_matrices(layer)
    svds = svds or [None] * len(mats)
    fac = [svd_factors(m, r, d) for m, d in zip(mats, svds)]
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        a, b = fac[0]
        first, second = nn.Linear(layer.in_features, r, bias=False), nn.Linear(r,
                                                                                layer.out_features,
                                                                                bias=bias)
        first.weight.data.copy_(b)
        second.weight.data.copy_(a)
    else:
        g = layer.groups
        conv = type(layer)
        k = layer.kernel_size
        first = conv(layer.in_channels, g * r, k, stride=layer.stride, padding=layer.padding,
                     dilation=layer.dilation, groups=g, bias=False,
                     padding_mode=layer.padding_mode)
        second = conv(g * r, layer.out_channels, 1, groups=g, bias=bias)
        first.weight.data.copy_(torch.cat([b for _, b in fac]).reshape(first.weight.shape))
        second.weight.data.copy_(torch.cat([a for a, _ in fac]).reshape(second.weight.shape))
    if bias:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


def factorized_params(layer: Any, r: int) -> int:
    """Weights of the factorized pair (bias excluded)."""
    mats = layer_matrices(layer)
    m, n = mats[0].shape
    return len(mats) * r * (m + n)


def set_module(model: Any, name: str, new: Any) -> None:
    """Replace the submodule ``name`` of ``model`` by ``new``."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


class LowRank(mo.Optimizer):
    """SVD low-rank factorization of Linear/Conv layers (rank, energy or param reduction)."""

    name = "compress.low_rank"
    stage = "structure"
    Config = LowRankConfig

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        import torch

        cfg = self.config
        model = copy_model(artifact)
        mo.check_finite_weights(model, self.name, "factorizing")  # SVD fails on NaN/Inf
        xs = tuple(ctx.example_inputs)
        skip = ignored_ids(model, cfg.ignored_layers, self.name)
        if cfg.keep_output_layers:
            from .common import output_layer_names

            skip |= {id(model.get_submodule(n)) for n in output_layer_names(model, xs)}
        layers = {n: m for n, m in prunable_layers(model, cfg.layer_types).items()
                  if id(m) not in skip and m.weight.dim() in (2, 3, 4, 5)
                  and not getattr(m, "transposed", False)}
        if not layers:
            return noop(self, artifact, ctx, "no Linear/Conv layers to factorize")
        ref = run_outputs(model, xs)
        macs0, params0 = count_macs_params(model, xs)
        done, skipped = [], []
        for name, layer in layers.items():
            mats = layer_matrices(layer)
            m, n = mats[0].shape
            svds = [torch.linalg.svd(x.double(), full_matrices=False) for x in mats]
            svals = [d[1] for d in svds]
            r = max(choose_rank(s, m, n, rank=cfg.rank, energy=cfg.energy,
                                param_reduction=cfg.param_reduction) for s in svals)
            if factorized_params(layer, r) >= layer.weight.numel():
                skipped.append(name)
                continue
            kept = sum(float((s[:r] ** 2).sum()) for s in svals) / max(
                sum(float((s ** 2).sum()) for s in svals), 1e-30)
            set_module(model, name, factorize(layer, r, svds))
            done.append(f"{name}: rank {r}/{min(m, n)}, energy {kept:.3f}")
        if not done:
            return noop(self, artifact, ctx, "factorizing would save nothing in any layer "
                        f"(skipped {len(skipped)}: rank too high for their shapes)")
        check_same_outputs(self.name, ref, run_outputs(model, xs))
        macs1, params1 = count_macs_params(model, xs)
        notes = [f"factorized {len(done)} layer(s): " + "; ".join(done),
                 format_delta("MACs", macs0, macs1), format_delta("params", params0, params1)]
        if skipped:
            notes.append(f"left alone (no saving): {', '.join(skipped)}")
        return artifact.evolve(step=self.step(notes=notes), model=model,
                               metadata={"macs": macs1, "params": params1})
