"""Quantizer placement: trace the model with ``torch.fx``, fold BatchNorm into the preceding
Conv/Linear, wrap every Conv/Linear with a weight quantizer and put an activation quantizer on
every float tensor that feeds a Conv/Linear, an add, a concat or a pooling op.

That placement is what ONNX Runtime's QDQ fusions need: ``DQ -> Conv -> (ReLU) -> Q`` becomes
QLinearConv, ``DQ, DQ -> Add -> (ReLU) -> Q`` QLinearAdd, and Q/DQ pairs with equal scales
around max-pool / flatten / reshape / nearest-upsample are dropped (those ops then run on
uint8). Grid-preserving ops therefore re-use their input's quantizer (:class:`SharedQuant`).
One quantizer per tensor is shared by all its consumers; the model's outputs stay float.

Models that ``torch.fx`` cannot trace fall back to module-level wrapping (input quantizer +
weight quantizer per Conv/Linear; BatchNorm folded inside ``nn.Sequential`` pairs only).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .fake_quant import FakeQuant, QuantConv, QuantLinear, SharedQuant

__all__ = ["QuantSpec", "insert_quantizers", "fold_bn", "weighted_layers", "act_quantizers"]

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
GRID_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Flatten, nn.ReLU, nn.Identity)
ADD_FNS = {operator.add, operator.iadd, torch.add}
GRID_FNS = {torch.flatten, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.relu, torch.relu,
            torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze}
POOL_FNS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
            F.adaptive_avg_pool1d, F.adaptive_avg_pool2d}
GRID_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze",
                "unsqueeze", "relu"}


class QuantSpec:
    """What to quantize and how (plain options shared by static, QAT and auto)."""

    def __init__(self, *, per_channel: bool = True, act_signed: bool = False,
                 act_symmetric: bool = False, observer: str = "minmax",
                 percentile: float = 99.99, skip: Iterable[str] = ()) -> None:
        self.per_channel = per_channel
        self.act_signed = act_signed
        self.act_symmetric = act_symmetric
        self.observer = observer
        self.percentile = percentile
        self.skip = set(skip)

    def act_quant(self, who: str) -> FakeQuant:
        """A fresh activation quantizer for this spec."""
        return FakeQuant(signed=self.act_signed, symmetric=self.act_symmetric,
                         observer=self.observer, percentile=self.percentile, who=who)


def fold_bn(gm: fx.GraphModule) -> int:
    """Fold eval-mode BatchNorm into the Conv/Linear feeding it (in place); returns the count."""
    mods = dict(gm.named_modules())
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(mods.get(node.target), BNS):
            continue
        prev = node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        layer, bn = mods[prev.target], mods[node.target]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        if isinstance(layer, CONVS):
            fused = fuse_conv_bn_eval(layer.eval(), bn.eval())
        elif isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
            fused = fuse_linear_bn_eval(layer.eval(), bn.eval())
        else:
            continue
        _set(gm, prev.target, fused)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        n += 1
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return n


def _set(root: nn.Module, name: str, mod: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, mod)


def _is_float(node: Any) -> bool:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return meta is not None and hasattr(meta, "dtype") and meta.dtype.is_floating_point


def _kind(node: fx.Node, mods: dict[str, nn.Module]) -> str:
    """'weighted', 'consumer' (add/cat/pool), 'grid' (grid-preserving) or ''."""
    if node.op == "call_module":
        m = mods.get(node.target)
        if isinstance(m, CONVS + (nn.Linear,)):
            return "weighted"
        if isinstance(m, nn.Upsample) and m.mode == "nearest":
            return "grid"
        if isinstance(m, GRID_MODULES):
            return "grid+consumer" if isinstance(m, POOLS) else "grid"
        if isinstance(m, POOLS):
            return "consumer"
    elif node.op == "call_function":
        if node.target in ADD_FNS or node.target is torch.cat:
            return "consumer"
        if node.target in POOL_FNS:
            return "grid+consumer" if node.target in GRID_FNS else "consumer"
        if node.target in GRID_FNS:
            return "grid"
    elif node.op == "call_method":
        if node.target == "add":
            return "consumer"
        if node.target in GRID_METHODS:
            return "grid"
    return ""


def _is_relu(node: fx.Node, mods: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(mods.get(node.target), nn.ReLU)
    return node.target in (F.relu, torch.relu, "relu")


def insert_quantizers(gm: fx.GraphModule, spec: QuantSpec) -> list[str]:
    """Insert weight and activation quantizers into a traced, shape-propagated graph (in
    place). Returns the names of the quantized Conv/Linear layers (empty: nothing to do)."""
    mods = dict(gm.named_modules())
    graph = gm.graph
    base_of: dict[fx.Node, FakeQuant] = {}  # quant node -> the FakeQuant whose grid it holds
    qnode: dict[fx.Node, fx.Node] = {}      # float node -> its quantized version
    layers: list[str] = []
    count = 0

    def quantized(a: fx.Node, consumer: str) -> fx.Node:
        nonlocal count
        if a in base_of:
            return a
        if a in qnode:
            return qnode[a]
        src = a.args[0] if a.args else None
        name = f"quant_{a.name}"
        if (isinstance(src, fx.Node) and src not in base_of and _is_float(src)
                and _kind(a, mods).startswith("grid") and not _is_relu(a, mods)
                and (src in qnode or _kind(src, mods).startswith("grid"))):
            qs = quantized(src, consumer)  # share the grid through layout ops / max-pool
            a.replace_input_with(src, qs)
            src = qs
        if _kind(a, mods).startswith("grid") and isinstance(src, fx.Node) and src in base_of:
            mod: nn.Module = SharedQuant(base_of[src])
            base = base_of[src]
        else:
            mod = base = spec.act_quant(f"activation {a.name!r} (input of {consumer!r})")
        gm.add_submodule(name, mod)
        count += 1
        with graph.inserting_after(a):
            q = graph.call_module(name, (a,))
        q.meta = dict(a.meta)
        base_of[q], qnode[a] = base, q
        return q

    for node in list(graph.nodes):
        kind = _kind(node, mods)
        if node in base_of or not kind:
            continue
        if kind == "weighted":
            if node.target in spec.skip:
                continue
            layer = mods[node.target]
            wrap = QuantConv if isinstance(layer, CONVS) else QuantLinear
            _set(gm, node.target, wrap(layer, spec.per_channel, f"layer {node.target!r}"))
            layers.append(node.target)
            targets = [node.args[0]]
        elif "consumer" in kind:
            args = node.args[0] if node.target is torch.cat else node.args
            targets = list(args) if isinstance(args, (list, tuple)) else [args]
            if "grid" in kind:
                targets = targets[:1]
        else:
            continue
        desc = str(node.target) if node.op != "call_function" else node.name
        for a in targets:
            if isinstance(a, fx.Node) and _is_float(a):
                node.replace_input_with(a, quantized(a, desc))
    graph.lint()
    gm.recompile()
    return layers


def weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Quantized Conv/Linear wrappers by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantConv, QuantLinear))}


def act_quantizers(model: nn.Module) -> dict[str, FakeQuant]:
    """Activation quantizers (not weight quantizers) by module name."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, FakeQuant) and not n.endswith("weight_quant")}
