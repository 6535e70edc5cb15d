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

__all__ = ["SensitivityReport", "analyze", "input_quantizer", "set_quantized"]


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


def set_quantized(model: nn.Module, enabled_layers: set[str] | None) -> None:
    """Enable the quantizers of ``enabled_layers`` only (None: all; empty set: none).
    An activation quantizer is on when any layer it feeds is on, or when it feeds no layer
    (add/concat/pool inputs) and everything is on."""
    layers = weighted_layers(model)
    feeds: dict[int, list[str]] = {}
    for name in layers:
        q = input_quantizer(model, name)
        if q is not None:
            feeds.setdefault(id(q), []).append(name)
    for name, w in layers.items():
        w.weight_quant.enabled = enabled_layers is None or name in enabled_layers
    for q in act_quantizers(model).values():
        users = feeds.get(id(q), [])
        if enabled_layers is None:
            q.enabled = True
        elif users:
            q.enabled = any(u in enabled_layers for u in users)
        else:
            q.enabled = False


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
