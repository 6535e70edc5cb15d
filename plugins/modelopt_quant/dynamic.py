"""Optimizer ``quantize.dynamic``: dynamic INT8 for Linear, LSTM and GRU on the torch runtime.

Weights are stored as INT8 with per-output-channel scales; activations are quantized on the
fly per call by fbgemm's dynamic GEMM (``torch.ops.quantized.linear_dynamic``), which is much
faster than FP32 ``F.linear`` on x86 CPUs (VNNI). RNNs run the INT8 GEMMs for the input
projection of all time steps at once and for the recurrent projection per step, with the
gates in float. Because speed is the point, every candidate layer is timed FP32 vs INT8 on
the shapes it really sees (``ctx.example_inputs``) and kept in float when INT8 is not faster
(``keep_if_slower``), recorded in the lineage notes.

Note: packing goes through torch's quantized-tensor constructor, which torch 2.13 marks as
deprecated; it is isolated in :func:`_pack` (the INT8 weights themselves are plain ``int8``
buffers, so artifacts save as safetensors).

The INT8 layers live in :mod:`modelopt_quant.dynamic_layers` (they subclass ``nn.Module``, so
importing them imports torch); they are imported on first use and stay importable from here.
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

import attrs

import modelopt_core as mo

from .static import noop

if TYPE_CHECKING:  # torch is imported on use, never at plugin discovery
    from torch import nn

    from .dynamic_layers import DynLinear, DynRNN

__all__ = ["DynamicQuantize", "DynamicConfig", "DynLinear", "DynRNN"]


@mo.config
class DynamicConfig:
    """Options of ``quantize.dynamic``."""

    layers: tuple[str, ...] = mo.field(("linear", "lstm", "gru"),
                                       help="layer kinds to quantize: linear, lstm, gru")
    keep_if_slower: bool = mo.field(True, help="time each layer FP32 vs INT8 on its real "
                                    "input shape and keep it in float when INT8 is not faster")
    min_features: int = mo.field(16, validator=mo.positive,
                                 help="skip Linear layers smaller than this (in and out)")
    reduce_range: bool = mo.field(False, help="7-bit activations (CPUs without VNNI)",
                                  search=mo.choice(False, True))
    skip_layers: tuple[str, ...] = mo.field((), help="module names kept in float")


class DynamicQuantize(mo.Optimizer):
    """Dynamic INT8 (weights INT8, activations quantized per call) for Linear/LSTM/GRU."""

    name = "quantize.dynamic"
    stage = "precision"
    accepts = ("torch",)
    Config = DynamicConfig

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        from torch import nn

        from .dynamic_layers import DynLinear, DynRNN
        from .prepare import _check_weights

        cfg = self.config
        unknown = set(cfg.layers) - {"linear", "lstm", "gru"}
        if unknown:
            raise mo.ConfigError(f"{self.name}: unknown layer kind(s) {sorted(unknown)} in "
                                 "'layers'; use linear, lstm, gru.")
        model = copy.deepcopy(artifact.model).eval()
        _check_weights(model)
        cands = self._candidates(model, cfg)
        if not cands:
            out = noop(self, artifact, ctx)
            step = attrs.evolve(out.lineage[-1], restore={"quantized_layers": []})
            return attrs.evolve(out, lineage=out.lineage[:-1] + (step,))
        seen = _capture_inputs(model, cands, ctx.example_inputs)
        notes, done, kept = [], [], []
        for name, mod in cands.items():
            new = DynLinear(mod, name, cfg.reduce_range) if isinstance(mod, nn.Linear) else \
                DynRNN(mod, name, cfg.reduce_range)
            if cfg.keep_if_slower and name in seen:
                t_fp, t_q = _time_pair(mod, new, seen[name])
                if t_q >= t_fp:
                    kept.append(f"{name} ({t_q:.3g} ms INT8 vs {t_fp:.3g} ms FP32)")
                    continue
            _set(model, name, new)
            done.append(name)
        if not done:
            msg = f"{self.name}: INT8 was not faster for any layer; model left in float (no-op)"
            ctx.warn(msg)
            notes.append(msg)
        notes.append(f"dynamic INT8: {len(done)} layer(s)")
        if kept:
            notes.append("kept in float (INT8 not faster here): " + ", ".join(kept))
        size = sum(b.numel() * b.element_size() for b in model.state_dict().values())
        return artifact.evolve(
            step=self.step(notes=notes, restore={"quantized_layers": done}), model=model,
            metadata={"quantized_layers": done, "float_layers": [k.split(" ")[0] for k in kept],
                      "quantization": "int8-dynamic", "int8_size_bytes": size})

    def rebuild(self, model: Any, example_inputs: tuple[Any, ...], metadata: Any,
                restore: Any = None) -> Any:
        """Empty INT8 layers (:class:`DynLinear` / :class:`DynRNN`) where this step put them
        (the step's restore record ``{"quantized_layers": [...]}``, or the metadata of
        artifacts saved before per-step records); INT8 weights and scales come from the
        saved weights. Layers already dynamic (the optimized module as skeleton) are kept."""
        if restore and "quantized_layers" in restore:
            layers = restore["quantized_layers"]
        elif metadata.get("quantization") == "int8-dynamic":
            layers = metadata.get("quantized_layers", [])
        else:
            raise mo.ArtifactError(
                f"{self.name}: the lineage step has no 'quantized_layers' restore record "
                "(saved by an older version); load its ONNX export instead.")
        from torch import nn

        from .dynamic_layers import DynLinear, DynRNN

        if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
            raise mo.ArtifactError(f"{self.name}: the 'quantized_layers' record must be a list "
                                   f"of layer names, got {layers!r:.80}; re-save the artifact.")
        for name in layers:
            try:
                mod = model.get_submodule(name)
            except AttributeError:
                raise mo.ArtifactError(f"{self.name}: the model has no layer {name!r} to "
                                       "rebuild as a dynamic INT8 layer.") from None
            if isinstance(mod, (DynLinear, DynRNN)):
                continue
            if isinstance(mod, nn.Linear):
                new: nn.Module = DynLinear(mod, name, self.config.reduce_range)
            elif isinstance(mod, (nn.LSTM, nn.GRU)):
                new = DynRNN(mod, name, self.config.reduce_range)
            else:
                raise mo.ArtifactError(f"{self.name}: layer {name!r} is {type(mod).__name__}, "
                                       "not a Linear/LSTM/GRU layer.")
            _set(model, name, new)
        return model.eval()

    def _candidates(self, model: nn.Module, cfg: DynamicConfig) -> dict[str, nn.Module]:
        from torch import nn

        out: dict[str, nn.Module] = {}
        for name, m in model.named_modules():
            if name in cfg.skip_layers or any(name.startswith(p + ".") for p in out):
                continue
            if isinstance(m, nn.Linear) and "linear" in cfg.layers and \
                    min(m.in_features, m.out_features) >= cfg.min_features:
                out[name] = m
            elif isinstance(m, (nn.LSTM, nn.GRU)) and type(m).__name__.lower() in cfg.layers:
                if m.bidirectional or getattr(m, "proj_size", 0):
                    continue  # unsupported variants stay float
                out[name] = m
        return out


def _set(root: nn.Module, name: str, mod: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, mod)


def _capture_inputs(model: nn.Module, cands: dict[str, nn.Module],
                    example: tuple[Any, ...]) -> dict[str, tuple[Any, ...]]:
    import torch

    seen: dict[str, tuple[Any, ...]] = {}
    if not example:
        return seen
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, n=n: seen.setdefault(n, tuple(a.detach() if isinstance(
            a, torch.Tensor) else a for a in args))) for n, m in cands.items()]
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _time_pair(a: nn.Module, b: nn.Module, args: tuple[Any, ...], reps: int = 7
               ) -> tuple[float, float]:
    """Median ms of ``a(*args)`` and ``b(*args)``, interleaved."""
    import torch

    ta, tb = [], []
    with torch.inference_mode():
        a(*args), b(*args)
        for _ in range(reps):
            for f, acc in ((a, ta), (b, tb)):
                t0 = time.perf_counter()
                f(*args)
                acc.append(time.perf_counter() - t0)
    return 1e3 * sorted(ta)[reps // 2], 1e3 * sorted(tb)[reps // 2]


def __getattr__(name: str) -> Any:
    # the INT8 layers subclass nn.Module: imported (with torch) on first use only
    if name in ("DynLinear", "DynRNN"):
        from . import dynamic_layers

        return getattr(dynamic_layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
