"""``example.fuse_bn``: fold inference-mode BatchNorm into the Conv / Linear layer feeding it.

``y = gamma * (W x + b - mean) / sqrt(var + eps) + beta`` is again an affine map of ``x``, so
the BatchNorm disappears into the producer's weight and bias (and is replaced by
``nn.Identity``). Outputs stay the same up to float rounding; the optimizer checks that on the
session's example inputs. Pairs are found with ``torch.fx`` (any module layout); a model fx
cannot trace falls back to adjacent children of ``nn.Sequential`` containers.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

import modelopt_core as mo

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@mo.config
class FuseBNConfig:
    """Options of ``example.fuse_bn``."""

    include_linear: bool = mo.field(True, help="also fold BatchNorm1d that follows a Linear")
    check_numerics: bool = mo.field(True, help="compare outputs before/after on example inputs")
    rtol: float = mo.field(1e-4, validator=mo.in_range(0, 1), help="relative tolerance")
    atol: float = mo.field(1e-5, validator=mo.in_range(0, 1), help="absolute tolerance")


def _foldable(producer: nn.Module, bn: nn.Module, include_linear: bool) -> bool:
    if not isinstance(bn, _BNS) or bn.running_mean is None or bn.running_var is None:
        return False
    if isinstance(producer, _CONVS):
        return producer.out_channels == bn.num_features
    return (include_linear and isinstance(producer, nn.Linear)
            and isinstance(bn, nn.BatchNorm1d) and producer.out_features == bn.num_features)


def find_pairs(model: nn.Module, include_linear: bool = True) -> list[tuple[str, str]]:
    """(producer name, BatchNorm name) pairs where the BN consumes only that layer's output."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # data-dependent control flow: fall back to Sequential neighbours
        return _sequential_pairs(model, include_linear)
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        if calls[node.target] != 1 or calls[src.target] != 1:  # shared modules stay as they are
            continue
        if _foldable(model.get_submodule(src.target), model.get_submodule(node.target),
                     include_linear):
            pairs.append((src.target, node.target))
    return pairs


def _sequential_pairs(model: nn.Module, include_linear: bool) -> list[tuple[str, str]]:
    pairs = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Sequential):
            continue
        kids = list(mod.named_children())
        for (a, ma), (b, mb) in zip(kids, kids[1:]):
            if _foldable(ma, mb, include_linear):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a, prefix + b))
    return pairs


def fold(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Fold each BatchNorm into its producer, in place, and replace it with ``nn.Identity``."""
    for prod_name, bn_name in pairs:
        prod, bn = model.get_submodule(prod_name), model.get_submodule(bn_name)
        fuse = fuse_conv_bn_weights if isinstance(prod, _CONVS) else fuse_linear_bn_weights
        w, b = fuse(prod.weight, prod.bias, bn.running_mean, bn.running_var, bn.eps,
                    bn.weight if bn.affine else torch.ones_like(bn.running_mean),
                    bn.bias if bn.affine else torch.zeros_like(bn.running_mean))
        prod.weight, prod.bias = nn.Parameter(w.detach()), nn.Parameter(b.detach())
        parent_name, _, attr = bn_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, nn.Identity())


class FuseBatchNorm(mo.Optimizer):
    """Fold eval-mode BatchNorm into the preceding Conv/Linear (same outputs, fewer layers)."""

    name = "example.fuse_bn"
    Config = FuseBNConfig
    accepts = ("torch",)
    stage, lossy = "graph", False  # a rewrite that keeps the function (the search reads it)

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        """Return a new torch artifact whose BatchNorms are folded away."""
        c = self.config
        model = copy.deepcopy(artifact.model).eval()  # the input artifact is never touched
        pairs = find_pairs(model, c.include_linear)
        notes = []
        if not pairs:
            ctx.warn(f"{self.name}: no Conv/Linear -> BatchNorm pair found; model unchanged.")
        else:
            ref = copy.deepcopy(model) if c.check_numerics else None
            fold(model, pairs)
            notes.append(f"folded {len(pairs)} BatchNorm layer(s): "
                         + ", ".join(bn for _, bn in pairs[:8]) + ("..." if len(pairs) > 8 else ""))
            if ref is not None and ctx.example_inputs:
                err = _max_error(ref, model, ctx.example_inputs, c.rtol, c.atol, self.name)
                notes.append(f"max abs output difference after folding: {err:.3g}")
        return artifact.evolve(step=self.step(notes=notes), model=model)


def _max_error(ref: nn.Module, new: nn.Module, inputs: tuple[Any, ...], rtol: float,
               atol: float, who: str) -> float:
    with torch.no_grad():
        a, b = ref(*inputs), new(*inputs)
    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    err = 0.0
    for x, y in zip(a, b):
        err = max(err, float((x - y).abs().max()))
        if not torch.allclose(x, y, rtol=rtol, atol=atol):
            raise mo.NumericalError(
                f"{who}: outputs changed by up to {err:.3g} after folding (rtol={rtol}, "
                f"atol={atol}). A BatchNorm1d after a Linear on 3-D inputs normalises another "
                "axis: retry with include_linear=False.")
    return err
