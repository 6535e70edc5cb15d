"""Optimizer ``quantize.qat``: quantization-aware training with the same quantizers as PTQ.

Steps: instrument a copy of the model with quantizers (BatchNorm kept, so it still trains),
initialise activation ranges by calibration (PTQ), then fine-tune with the shared loop
:func:`modelopt_core.training.fit`. Rounding uses a straight-through estimator; activation
scales either track the data (EMA of min/max) or are learned (LSQ, ``learnable_scales``);
weight ranges follow the weights (per-channel max). Late in training BatchNorm statistics and
all ranges are frozen (``freeze_bn_epoch`` / ``freeze_ranges_epoch``), then BatchNorm is folded
into the quantized convolutions with the per-channel weight scales rescaled exactly, so the
result exports to the same QDQ ONNX graph as ``quantize.static``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import modelopt_core as mo
from modelopt_core.sparsity import kept_zeros
from modelopt_core.training import TrainConfig, fit

from .static import Observer, noop, quant_metadata, quant_props, spec_from

if TYPE_CHECKING:  # torch is imported on use, never at plugin discovery
    from torch import nn

__all__ = ["QATQuantize", "QATConfig", "fold_bn_quantized"]


@mo.config
class QATConfig:
    """Options of ``quantize.qat``."""

    epochs: int = mo.field(3, validator=mo.positive, help="training epochs")
    steps: int | None = mo.field(None, validator=mo.positive,
                                 help="optimizer steps (overrides epochs)")
    lr: float = mo.field(1e-4, validator=mo.positive, help="peak learning rate")
    optimizer: Literal["adam", "adamw", "sgd"] = mo.field("adam", help="optimizer")
    schedule: Literal["cosine", "none", "step", "linear"] = mo.field("cosine")
    learnable_scales: bool = mo.field(False, help="learn activation scales (LSQ) instead of "
                                      "tracking them with an EMA")
    ema_momentum: float = mo.field(0.01, validator=mo.in_range(0, 1),
                                   help="EMA momentum of activation ranges before freezing")
    freeze_bn_epoch: int | None = mo.field(
        None, help="epoch from which BN statistics are frozen (default: 2/3 of epochs)")
    freeze_ranges_epoch: int | None = mo.field(
        None, help="epoch from which quantizer ranges are frozen (default: 2/3 of epochs)")
    observer: Observer = mo.field("minmax", help="calibration of the initial ranges")
    percentile: float = mo.field(99.99, validator=mo.in_range(50, 100, lo_open=True))
    per_channel: bool = mo.field(True, help="per-output-channel weight scales")
    activation_dtype: Literal["uint8", "int8"] = mo.field("uint8")
    symmetric_activations: bool = mo.field(False)
    skip_layers: tuple[str, ...] = mo.field((), help="Conv/Linear module names kept in float")
    calibration_batches: int = mo.field(16, validator=mo.positive,
                                        help="batches for the initial range calibration")
    seed: int = mo.field(0, help="training seed")


class QATQuantize(mo.Optimizer):
    """Quantization-aware training (STE, optional LSQ scales), exported as QDQ INT8."""

    name = "quantize.qat"
    stage = "precision"
    accepts = ("torch",)
    needs = ("train_data",)
    Config = QATConfig

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        from .graph import BNS, act_quantizers, weighted_layers
        from .prepare import prepare_calibrated

        cfg = self.config
        train = ctx.training_batches(self.name)
        if ctx.calibration_data is not None:
            batches = ctx.calibration_batches(self.name, cfg.calibration_batches)
        else:
            batches, train = _inputs_of(train, cfg.calibration_batches, self.name)
        model, layers, notes = prepare_calibrated(artifact.model, batches, spec_from(cfg), ctx,
                                                  self.name, fold=False)
        if not layers:
            return noop(self, artifact, ctx)
        kept = kept_zeros(model, artifact)  # earlier unstructured pruning stays exact
        late = max(1, (2 * cfg.epochs) // 3) if cfg.steps is None else 1
        bn_at = cfg.freeze_bn_epoch if cfg.freeze_bn_epoch is not None else late
        rng_at = cfg.freeze_ranges_epoch if cfg.freeze_ranges_epoch is not None else late
        acts = list(act_quantizers(model).values())
        wraps = list(weighted_layers(model).values())
        for q in acts:
            if cfg.learnable_scales:
                q.make_learnable()
            else:
                q.ema = cfg.ema_momentum
        for w in wraps:
            w.dynamic_weight_range = True

        def on_epoch_start(epoch: int, net: nn.Module) -> None:
            if epoch >= bn_at:
                for m in net.modules():
                    if isinstance(m, BNS):
                        m.eval()
            if epoch >= rng_at:
                for q in acts:
                    q.ema = None
                for w in wraps:
                    w.dynamic_weight_range = False

        tcfg = TrainConfig(epochs=cfg.epochs, steps=cfg.steps, lr=cfg.lr,
                           optimizer=cfg.optimizer, schedule=cfg.schedule, seed=cfg.seed)
        try:
            result = fit(model, train, config=tcfg, ctx=ctx, on_epoch_start=on_epoch_start,
                         masks=kept.masks)
        finally:
            on_epoch_start(10 ** 9, model)  # everything frozen from here on
        model.eval()
        folded = fold_bn_quantized(model)
        last = result.history[-1] if result.history else {}
        notes.append(f"QAT: {len(layers)} Conv/Linear layer(s), {len(result.history)} epoch(s), "
                     f"BN frozen from epoch {bn_at}, ranges frozen from epoch {rng_at}, "
                     f"{'LSQ' if cfg.learnable_scales else 'EMA'} activation scales; "
                     f"folded {folded} BatchNorm layer(s) after training; last loss "
                     f"{last.get('train_loss', float('nan')):.4g}")
        notes += kept.notes
        return artifact.evolve(step=self.step(notes=notes, restore=kept.restore), model=model,
                               metadata={**quant_metadata(model, layers, cfg.skip_layers),
                                         "train_history": result.history},
                               props=quant_props(model, batches[0]))


    def rebuild(self, model: nn.Module, example_inputs: tuple[Any, ...], metadata: Any,
                restore: Any = None) -> Any:
        """Traced graph + quantizers, learnable scales as trained, BatchNorm folded as
        :meth:`apply` left it (values come from the saved weights, the rest from the step's
        config: no restore record is needed)."""
        from .graph import act_quantizers
        from .prepare import replay

        gm = replay(model, example_inputs, spec_from(self.config), self.name, fold=False)
        if gm is None:  # nothing quantized, or the skeleton is the QAT model itself
            return None
        if self.config.learnable_scales:
            for q in act_quantizers(gm).values():
                q.make_learnable()
        fold_bn_quantized(gm)
        return gm.eval()


def _inputs_of(train: Any, limit: int, who: str) -> tuple[list[tuple[Any, ...]], Any]:
    """Calibration inputs from the first training batches, and the training data to use
    afterwards (a one-shot iterator gets the drawn batches put back in front)."""
    out, drawn = [], []
    for item in train:
        drawn.append(item)
        out.append(mo.as_input_tuple(item[0]))
        if len(out) >= limit:
            break
    if not out:
        raise mo.DataError(f"{who}: train_data is empty; give at least one (inputs, targets).")
    if isinstance(train, Iterator):
        train = itertools.chain(drawn, train)
    return out, train


def fold_bn_quantized(model: nn.Module) -> int:
    """Fold eval-mode BatchNorm into the quantized Conv/Linear feeding it (in place).

    Per-channel symmetric weight quantization commutes with folding: the scale of channel c
    is multiplied by ``|gamma_c / sqrt(var_c + eps)|``, so the folded model computes exactly
    what was trained. Per-tensor weight scales are recomputed from the folded weights."""
    import torch
    from torch import fx, nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    from .fake_quant import FakeQuant, QuantConv, QuantLinear
    from .graph import BNS

    if not isinstance(model, fx.GraphModule):
        return 0
    mods = dict(model.named_modules())
    n = 0
    for node in list(model.graph.nodes):
        if node.op != "call_module" or not isinstance(mods.get(node.target), BNS):
            continue
        prev = node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        q, bn = mods.get(prev.target), mods[node.target]
        if not isinstance(q, (QuantConv, QuantLinear)) or bn.running_var is None:
            continue
        if isinstance(q, QuantLinear) and not isinstance(bn, nn.BatchNorm1d):
            continue
        factor = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(
            bn.running_var + bn.eps)
        fuse = fuse_conv_bn_eval if isinstance(q, QuantConv) else fuse_linear_bn_eval
        q.layer = fuse(q.layer.eval(), bn.eval())
        wq: FakeQuant = q.weight_quant
        if wq.axis is not None and not wq.learnable:
            s = wq.scale.detach() * factor.detach().abs()
            wq._store(torch.where(s > 1e-30, s, torch.ones_like(s)), wq.zero_point)
        else:
            wq.observe_weight(q.layer.weight)
        node.replace_all_uses_with(prev)
        model.graph.erase_node(node)
        n += 1
    model.graph.lint()
    model.recompile()
    model.delete_all_unused_submodules()
    return n
