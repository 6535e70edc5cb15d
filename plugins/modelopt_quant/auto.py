"""Optimizer ``quantize.auto``: accuracy-aware mixed precision (INT8 + float).

1. Quantize everything (as ``quantize.static``) and measure the metric drop vs float: the
   session's ``eval_fn`` when given, else top-1 agreement (%) with the float model on the
   calibration batches.
2. If over ``max_accuracy_drop``: rank layers by sensitivity (SQNR with only that layer
   quantized; the metric too when ``rank_by_metric``), then keep the most sensitive layers in
   float one at a time until the drop is within budget; then try to re-quantize each of them
   (newest first) and keep it INT8 when the budget still holds (fewer float layers, faster).
3. Those layers' quantizers are switched off (an off quantizer is the identity, so the exported
   graph has no Q/DQ there and ONNX Runtime runs the layer in float); with ``measure_speed``
   the result and the float model are exported through the ``onnx`` exporter and timed on
   ONNX Runtime.

The lineage notes and ``metadata`` record the float layers, the metric before/after, the
sensitivity report and the measured speed.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import modelopt_core as mo

from .static import Observer, noop, quant_metadata, quant_props, spec_from

__all__ = ["AutoQuantize", "AutoConfig"]


@mo.config
class AutoConfig:
    """Options of ``quantize.auto``."""

    max_accuracy_drop: float = mo.field(1.0, validator=mo.in_range(0, 100),
                                        help="allowed metric drop vs float, in metric points")
    observer: Observer = mo.field("minmax", help="activation range calibration method")
    percentile: float = mo.field(99.99, validator=mo.in_range(50, 100, lo_open=True))
    per_channel: bool = mo.field(True, help="per-output-channel weight scales")
    activation_dtype: Literal["uint8", "int8"] = mo.field("uint8")
    symmetric_activations: bool = mo.field(False)
    skip_layers: tuple[str, ...] = mo.field((), help="layers always kept in float")
    rank_by_metric: bool = mo.field(False, help="rank layers by the eval metric with only "
                                    "that layer quantized (one eval per layer) instead of SQNR")
    calibration_batches: int = mo.field(32, validator=mo.positive)
    measure_speed: bool = mo.field(True, help="export and time float vs mixed on ONNX Runtime")


class AutoQuantize(mo.Optimizer):
    """INT8 with the most sensitive layers kept in float until within an accuracy budget."""

    name = "quantize.auto"
    stage = "precision"
    accepts = ("torch",)
    needs = ("calibration_data",)
    Config = AutoConfig

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        from .prepare import prepare_calibrated
        from .sensitivity import analyze, keep_float, set_quantized

        cfg = self.config
        batches = ctx.calibration_batches(self.name, cfg.calibration_batches)
        model, layers, notes = prepare_calibrated(artifact.model, batches, spec_from(cfg), ctx,
                                                  self.name)
        if not layers:
            return noop(self, artifact, ctx)
        metric, what = self._metric(artifact, ctx, batches)
        set_quantized(model, set())
        base = metric(model)
        set_quantized(model, None)
        full = metric(model)
        budget = cfg.max_accuracy_drop
        report = None
        floats: list[str] = []
        trail = [f"all INT8: {what} {full:.4g} (float {base:.4g})"]
        def mixed(int8: set[str]) -> float:
            """The metric of the final mixed form (float layers on float inputs), on a copy."""
            trial = copy.deepcopy(model)
            keep_float(trial, int8)
            return metric(trial)

        if base - full > budget:
            report = analyze(model, batches, metric if cfg.rank_by_metric else None,
                             ctx.progress)
            on = set(layers)
            for name in report.most_sensitive():
                on.discard(name)
                floats.append(name)
                score = mixed(on)
                trail.append(f"+float {name}: {score:.4g}")
                if base - score <= budget:
                    break
            if base - score <= budget:  # give back layers the budget turned out not to need
                for name in floats[-2::-1]:
                    score = mixed(on | {name})
                    if base - score <= budget:
                        on.add(name)
                        floats.remove(name)
                        trail.append(f"-float {name}: {score:.4g}")
            layers = [n for n in layers if n not in floats]
        if floats:  # float layers read float tensors (disabled quantizers export as nothing)
            keep_float(model, set(layers))
        else:
            set_quantized(model, None)
        final = metric(model)
        within = base - final <= budget
        if not within:
            ctx.warn(f"{self.name}: drop {base - final:.3g} exceeds max_accuracy_drop={budget} "
                     f"with {len(floats)} float layer(s)")
        notes.append(f"{what}: float {base:.4g}, INT8+float {final:.4g} (drop {base - final:.3g}"
                     f", budget {budget}); {len(layers)} layer(s) INT8, {len(floats)} kept in "
                     f"float: {floats or 'none'}")
        notes.append("search: " + "; ".join(trail))
        meta = quant_metadata(model, layers, tuple(cfg.skip_layers) + tuple(floats))
        meta.update({"auto_metric": what, "float_metric": base, "quantized_metric": final,
                     "within_budget": within,
                     "sensitivity": report.to_data() if report else []})
        restore = {"quantized_layers": list(layers), "float_layers": list(floats)}
        out = artifact.evolve(step=self.step(notes=notes, restore=restore), model=model,
                              metadata=meta, props=quant_props(model, batches[0]))
        if cfg.measure_speed:
            speed = _speed(artifact, out, ctx)
            if speed:
                notes.append(speed.pop("note"))
                meta.update(speed)
                out = artifact.evolve(step=self.step(notes=notes, restore=restore),
                                      model=model, metadata=meta)
        return out

    def rebuild(self, model: Any, example_inputs: tuple[Any, ...], metadata: Any,
                restore: Any = None) -> Any:
        """Traced graph + quantizers, with the layers the search kept in float switched off
        and reading float inputs, as :meth:`apply` left them. The layer lists come from the
        step's restore record (``metadata["quantized_layers"]`` / ``["float_layers"]`` for
        artifacts saved before per-step records)."""
        from .prepare import replay
        from .sensitivity import keep_float

        gm = replay(model, example_inputs, spec_from(self.config), self.name)
        if restore and "quantized_layers" in restore:
            floats, int8 = restore.get("float_layers"), restore["quantized_layers"]
        else:
            floats, int8 = metadata.get("float_layers"), metadata.get("quantized_layers", [])
        if gm is not None and floats:
            keep_float(gm, set(int8))
        return gm

    def _metric(self, artifact: mo.ModelArtifact, ctx: mo.Context,
                batches: list[tuple[Any, ...]]) -> tuple[Any, str]:
        import torch

        if ctx.eval_fn is not None:
            def run(m: torch.nn.Module) -> float:
                tmp = mo.ModelArtifact("torch", m, artifact.inputs, artifact.outputs,
                                       artifact.lineage, artifact.metadata)
                with ctx.runner(tmp, "torch") as r:
                    return float(ctx.eval_fn(r))
            return run, "eval metric"
        ctx.warn(f"{self.name}: no eval_fn; using top-1 agreement (%) with the float model on "
                 "the calibration data as the metric")
        ref = copy.deepcopy(artifact.model).eval()
        with torch.no_grad():
            refs = [ref(*b) for b in batches]
        refs = [r if isinstance(r, torch.Tensor) else r[0] for r in refs]

        def agree(m: torch.nn.Module) -> float:
            hit = tot = 0
            with torch.no_grad():
                for b, r in zip(batches, refs):
                    g = m(*b)
                    g = g if isinstance(g, torch.Tensor) else g[0]
                    hit += int((r.argmax(1) == g.argmax(1)).sum())
                    tot += r.shape[0]
            return 100.0 * hit / max(tot, 1)
        return agree, "top-1 agreement %"


def _speed(src: mo.ModelArtifact, mixed: mo.ModelArtifact, ctx: mo.Context) -> dict[str, Any]:
    """ONNX Runtime latency of the float and the mixed model (empty when unavailable)."""
    import time

    try:
        f32 = ctx.export(src, "onnx", check_numerics=False)
        q = ctx.export(mixed, "onnx", check_numerics=False)
        x = tuple(ctx.example_inputs)
        res = {}
        for key, art in (("ort_fp32_ms", f32), ("ort_mixed_ms", q)):
            with ctx.runner(art, "onnxruntime") as r:
                for _ in range(3):
                    r(*x)
                ts = []
                for _ in range(10):
                    t0 = time.perf_counter()
                    r(*x)
                    ts.append(time.perf_counter() - t0)
                res[key] = 1e3 * sorted(ts)[5]
    except Exception as e:  # speed is a report, never a reason to fail the step
        ctx.warn(f"quantize.auto: could not measure ONNX Runtime speed ({type(e).__name__}: {e})")
        return {}
    res["ort_speedup_vs_fp32"] = res["ort_fp32_ms"] / res["ort_mixed_ms"]
    res["note"] = (f"ONNX Runtime p50 on the example input: mixed {res['ort_mixed_ms']:.3g} ms vs "
                   f"FP32 {res['ort_fp32_ms']:.3g} ms ({res['ort_speedup_vs_fp32']:.2f}x)")
    return res
