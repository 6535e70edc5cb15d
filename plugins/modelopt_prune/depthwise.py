"""``arch.depthwise_separable``: replace eligible KxK convs by depthwise + pointwise convs.

A dense conv W (out, in, K) is approximated per input channel i by a rank-1 product:
W[:, i] ~ P[:, i] D[i] (the best one by SVD of the (out, K) slice), giving a depthwise conv D and
a pointwise conv P that start as close to the original as a separable layer can be.

Blocks (``block=``):

- ``"separable"``: depthwise -> pointwise. With ``mid_bn_relu=True`` (the MobileYOLO block)
  depthwise -> BatchNorm -> ReLU -> pointwise. That BatchNorm starts as a pure per-channel
  shift (weight 1, running_mean 0, running_var 1 - eps: identity scale; bias c_i) that lifts
  the depthwise output into the ReLU's linear range, and the pointwise bias subtracts
  ``P c`` again, so the block still computes ``P (D * x)`` at initialisation.
- ``"inverted_residual"``: the MobileNetV2 block (1x1 expand to ``expand_ratio * in`` channels
  -> BN -> ReLU6 -> depthwise -> BN -> ReLU6 -> 1x1 project -> BN, plus the input when shapes
  allow). Every BatchNorm is the exact identity in eval mode (weight 1, bias 0, running_mean
  0, running_var 1 - eps rounded so that var + eps == 1). The first ``4 * in`` hidden channels
  hold ``[x, x, -x, -x]`` scaled by ``6 / B_i``; the depthwise kernels are split into positive
  and negative parts (each scaled by its L1 norm when above 1), so both ReLU6 act as the
  identity on their input; the projection recombines ``P (D * x)`` and undoes the scales. The
  hidden channels beyond ``4 * in`` start with the default init and a zero projection, so they
  do not change the output. Hence ``expand_ratio >= 4``.

Exactness at initialisation (up to float rounding, ~1e-6 relative) holds for inputs whose
magnitude per channel stays within ``B_i = init_headroom x`` the largest one seen on the
example inputs (and up to ``init_batches`` calibration batches when the session has them);
beyond it ReLU6 saturates (or the separable ReLU clips), as in any MobileNetV2 block. The
ReLUs are never placed where they would change outputs: this bound is the only reason a
block can differ from the separable approximation at initialisation.
Accuracy is then recovered by fine-tuning or distillation.
"""

from __future__ import annotations

from typing import Any, Literal

import modelopt_core as mo

from .common import (check_same_outputs, copy_model, count_macs_params, format_delta, noop,
                     ignored_ids, run_outputs)
from .low_rank import set_module

#: the bound on |input| per channel used when the caller gives none (direct calls)
DEFAULT_BOUND = 16.0


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


def _bound(in_bound: Any, cin: int) -> Any:
    """Per-input-channel bounds B_i (positive, float64) from a number or a tensor."""
    import torch

    b = torch.as_tensor(DEFAULT_BOUND if in_bound is None else in_bound, dtype=torch.float64)
    b = b.expand(cin).clone() if b.dim() == 0 else b.reshape(cin).clone()
    if not bool(torch.isfinite(b).all()) or bool((b <= 0).any()):
        raise mo.ConfigError(f"arch.depthwise_separable: input bounds must be positive and "
                             f"finite, got {b.tolist()[:8]}")
    return b


def make_separable(conv: Any, block: str, *, expand_ratio: int = 6, in_bound: Any = None,
                   mid_bn_relu: bool = False) -> Any:
    """A module replacing ``conv`` (Conv2d, groups=1), initialised to approximate it
    (see the module docstring). ``in_bound`` bounds |input| per channel (a number or an
    ``(in,)`` tensor; default ``DEFAULT_BOUND``): within it the nonlinearities of the block
    act as the identity at initialisation. The module comes back in eval mode (its BatchNorms
    are the identity only there); call ``.train()`` to fine-tune it."""
    import torch
    from torch import nn

    from .layers import InvertedResidual, identity_bn

    w = conv.weight.detach()
    cin, cout = conv.in_channels, conv.out_channels
    bias = conv.bias is not None
    bound = _bound(in_bound, cin)
    if block == "separable":
        d, p = separable_factors(w)
        dw = nn.Conv2d(cin, cin, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                       groups=cin, bias=False)
        dw.weight.data.copy_(d)
        if not mid_bn_relu:
            pw = nn.Conv2d(cin, cout, 1, bias=bias)
            pw.weight.data.copy_(p)
            if bias:
                pw.bias.data.copy_(conv.bias.detach())
            return nn.Sequential(dw, pw).eval()
        # |D_i * x_i| <= ||D_i||_1 B_i: shift by that so the ReLU sees only values >= 0
        shift = d.double().abs().flatten(1).sum(1) * bound
        bn = identity_bn(nn.BatchNorm2d(cin))
        bn.bias.data.copy_(shift.to(w.dtype))
        pw = nn.Conv2d(cin, cout, 1, bias=True)
        pw.weight.data.copy_(p)
        b0 = conv.bias.detach().double() if bias else torch.zeros(cout, dtype=torch.float64)
        pw.bias.data.copy_((b0 - p.double().flatten(1) @ shift).to(w.dtype))
        return nn.Sequential(dw, bn, nn.ReLU(), pw).eval()
    if expand_ratio < 4:
        raise mo.ConfigError(f"arch.depthwise_separable: expand_ratio={expand_ratio}, but the "
                             "inverted-residual block needs >= 4 (it starts from [x, x, -x, -x] "
                             "so both ReLU6 pass everything); use 4 or more (MobileNetV2: 6).")
    k, s = conv.kernel_size, conv.stride
    same = (s in (1, (1, 1)) and cin == cout and all(
        2 * pd == dl * (kk - 1) for pd, dl, kk in zip(conv.padding, conv.dilation, k)))
    target = w - _identity_kernel(w) if same else w  # the block adds x back itself
    d, p = separable_factors(target)
    d, p = d.double(), p.double()
    hidden = expand_ratio * cin
    blk = InvertedResidual(cin, cout, hidden, k, s, conv.padding, conv.dilation, bias, same)
    for bn in (blk.bn1, blk.bn2, blk.bn3):
        identity_bn(bn)
    n4 = 4 * cin
    scale = 6.0 / bound                                    # |x_i| <= B_i -> expand in [-6, 6]
    eye = torch.diag(scale)[:, :, None, None]
    ew = blk.expand.weight.data
    ew[:n4] = torch.cat([eye, eye, -eye, -eye]).to(ew.dtype)
    dp, dn = d.clamp_min(0), (-d).clamp_min(0)
    kern = torch.cat([dp, dn, dp, dn])                     # a*D+, a*D-, b*D+, b*D- (a=relu(x))
    norm = kern.abs().flatten(1).sum(1).clamp_min(1.0)     # output <= 6 * ||K||_1 / norm <= 6
    blk.dw.weight.data[:n4] = (kern / norm[:, None, None, None]).to(ew.dtype)
    sign = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64).repeat_interleave(cin)
    undo = sign * norm / scale.repeat(4)                   # per hidden channel
    pw = blk.project.weight.data
    pw.zero_()                                             # extra hidden channels: no effect
    pw[:, :n4] = (p.repeat(1, 4, 1, 1) * undo[None, :, None, None]).to(pw.dtype)
    if bias:
        blk.project.bias.data.copy_(conv.bias.detach())
    return blk.eval()


@mo.config
class DepthwiseConfig:
    block: Literal["separable", "inverted_residual"] = mo.field(
        "separable", help="depthwise+pointwise, or a MobileNetV2 inverted-residual block")
    expand_ratio: int = mo.field(6, validator=mo.in_range(4, 64),
                                 help="inverted_residual: hidden channels = expand_ratio x in "
                                      "(>= 4 so the block matches the conv at initialisation)")
    mid_bn_relu: bool = mo.field(False, help="separable: BatchNorm + ReLU between depthwise "
                                             "and pointwise (MobileYOLO block)")
    init_headroom: float = mo.field(
        4.0, validator=mo.in_range(1.0, 1e6),
        help="the block matches the conv at initialisation for inputs up to this multiple of "
             "the largest magnitude seen per channel on the example/calibration inputs")
    init_batches: int = mo.field(8, validator=mo.in_range(0, 10_000),
                                 help="calibration batches used to bound the inputs (if any)")
    min_kernel: int = mo.field(3, validator=mo.in_range(2, 31), help="smallest kernel replaced")
    min_in_channels: int = mo.field(8, validator=mo.positive,
                                    help="skip convs with fewer input channels (the stem)")
    ignored_layers: tuple[str, ...] = mo.field((), help="qualified layer names left alone")


def input_bounds(model: Any, convs: dict[str, Any], batches: list[tuple[Any, ...]],
                 headroom: float) -> dict[str, Any]:
    """Per-input-channel bound ``headroom * max |x_i|`` of each conv in ``convs`` over
    ``batches`` (channels never active get a small floor, so no scale is infinite)."""
    import torch

    seen: dict[str, Any] = {}

    def hook_for(name: str) -> Any:
        def hook(mod: Any, args: Any) -> None:
            a = args[0].detach().double().abs().transpose(0, 1).flatten(1).amax(1)
            seen[name] = a if name not in seen else torch.maximum(seen[name], a)
        return hook

    hs = [m.register_forward_pre_hook(hook_for(n)) for n, m in convs.items()]
    try:
        with torch.no_grad():
            for xs in batches:
                model(*xs)
    finally:
        for h in hs:
            h.remove()
    out = {}
    for n, m in convs.items():
        a = seen.get(n, torch.ones(m.in_channels, dtype=torch.float64))
        floor = max(float(a.max()) * 1e-3, 1e-6)
        out[n] = headroom * a.clamp_min(floor)
    return out


def execution_order(model: Any, convs: dict[str, Any], xs: tuple[Any, ...]) -> list[str]:
    """The names of ``convs`` in the order of their first call on ``xs`` (those never called
    last, in module order)."""
    import torch

    order: list[str] = []
    hs = [m.register_forward_pre_hook(lambda mod, a, n=n: order.append(n) if n not in order
                                      else None) for n, m in convs.items()]
    try:
        with torch.no_grad():
            model(*xs)
    finally:
        for h in hs:
            h.remove()
    return order + [n for n in convs if n not in order]


class DepthwiseSeparable(mo.Optimizer):
    """Replace dense KxK convs by depthwise + pointwise (or MobileNetV2 blocks), initialised
    to reproduce the separable approximation; reports the MAC/parameter change."""

    name = "arch.depthwise_separable"
    stage = "structure"
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
        batches = [xs]
        if ctx.calibration_data is not None and cfg.init_batches:
            batches += ctx.calibration_batches(self.name, cfg.init_batches)
        blocks: dict[str, dict[str, Any]] = {}
        # in execution order, each bound measured on the model with the earlier convs already
        # replaced: the inputs a block really gets differ from the original's by then
        for name in execution_order(model, cands, xs):
            conv = cands[name]
            bound = input_bounds(model, {name: conv}, batches, cfg.init_headroom)[name]
            new = make_separable(conv, cfg.block, expand_ratio=cfg.expand_ratio,
                                 in_bound=bound, mid_bn_relu=cfg.mid_bn_relu)
            if cfg.block == "inverted_residual":
                blocks[name] = {"cin": conv.in_channels, "cout": conv.out_channels,
                                "hidden": new.dw.in_channels, "kernel": list(conv.kernel_size),
                                "stride": list(conv.stride), "padding": list(conv.padding),
                                "dilation": list(conv.dilation), "bias": conv.bias is not None,
                                "residual": bool(new.residual)}
            set_module(model, name, new)
        model.eval()
        out = run_outputs(model, xs)
        check_same_outputs(self.name, ref, out)
        macs1, params1 = count_macs_params(model, xs)
        rel = max(float((a - b).norm() / a.norm().clamp_min(1e-12)) for a, b in zip(ref, out))
        kind = cfg.block + (" (BN+ReLU between depthwise and pointwise)"
                            if cfg.block == "separable" and cfg.mid_bn_relu else
                            f" (expand_ratio {cfg.expand_ratio})"
                            if cfg.block == "inverted_residual" else "")
        notes = [f"replaced {len(cands)} conv(s) by {kind} blocks: {', '.join(cands)}",
                 format_delta("MACs", macs0, macs1), format_delta("params", params0, params1),
                 (f"initial output relative error {rel:.3g} (the separable approximation; the "
                  f"block's BN/ReLU act as the identity for inputs up to {cfg.init_headroom}x "
                  "the largest seen); recover accuracy by fine-tuning or distillation")]
        return artifact.evolve(step=self.step(notes=notes,
                                              restore={"inverted_residual": blocks}),
                               model=model,
                               metadata={"macs": macs1, "params": params1, "macs_before": macs0,
                                         "params_before": params0,
                                         "init_relative_error": rel})

    def rebuild(self, model: Any, example_inputs: tuple[Any, ...], metadata: Any,
                restore: Any = None) -> Any:
        """Put the recorded inverted-residual blocks in place (their weights come from the
        saved file); separable pairs are standard layers, rebuilt from the structure record."""
        from .layers import InvertedResidual

        blocks = (restore or {}).get("inverted_residual") or {}
        if not isinstance(blocks, dict):
            raise mo.ArtifactError(f"{self.name}: restore record 'inverted_residual' must be "
                                   f"an object, got {type(blocks).__name__}")
        for name, b in blocks.items():
            try:
                args = [int(b[k]) for k in ("cin", "cout", "hidden")]
                geo = [tuple(int(v) for v in b[k])
                       for k in ("kernel", "stride", "padding", "dilation")]
                flags = [bool(b["bias"]), bool(b["residual"])]
            except (KeyError, TypeError, ValueError) as e:
                raise mo.ArtifactError(f"{self.name}: bad restore record for block {name!r}: "
                                       f"{e!r}") from e
            if not all(0 < v <= 1 << 16 for v in args) or args[2] % args[0]:
                raise mo.ArtifactError(f"{self.name}: restore record for block {name!r} has "
                                       f"channel counts {args} out of range")
            set_module(model, name, InvertedResidual(*args, *geo, *flags))
        return model if blocks else None


def __getattr__(name: str) -> Any:
    # InvertedResidual subclasses nn.Module: imported (with torch) on first use only
    if name == "InvertedResidual":
        from .layers import InvertedResidual

        return InvertedResidual
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
