"""Per-layer quantization sensitivity: which Conv/Linear layers hurt most when quantized.

For every quantized layer, only that layer (its INT8 weights and the quantizer on its input)
is enabled and the model's output is compared with the float model on the calibration
batches: SQNR in dB (higher is better) and the max relative output error. With an
``eval_fn`` the metric with only that layer quantized is recorded too. The report orders
layers from most to least sensitive; ``quantize.auto`` keeps the top of that list in float.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from .fake_quant import FakeQuant, SharedQuant
from .graph import act_quantizers, weighted_layers

__all__ = ["SensitivityReport", "analyze", "input_quantizer", "set_quantized", "keep_float",
           "producers"]


class SensitivityReport:
    """Rows ``{"layer", "sqnr_db", "max_rel_error", "params", ["metric"]}``, most sensitive
    first."""

    def __init__(self, rows: list[dict[str, Any]], float_metric: float | None = None) -> None:
        self.rows = rows
        self.float_metric = float_metric

    def most_sensitive(self) -> list[str]:
        """Layer names, most sensitive first."""
        return [r["layer"] for r in self.rows]

    def to_markdown(self) -> str:
        """A Markdown table of the report."""
        cols = ["layer", "sqnr_db", "max_rel_error", "params"] + (
            ["metric"] if self.rows and "metric" in self.rows[0] else [])
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in self.rows:
            lines.append("| " + " | ".join(
                f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
        return "\n".join(lines)

    def to_data(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows]


def input_quantizer(model: nn.Module, layer: str) -> FakeQuant | None:
    """The activation quantizer feeding ``layer`` (graph models), or None."""
    if isinstance(model, fx.GraphModule):
        for node in model.graph.nodes:
            if node.op == "call_module" and node.target == layer:
                src = node.args[0]
                if isinstance(src, fx.Node) and src.op == "call_module":
                    m = model.get_submodule(src.target)
                    if isinstance(m, SharedQuant):
                        return m.base[0]
                    if isinstance(m, FakeQuant):
                        return m
        return None
    parent = layer.rpartition(".")[0]
    wrapper = model.get_submodule(parent) if parent else None
    return getattr(wrapper, "input_quant", None)


def producers(model: nn.Module) -> dict[int, list[str]]:
    """For each activation quantizer (by id) of a graph model, the quantized Conv/Linear
    layers whose output reaches it through float ops (ReLU, add, concat...) without crossing
    another quantizer."""
    out: dict[int, list[str]] = {}
    if not isinstance(model, fx.GraphModule):
        return out
    layers = weighted_layers(model)
    for node in model.graph.nodes:
        if node.op != "call_module":
            continue
        q = model.get_submodule(node.target)
        if not isinstance(q, FakeQuant) or node.target.endswith("weight_quant"):
            continue
        found: list[str] = []
        stack = [a for a in node.all_input_nodes]
        seen: set[fx.Node] = set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "call_module":
                if n.target in layers:
                    found.append(n.target)
                    continue
                if isinstance(model.get_submodule(n.target), (FakeQuant, SharedQuant)):
                    continue  # another grid: the search stops there
            stack.extend(n.all_input_nodes)
        out[id(q)] = found
    return out


def set_quantized(model: nn.Module, enabled_layers: set[str] | None) -> None:
    """Enable the quantizers of ``enabled_layers`` only (None: all; empty set: none).

    An activation quantizer is on when a quantized layer is next to it: one it feeds, or one
    whose output reaches it through float ops (the output grid an INT8 Conv needs to run as
    QLinearConv, and the add/concat inputs QLinearAdd needs). One with no layer on either
    side (e.g. between two adds) is on only when everything is quantized."""
    layers = weighted_layers(model)
    feeds: dict[int, list[str]] = {}
    for name in layers:
        q = input_quantizer(model, name)
        if q is not None:
            feeds.setdefault(id(q), []).append(name)
    made_by = producers(model) if enabled_layers is not None else {}
    for name, w in layers.items():
        w.weight_quant.enabled = enabled_layers is None or name in enabled_layers
    for q in act_quantizers(model).values():
        near = feeds.get(id(q), []) + made_by.get(id(q), [])
        if enabled_layers is None:
            q.enabled = True
        elif near:
            q.enabled = any(u in enabled_layers for u in near)
        else:
            q.enabled = len(enabled_layers) == len(layers)


def keep_float(model: nn.Module, int8_layers: set[str]) -> list[str]:
    """Final mixed-precision form: only ``int8_layers`` quantized, and every other weighted
    layer reading the float tensor in front of its input quantizer (rewired in the graph).

    ONNX Runtime quantizes a float Conv/Gemm itself (per-tensor INT8 weights, its
    WeightBiasQuantization pass) when its input comes from a DequantizeLinear and its output
    goes to a QuantizeLinear; a layer meant to stay float must therefore not read a
    dequantized tensor. Returns the rewired layers."""
    set_quantized(model, int8_layers)
    if not isinstance(model, fx.GraphModule):
        return []
    layers = weighted_layers(model)
    rewired = []
    for node in list(model.graph.nodes):
        if node.op != "call_module" or node.target not in layers or node.target in int8_layers:
            continue
        if not _runs_into_quantizer(model, node):
            continue  # ORT leaves it float anyway; keep the producer's output grid
        src = node.args[0] if node.args else None
        if (isinstance(src, fx.Node) and src.op == "call_module"
                and isinstance(model.get_submodule(src.target), (FakeQuant, SharedQuant))
                and src.args and isinstance(src.args[0], fx.Node)):
            node.replace_input_with(src, src.args[0])
            rewired.append(node.target)
    if rewired:
        model.graph.eliminate_dead_code()
        model.graph.lint()
        model.recompile()
    return rewired


_CLIPS = {torch.relu, torch.relu_, torch.clamp, torch.nn.functional.relu,
          torch.nn.functional.relu6, torch.nn.functional.hardtanh}


def _runs_into_quantizer(model: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node``'s output reaches an enabled activation quantizer through ReLU/clip
    ops with a single consumer each (what ORT's WeightBiasQuantization looks for)."""
    cur = node
    while len(cur.users) == 1:
        nxt = next(iter(cur.users))
        if nxt.op == "call_module":
            mod = model.get_submodule(nxt.target)
            if isinstance(mod, FakeQuant):
                return mod.enabled
            if not isinstance(mod, (nn.ReLU, nn.ReLU6, nn.Hardtanh)):
                return False
        elif not ((nxt.op == "call_function" and nxt.target in _CLIPS)
                  or (nxt.op == "call_method" and nxt.target in ("relu", "relu_", "clamp"))):
            return False
        cur = nxt
    return False


def _outputs(model: nn.Module, batches: list[tuple[Any, ...]]) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for b in batches:
            o = model(*b)
            o = o if isinstance(o, torch.Tensor) else torch.cat([t.flatten(1) for t in o], 1)
            outs.append(o.float())
    return outs


def sqnr(ref: list[torch.Tensor], got: list[torch.Tensor]) -> tuple[float, float]:
    """(SQNR in dB, max error relative to the reference's max magnitude)."""
    r, g = torch.cat([x.flatten() for x in ref]), torch.cat([x.flatten() for x in got])
    noise = float(((r - g) ** 2).sum())
    sig = float((r ** 2).sum())
    db = math.inf if noise == 0 else 10 * math.log10(max(sig, 1e-30) / noise)
    return db, float((r - g).abs().max() / r.abs().max().clamp_min(1e-12))


def analyze(model: nn.Module, batches: list[tuple[Any, ...]],
            metric_fn: Callable[[nn.Module], float] | None = None,
            progress: Callable[..., Any] | None = None) -> SensitivityReport:
    """Per-layer sensitivity of a calibrated quantized model (left with all quantizers on)."""
    layers = weighted_layers(model)
    model.eval()
    set_quantized(model, set())
    ref = _outputs(model, batches)
    float_metric = metric_fn(model) if metric_fn else None
    rows = []
    names = list(layers)
    it = progress(names, total=len(names), desc="sensitivity") if progress else names
    try:
        for name in it:
            set_quantized(model, {name})
            db, rel = sqnr(ref, _outputs(model, batches))
            row: dict[str, Any] = {"layer": name, "sqnr_db": db, "max_rel_error": rel,
                                   "params": int(layers[name].layer.weight.numel())}
            if metric_fn:
                row["metric"] = metric_fn(model)
            rows.append(row)
    finally:
        set_quantized(model, None)
    if metric_fn:
        rows.sort(key=lambda r: (r["metric"], r["sqnr_db"]))
    else:
        rows.sort(key=lambda r: r["sqnr_db"])
    return SensitivityReport(rows, float_metric)
