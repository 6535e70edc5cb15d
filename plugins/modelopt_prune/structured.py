"""``prune.structured``: physical channel/filter removal with Torch-Pruning's DependencyGraph.

Coupled layers (residual adds, concats, depthwise convs, BatchNorm, upsampling) are pruned
together so the graph stays valid; the layers producing the model's outputs (classifier,
detection heads) keep their output channels. Instead of a ratio, ``target_speedup`` prunes in
increments and measures real latency on a backend until the speedup is met.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from typing import Any, Literal

import modelopt_core as mo

from .common import (amount_in_range, check_same_outputs, copy_model, count_macs_params,
                     format_delta, noop, output_layer_names, prunable_layers, resolve_names,
                     run_outputs)
from .untie import fixed_heads, retie_splits, untie_splits

Importance = Literal["l1", "l2", "bn_gamma", "taylor"]
#: the note of a step that untied split convolutions (see :mod:`.untie`)
UNTIED_NOTE = ("{n} C2f/C3k2/C2PSA block(s): split conv untied into two convs before pruning "
               "(same outputs; Torch-Pruning cannot prune through the split)")


@mo.config
class StructuredConfig:
    ratio: float = mo.field(0.5, validator=amount_in_range,
                            help="fraction of prunable channels to remove, in [0, 1)",
                            search=mo.floats(0.1, 0.6, step=0.1))
    importance: Importance = mo.field("l1", search=mo.choice("l1", "l2", "bn_gamma"), help="channel importance: l1/l2 filter norm, "
                                      "bn_gamma (|BN scale|) or taylor (first order, train data)")
    scope: Literal["local", "global"] = mo.field(
        "local", search=mo.choice("local", "global"), help="local: same ratio per layer; global: rank channels across layers")
    max_layer_ratio: float = mo.field(0.9, validator=amount_in_range,
                                      help="global scope: most a single layer may lose")
    ignored_layers: tuple[str, ...] = mo.field((), help="qualified layer names to keep whole")
    round_to: int | None = mo.field(8, validator=mo.positive,
                                    help="keep channel counts a multiple of this")
    taylor_batches: int = mo.field(8, validator=mo.positive,
                                   help="training batches for taylor importance")
    target_speedup: float | None = mo.field(
        None, validator=mo.in_range(1.0, 1000.0, lo_open=True),
        help="prune until this measured speedup (instead of ratio)")
    backend: Literal["torch", "onnxruntime"] = mo.field(
        "torch", help="backend measured for target_speedup")
    speedup_step: float = mo.field(0.05, validator=mo.in_range(0.0, 0.5, lo_open=True),
                                   help="ratio increment per target_speedup trial")
    max_ratio: float = mo.field(0.9, validator=amount_in_range,
                                help="target_speedup: never prune beyond this ratio")
    latency_iterations: int = mo.field(10, validator=mo.positive,
                                       help="timed runs per latency measurement")


def make_importance(kind: str) -> Any:
    """The Torch-Pruning importance object for ``kind``."""
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "bn_gamma":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupTaylorImportance()


def _loss(out: Any, y: Any) -> Any:
    import torch
    from torch.nn import functional as F

    if isinstance(out, (tuple, list)):
        out = out[0]
    if y is not None and y.dtype in (torch.long, torch.int64, torch.int32) and out.dim() == 2:
        return F.cross_entropy(out, y.long())
    if y is not None and y.shape == out.shape:
        return F.mse_loss(out, y.to(out.dtype))
    return out.pow(2).mean()  # no usable target: sensitivity of the output energy


def accumulate_taylor_grads(model: Any, batches: Sequence[Any], limit: int) -> int:
    """Accumulate parameter gradients of the task loss over ``limit`` training batches."""
    from modelopt_core import as_input_tuple

    model.zero_grad()
    n = 0
    for item in batches:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            xs, y = as_input_tuple(item[0]), item[1]
        else:
            xs, y = as_input_tuple(item), None
        _loss(model(*xs), y).backward()
        n += 1
        if n >= limit:
            break
    return n


def _channels(m: Any) -> int:
    from torch import nn

    if isinstance(m, nn.modules.conv._ConvNd):
        return m.out_channels
    if isinstance(m, nn.Linear):
        return m.out_features
    return 0


def nearest_multiple_ratio(channels: int, ratio: float, round_to: int) -> float:
    """Per-layer ratio keeping the multiple of ``round_to`` nearest to ``channels*(1-ratio)``
    (at least ``round_to``; layers already at or below ``round_to`` channels stay whole).
    Torch-Pruning keeps ``int(c * (1 - r))`` channels, floored to the multiple: +0.5 makes the
    int() exact."""
    kept = max(round_to, int(round(channels * (1 - ratio) / round_to)) * round_to)
    kept = min(kept, channels)
    return 1.0 - (kept + 0.5) / channels


def structured_prune(model: Any, example_inputs: Sequence[Any], ratio: float, *,
                     importance: str = "l1", scope: str = "local", max_layer_ratio: float = 0.9,
                     ignored: Sequence[Any] = (), round_to: int | None = 8,
                     train_batches: Sequence[Any] | None = None, taylor_batches: int = 8) -> Any:
    """Physically remove ``ratio`` of the channels of ``model`` (in place); returns it."""
    import torch
    import torch_pruning as tp

    xs = tuple(example_inputs)
    if ratio <= 0:
        return model
    imp = make_importance(importance)
    per_layer = None
    if scope == "local" and round_to:
        per_layer = {m: nearest_multiple_ratio(_channels(m), ratio, round_to)
                     for m in model.modules() if _channels(m)}
    pruner = tp.pruner.BasePruner(
        model, xs if len(xs) > 1 else xs[0], importance=imp, pruning_ratio=ratio,
        pruning_ratio_dict=per_layer,
        global_pruning=scope == "global", max_pruning_ratio=max_layer_ratio,
        ignored_layers=list(ignored), round_to=round_to,
        forward_fn=(lambda m, inp: m(*inp)) if len(xs) > 1 else None)
    if importance == "taylor":
        model.eval()
        with torch.enable_grad():
            if not accumulate_taylor_grads(model, train_batches or [], taylor_batches):
                raise mo.DataError("prune.structured: importance='taylor' needs training "
                                   "batches; pass Session(train_data=...).")
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def kept_layers(model: Any, example_inputs: Sequence[Any], ignored: Sequence[str],
                who: str) -> tuple[list[str], list[str]]:
    """(names of layers to keep whole: ignored + output layers, the output layer names)."""
    resolve_names(model, ignored, who, "ignored_layers")
    heads = output_layer_names(model, example_inputs)
    return list(dict.fromkeys(list(ignored) + heads + fixed_heads(model))), heads


def has_candidates(model: Any, keep_names: Sequence[str]) -> bool:
    """True when some Conv/Linear layer is not kept whole."""
    return any(n not in keep_names for n in prunable_layers(model))


def measure_latency(runner: Any, xs: Sequence[Any], iterations: int) -> float:
    """Median seconds per call after warm-up."""
    for _ in range(3):
        runner(*xs)
    runner.synchronize()
    ts = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        runner(*xs)
        runner.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _runner_for(model: Any, artifact: mo.ModelArtifact, ctx: mo.Context, backend: str) -> Any:
    probe = artifact.evolve(step=mo.Step("latency-probe", "optimize"), model=model)
    if backend == "onnxruntime":  # the TorchScript exporter: fast, and enough for timing
        probe = ctx.export(probe, "onnx", exporter="torchscript", check_numerics=False)
    return ctx.runner(probe, backend)


class StructuredPrune(mo.Optimizer):
    """Structured channel pruning (Torch-Pruning): physically removes filters, keeps the graph
    valid across residuals, concats, depthwise convs and BatchNorm."""

    name = "prune.structured"
    stage = "structure"
    Config = StructuredConfig
    requires = ("torch_pruning",)
    install_hint = "pip install torch-pruning"

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        cfg = self.config
        base = copy_model(artifact)
        mo.check_finite_weights(base, self.name, "pruning")
        xs = tuple(ctx.example_inputs)
        untied = untie_splits(base)
        keep_names, heads = kept_layers(base, xs, cfg.ignored_layers, self.name)
        if not has_candidates(base, keep_names):
            return noop(self, artifact, ctx, "no prunable Conv/Linear layers besides the "
                        "output layers and ignored_layers")
        train = ctx.training_batches(self.name) if cfg.importance == "taylor" else None
        ref = run_outputs(base, xs)
        macs0, params0 = count_macs_params(base, xs)
        notes: list[str] = [f"kept output layers: {', '.join(heads)}"]
        if untied:
            notes.append(UNTIED_NOTE.format(n=untied))
        meta: dict[str, Any] = {}

        def prune_at(ratio: float) -> Any:
            m = copy.deepcopy(base)
            mods = dict(m.named_modules())
            return structured_prune(m, xs, ratio, importance=cfg.importance, scope=cfg.scope,
                                    max_layer_ratio=cfg.max_layer_ratio,
                                    ignored=[mods[n] for n in keep_names],
                                    round_to=cfg.round_to, train_batches=train,
                                    taylor_batches=cfg.taylor_batches).eval()

        if cfg.target_speedup is None:
            model, ratio = prune_at(cfg.ratio), cfg.ratio
        else:
            model, ratio = self._search(base, prune_at, artifact, ctx, notes, meta)
        if untied:
            retied = retie_splits(model)
            notes.append(f"{retied} pruned block(s) tied again: one conv, split into the "
                         "pruned halves")
        check_same_outputs(self.name, ref, run_outputs(model, xs))
        macs1, params1 = count_macs_params(model, xs)
        if ratio > 0 and params1 == params0:
            other = "'l2'" if cfg.importance == "l1" else "'l1'"
            ctx.warn(f"{self.name}: no channel was removed (importance {cfg.importance!r} gave "
                     f"tied scores or round_to kept every layer whole); try importance={other}, "
                     "a larger ratio or a smaller round_to")
        notes += [f"ratio {ratio:.3g}, importance {cfg.importance}, scope {cfg.scope}, "
                  f"round_to {cfg.round_to}", format_delta("MACs", macs0, macs1),
                  format_delta("params", params0, params1)]
        meta.update({"macs": macs1, "params": params1, "macs_before": macs0,
                     "params_before": params0, "pruning_ratio": ratio})
        return artifact.evolve(step=self.step(notes=notes), model=model, metadata=meta)

    def _search(self, base: Any, prune_at: Any, artifact: mo.ModelArtifact, ctx: mo.Context,
                notes: list[str], meta: dict[str, Any]) -> tuple[Any, float]:
        cfg = self.config
        xs = tuple(ctx.example_inputs)

        def latency(m: Any) -> float:
            with _runner_for(m, artifact, ctx, cfg.backend) as r:
                return measure_latency(r, xs, cfg.latency_iterations)

        t0 = latency(base)
        best, best_ratio, speedup = base, 0.0, 1.0
        ratio = cfg.speedup_step
        trials = []
        while ratio <= cfg.max_ratio + 1e-9:
            cand = prune_at(ratio)
            s = t0 / latency(cand)
            trials.append(f"{ratio:.2f}:{s:.2f}x")
            best, best_ratio, speedup = cand, ratio, s
            if s >= cfg.target_speedup:
                break
            ratio = round(ratio + cfg.speedup_step, 6)
        notes.append(f"target_speedup {cfg.target_speedup}x on {cfg.backend}: trials "
                     f"(ratio:speedup) {', '.join(trials)}")
        if speedup < cfg.target_speedup:
            ctx.warn(f"{self.name}: target_speedup {cfg.target_speedup}x not reached on "
                     f"{cfg.backend} (best {speedup:.2f}x at ratio {best_ratio:.2f} = max_ratio);"
                     " raise max_ratio or lower the target")
        meta.update({"measured_speedup": speedup, "speedup_backend": cfg.backend})
        return best, best_ratio
