"""Helpers shared by the compression components: config validators, layer discovery,
MAC/parameter counting, output-layer detection and the no-op step."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Any

import modelopt_core as mo

__all__ = ["amount_in_range", "prunable_layers", "count_macs_params", "output_layer_names",
           "resolve_names", "copy_model", "noop", "run_outputs", "check_same_outputs",
           "format_delta"]


def amount_in_range(inst: Any, attr: Any, value: Any) -> None:
    """attrs validator: a fraction in [0, 1) (bool, str and NaN are refused by the type check)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise mo.ConfigError(f"config key {attr.name!r} must be a number in [0, 1), got "
                             f"{value!r}.")
    if not 0.0 <= value < 1.0:
        raise mo.ConfigError(f"config key {attr.name!r} = {value!r} is outside [0, 1): give the "
                             "fraction of weights/channels to remove, e.g. 0.5.")


def prunable_layers(model: Any, types: Sequence[str] = ("conv", "linear")) -> dict[str, Any]:
    """Conv (any dim) and Linear layers of ``model`` by qualified name."""
    from torch import nn

    want = tuple(t for k, t in (("conv", nn.modules.conv._ConvNd), ("linear", nn.Linear))
                 if k in types)
    return {n: m for n, m in model.named_modules() if want and isinstance(m, want)}


def copy_model(artifact: mo.ModelArtifact) -> Any:
    """A deep copy of the artifact's module in eval mode (the artifact is never touched)."""
    return copy.deepcopy(artifact.model).eval()


def count_macs_params(model: Any, example_inputs: Sequence[Any]) -> tuple[int, int]:
    """(multiply-accumulates, weights) of one forward pass on ``example_inputs``.

    Torch-Pruning's op counter for standard layers; layers it does not know that define
    ``macs_per_output()`` / ``num_weights()`` (weight-shared layers) are counted by hooks, so a
    weight-shared layer counts the MACs and logical weights of the dense layer it computes.
    """
    import torch

    m = copy.deepcopy(model).eval()
    xs = tuple(example_inputs)
    extra = [0]
    custom = [mod for mod in m.modules() if hasattr(mod, "macs_per_output")]

    def hook(mod: Any, inp: Any, out: Any) -> None:
        extra[0] += int(out[0].numel() * mod.macs_per_output())  # per sample, like tp

    hs = [mod.register_forward_hook(hook) for mod in custom]
    try:
        import torch_pruning as tp

        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(m, xs if len(xs) > 1 else xs[0])
    except Exception:  # a model Torch-Pruning cannot trace: count Conv/Linear by hooks
        macs, params = _hook_macs(m, xs), sum(p.numel() for p in m.parameters())
        extra[0] = 0
    finally:
        for h in hs:
            h.remove()
    weights = sum(mod.num_weights() - sum(p.numel() for p in mod.parameters(recurse=False))
                  for mod in custom if hasattr(mod, "num_weights"))
    return int(macs) + extra[0], int(params) + weights


def _hook_macs(m: Any, xs: tuple[Any, ...]) -> int:
    import torch

    total = [0]

    def hook(mod: Any, inp: Any, out: Any) -> None:
        if isinstance(mod, torch.nn.modules.conv._ConvNd):
            total[0] += int(out[0].numel() * mod.weight[0].numel())
        elif isinstance(mod, torch.nn.Linear):
            total[0] += int(out[0].numel() * mod.in_features)
        elif hasattr(mod, "macs_per_output"):
            total[0] += int(out[0].numel() * mod.macs_per_output())

    hs = [mod.register_forward_hook(hook) for mod in m.modules()]
    try:
        with torch.no_grad():
            m(*xs)
    finally:
        for h in hs:
            h.remove()
    return total[0]


def run_outputs(model: Any, inputs: Sequence[Any]) -> list[Any]:
    """Outputs of ``model(*inputs)`` as a list of tensors (no grad)."""
    import torch

    with torch.no_grad():
        out = model(*inputs)
    return [out] if isinstance(out, torch.Tensor) else list(out)


def _tensors(out: Any) -> list[Any]:
    """Every tensor in a (nested) tuple / list / dict output, in order."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def output_layer_names(model: Any, example_inputs: Sequence[Any]) -> list[str]:
    """Names of the Conv/Linear layers whose output channels the model's outputs carry
    (classifier, detection heads, feature maps a head passes through), found by running the
    model once with autograd on and walking back from every output to the nearest such layers
    (through activations, norms, reshapes, concatenations). Falls back to the last Conv/Linear
    executed."""
    import torch

    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(True)
    layers = prunable_layers(m)
    produced: dict[Any, str] = {}  # id(tensor) or its grad_fn -> layer name
    order: list[str] = []

    def make(name: str):
        def hook(mod: Any, inp: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                produced[id(out)] = name
                if out.grad_fn is not None:
                    produced[out.grad_fn] = name
                order.append(name)
        return hook

    hs = [mod.register_forward_hook(make(n)) for n, mod in layers.items()]
    try:
        with torch.enable_grad():
            outs = _tensors(m(*example_inputs))
    finally:
        for h in hs:
            h.remove()
    names: list[str] = []
    for o in outs:
        if id(o) in produced:
            names.append(produced[id(o)])
            continue
        seen: set[Any] = set()
        todo = [o.grad_fn] if o.grad_fn is not None else []
        while todo and len(seen) < 5000:
            fn = todo.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            if fn in produced:
                names.append(produced[fn])
                continue
            todo += [nxt for nxt, _ in fn.next_functions if nxt is not None]
    if not names and order:
        names = [order[-1]]
    return list(dict.fromkeys(names))


def resolve_names(model: Any, names: Iterable[str], who: str, field: str) -> list[Any]:
    """Modules for qualified ``names``; ConfigError naming the unknown one and close matches."""
    mods = dict(model.named_modules())
    out = []
    for n in names:
        if n not in mods:
            hint = mo.errors.close_names(n, [k for k in mods if k])
            raise mo.ConfigError(
                f"{who}: {field} names {n!r}, which is not a module of "
                f"{type(model).__name__}" + (f" (did you mean {', '.join(map(repr, hint))}?)"
                                             if hint else "") + ".")
        out.append(mods[n])
    return out


def ignored_ids(model: Any, names: Iterable[str], who: str) -> set[int]:
    """ids of the modules named in a component's ``ignored_layers`` (unknown names fail)."""
    return {id(m) for m in resolve_names(model, names, who, "ignored_layers")}


def check_same_outputs(who: str, before: Sequence[Any], after: Sequence[Any]) -> None:
    """Raise if the edited model's outputs changed count/shape or hold NaN/Inf."""
    import torch

    if len(before) != len(after):
        raise mo.NumericalError(f"{who}: the model now returns {len(after)} output(s) instead of "
                                f"{len(before)}; the edit broke the graph.")
    for i, (a, b) in enumerate(zip(before, after)):
        if a.shape != b.shape:
            raise mo.NumericalError(f"{who}: output {i} changed shape {tuple(a.shape)} -> "
                                    f"{tuple(b.shape)}; keep the output layers (ignored_layers).")
        if b.is_floating_point() and not torch.isfinite(b).all():
            raise mo.NumericalError(f"{who}: output {i} holds NaN/Inf after the edit.")


def format_delta(label: str, before: float, after: float) -> str:
    """'MACs 1.82G -> 0.47G (3.87x fewer)'."""
    def fmt(v: float) -> str:
        for unit, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= unit:
                return f"{v / unit:.3g}{s}"
        return f"{v:.0f}"
    ratio = before / after if after else float("inf")
    return f"{label} {fmt(before)} -> {fmt(after)} ({ratio:.2f}x fewer)"


def noop(component: mo.Optimizer, artifact: mo.ModelArtifact, ctx: mo.Context,
         why: str) -> mo.ModelArtifact:
    """An explicit no-op step: the same model (copied), one lineage step, and a warning."""
    msg = f"{component.name}: {why}; the model is unchanged (no-op step)."
    ctx.warn(msg)
    return artifact.evolve(step=component.step(notes=[msg]), model=copy.deepcopy(artifact.model))
