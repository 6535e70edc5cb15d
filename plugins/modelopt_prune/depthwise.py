"""``arch.depthwise_separable``: replace eligible KxK convs by depthwise + pointwise convs.

A dense conv W (out, in, K) is approximated per input channel i by a rank-1 product:
W[:, i] ~ P[:, i] D[i] (the best one by SVD of the (out, K) slice), giving a depthwise conv D and
a pointwise conv P that start as close to the original as a separable layer can be.
``block="inverted_residual"`` builds a MobileNetV2-style block (1x1 expand, ReLU, depthwise,
ReLU, 1x1 project, residual when shapes allow) that computes the same separable approximation
exactly at initialisation: the expansion holds [x, -x] twice, the depthwise kernels are split
into positive and negative parts so both ReLUs pass everything, and the projection recombines.
Accuracy is then recovered by fine-tuning or distillation.
"""

from __future__ import annotations

from typing import Any, Literal

import modelopt_core as mo

from .common import (check_same_outputs, copy_model, count_macs_params, format_delta, noop,
                     ignored_ids, run_outputs)
from .low_rank import set_module


def separable_factors(weight: Any) -> tuple[Any, Any]:
    """(D, P): depthwise kernels (in, 1, kh, kw) and pointwise (out, in, 1, 1) with
    W[o, i] ~ P[o, i] * D[i] (best rank-1 fit per input channel)."""
    import torch

    out_c, in_c, kh, kw = weight.shape
    mats = weight.detach().double().permute(1, 0, 2, 3).reshape(in_c, out_c, kh * kw)
    u, s, vh = torch.linalg.svd(mats, full_matrices=False)
    root = s[:, :1].sqrt()                                # (in, 1)
    d = (vh[:, 0, :] * root).reshape(in_c, 1, kh, kw)
    p = (u[:, :, 0] * root).t().reshape(out_c, in_c, 1, 1)
    return d.to(weight.dtype), p.to(weight.dtype)


def _identity_kernel(w: Any) -> Any:
    import torch

    eye = torch.zeros_like(w)
    _, _, kh, kw = w.shape
    n = min(w.shape[0], w.shape[1])
    eye[torch.arange(n), torch.arange(n), kh // 2, kw // 2] = 1.0
    return eye


def make_separable(conv: Any, block: str) -> Any:
    """A module replacing ``conv`` (Conv2d, groups=1), initialised to approximate it."""
    import torch
    from torch import nn

    from .layers import InvertedResidual

    w = conv.weight.detach()
    cin, cout = conv.in_channels, conv.out_channels
    bias = conv.bias is not None
    if block == "separable":
        d, p = separable_factors(w)
        dw = nn.Conv2d(cin, cin, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                       groups=cin, bias=False)
        pw = nn.Conv2d(cin, cout, 1, bias=bias)
        dw.weight.data.copy_(d)
        pw.weight.data.copy_(p)
        if bias:
            pw.bias.data.copy_(conv.bias.detach())
        return nn.Sequential(dw, pw)
    k, s = conv.kernel_size, conv.stride
    same = (s in (1, (1, 1)) and cin == cout and all(
        2 * pd == dl * (kk - 1) for pd, dl, kk in zip(conv.padding, conv.dilation, k)))
    target = w - _identity_kernel(w) if same else w  # the block adds x back itself
    d, p = separable_factors(target)
    blk = InvertedResidual(cin, cout, 4 * cin, k, s, conv.padding, conv.dilation, bias, same)
    eye = torch.eye(cin, dtype=w.dtype)[:, :, None, None]
    blk.expand.weight.data.copy_(torch.cat([eye, eye, -eye, -eye]))
    dp, dn = d.clamp_min(0), (-d).clamp_min(0)
    blk.dw.weight.data.copy_(torch.cat([dp, dn, dp, dn]))   # a*D+, a*D-, b*D+, b*D- (a=relu(x), b=relu(-x))
    blk.project.weight.data.copy_(torch.cat([p, -p, -p, p], 1))
    if bias:
        blk.project.bias.data.copy_(conv.bias.detach())
    return blk


@mo.config
class DepthwiseConfig:
    block: Literal["separable", "inverted_residual"] = mo.field(
        "separable", help="depthwise+pointwise, or a MobileNetV2 inverted-residual block")
    min_kernel: int = mo.field(3, validator=mo.in_range(2, 31), help="smallest kernel replaced")
    min_in_channels: int = mo.field(8, validator=mo.positive,
                                    help="skip convs with fewer input channels (the stem)")
    ignored_layers: tuple[str, ...] = mo.field((), help="qualified layer names left alone")


class DepthwiseSeparable(mo.Optimizer):
    """Replace dense KxK convs by depthwise + pointwise (or MobileNetV2 blocks), initialised
    to approximate the original; reports the MAC/parameter change."""

    name = "arch.depthwise_separable"
    Config = DepthwiseConfig

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        from torch import nn

        cfg = self.config
        model = copy_model(artifact)
        mo.check_finite_weights(model, self.name, "factorizing")  # SVD fails on NaN/Inf
        xs = tuple(ctx.example_inputs)
        skip = ignored_ids(model, cfg.ignored_layers, self.name)
        cands = {n: m for n, m in model.named_modules()
                 if type(m) is nn.Conv2d and id(m) not in skip and m.groups == 1
                 and min(m.kernel_size) >= cfg.min_kernel and m.in_channels >= cfg.min_in_channels
                 and m.padding_mode == "zeros" and isinstance(m.padding, tuple)}
        if not cands:
            return noop(self, artifact, ctx, f"no dense Conv2d with kernel >= {cfg.min_kernel} "
                        f"and >= {cfg.min_in_channels} input channels to replace")
        ref = run_outputs(model, xs)
        macs0, params0 = count_macs_params(model, xs)
        errs = []
        for name, conv in cands.items():
            set_module(model, name, make_separable(conv, cfg.block))
            errs.append(name)
        model.eval()
        out = run_outputs(model, xs)
        check_same_outputs(self.name, ref, out)
        macs1, params1 = count_macs_params(model, xs)
        rel = max(float((a - b).norm() / a.norm().clamp_min(1e-12)) for a, b in zip(ref, out))
        notes = [f"replaced {len(cands)} conv(s) by {cfg.block} blocks: {', '.join(errs)}",
                 format_delta("MACs", macs0, macs1), format_delta("params", params0, params1),
                 f"initial output relative error {rel:.3g} (recover accuracy by fine-tuning or "
                 "distillation)"]
        return artifact.evolve(step=self.step(notes=notes), model=model,
                               metadata={"macs": macs1, "params": params1, "macs_before": macs0,
                                         "params_before": params0,
                                         "init_relative_error": rel})


def __getattr__(name: str) -> Any:
    # InvertedResidual subclasses nn.Module: imported (with torch) on first use only
    if name == "InvertedResidual":
        from .layers import InvertedResidual

        return InvertedResidual
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
