"""``prune.slimming`` (network slimming, Liu et al. 2017): train with an L1 penalty on the
BatchNorm scales (gamma) so unimportant channels shrink toward zero, then physically remove
the channels with the smallest |gamma| (globally ranked) with Torch-Pruning."""

from __future__ import annotations

from typing import Any, Literal

import modelopt_core as mo

from .common import (amount_in_range, check_same_outputs, copy_model, count_macs_params,
                     format_delta, noop, run_outputs)
from .finetune import finetune, last_loss
from .structured import UNTIED_NOTE, has_candidates, kept_layers, structured_prune
from .untie import untie_splits


@mo.config
class SlimmingConfig:
    ratio: float = mo.field(0.5, validator=amount_in_range,
                            help="fraction of channels to remove after sparsity training",
                            search=mo.floats(0.1, 0.6, step=0.1))
    sparsity: float = mo.field(1e-4, validator=mo.in_range(0.0, 1.0),
                               search=mo.floats(1e-5, 1e-3, log=True),
                               help="L1 coefficient on BN gammas during sparsity training")
    epochs: int = mo.field(5, validator=mo.positive, help="sparsity-training epochs",
                           search=mo.ints(1, 5))
    lr: float = mo.field(1e-3, validator=mo.positive, help="sparsity-training learning rate")
    scope: Literal["local", "global"] = mo.field("global", help="rank gammas across layers")
    max_layer_ratio: float = mo.field(0.9, validator=amount_in_range,
                                      help="most a single layer may lose (global scope)")
    ignored_layers: tuple[str, ...] = mo.field((), help="qualified layer names to keep whole")
    round_to: int | None = mo.field(8, validator=mo.positive,
                                    help="keep channel counts a multiple of this")
    finetune_epochs: int = mo.field(0, validator=mo.in_range(0, 10_000),
                                    search=mo.ints(0, 3),
                                    help="fine-tuning epochs after removal (0: none)")


def bn_layers(model: Any) -> list[Any]:
    """BatchNorm layers with a learnable scale."""
    from torch import nn

    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]


class Slimming(mo.Optimizer):
    """Network slimming: L1 sparsity training on BN gamma, then structured removal by gamma."""

    name = "prune.slimming"
    stage = "structure"
    Config = SlimmingConfig
    needs = ("train_data",)
    requires = ("torch_pruning",)
    install_hint = "pip install torch-pruning"

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        cfg = self.config
        model = copy_model(artifact)
        mo.check_finite_weights(model, self.name, "pruning")
        xs = tuple(ctx.example_inputs)
        untied = untie_splits(model)
        bns = bn_layers(model)
        keep_names, heads = kept_layers(model, xs, cfg.ignored_layers, self.name)
        if not bns or not has_candidates(model, keep_names):
            return noop(self, artifact, ctx, "no BatchNorm-followed channels to slim")
        ref = run_outputs(model, xs)
        macs0, params0 = count_macs_params(model, xs)

        def l1(m: Any) -> Any:
            return cfg.sparsity * sum(bn.weight.abs().sum() for bn in bns)

        res = finetune(model, ctx, self.name, epochs=cfg.epochs, lr=cfg.lr, extra=l1)
        small = sum(int((bn.weight.abs() < 1e-2).sum()) for bn in bns)
        total = sum(bn.weight.numel() for bn in bns)
        notes = [f"sparsity training: {cfg.epochs} epoch(s), L1 {cfg.sparsity}, "
                 f"{last_loss(res)}; {small}/{total} gammas below 1e-2"]
        if untied:
            notes.append(UNTIED_NOTE.format(n=untied))
        mods = dict(model.named_modules())
        structured_prune(model, xs, cfg.ratio, importance="bn_gamma", scope=cfg.scope,
                         max_layer_ratio=cfg.max_layer_ratio,
                         ignored=[mods[n] for n in keep_names], round_to=cfg.round_to)
        model.eval()
        if cfg.finetune_epochs:
            res = finetune(model, ctx, self.name, epochs=cfg.finetune_epochs, lr=cfg.lr)
            notes.append(f"fine-tuned {cfg.finetune_epochs} epoch(s), {last_loss(res)}")
        check_same_outputs(self.name, ref, run_outputs(model, xs))
        macs1, params1 = count_macs_params(model, xs)
        notes += [f"removed channels by |gamma|, ratio {cfg.ratio} ({cfg.scope})",
                  format_delta("MACs", macs0, macs1), format_delta("params", params0, params1)]
        return artifact.evolve(step=self.step(notes=notes), model=model,
                               metadata={"macs": macs1, "params": params1,
                                         "macs_before": macs0, "params_before": params0})
