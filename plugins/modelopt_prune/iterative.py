"""``prune.iterative``: N rounds of structured pruning + fine-tuning (plain training or
distillation from the session's original model), reaching the final ``ratio`` gradually:
each round removes ``1 - (1 - ratio) ** (1 / rounds)`` of the channels left."""

from __future__ import annotations

from typing import Any, Literal

import modelopt_core as mo

from .common import (amount_in_range, check_same_outputs, copy_model, count_macs_params,
                     format_delta, noop, run_outputs)
from .finetune import finetune, last_loss
from .structured import Importance, has_candidates, kept_layers, structured_prune


@mo.config
class IterativeConfig:
    ratio: float = mo.field(0.5, validator=amount_in_range,
                            help="fraction of channels removed after all rounds")
    rounds: int = mo.field(3, validator=mo.in_range(1, 100), help="prune + fine-tune rounds")
    importance: Importance = mo.field("l1", help="channel importance criterion")
    scope: Literal["local", "global"] = mo.field("local")
    max_layer_ratio: float = mo.field(0.9, validator=amount_in_range)
    ignored_layers: tuple[str, ...] = mo.field((), help="qualified layer names to keep whole")
    round_to: int | None = mo.field(8, validator=mo.positive)
    epochs_per_round: int = mo.field(1, validator=mo.in_range(0, 10_000),
                                     help="fine-tuning epochs after each round")
    lr: float = mo.field(1e-3, validator=mo.positive, help="fine-tuning learning rate")
    distill: bool = mo.field(False, help="fine-tune by distillation from the original model")
    temperature: float = mo.field(4.0, validator=mo.positive, help="KD temperature")
    alpha: float = mo.field(0.9, validator=mo.in_range(0.0, 1.0),
                            help="weight of the soft (KD) term vs cross-entropy")
    evaluate: bool = mo.field(True, help="run the session eval_fn after each round")


class IterativePrune(mo.Optimizer):
    """Iterative structured pruning: N rounds of prune + fine-tune (optionally distilled)."""

    name = "prune.iterative"
    Config = IterativeConfig
    needs = ("train_data",)
    requires = ("torch_pruning",)
    install_hint = "pip install torch-pruning"

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        cfg = self.config
        model = copy_model(artifact)
        mo.check_finite_weights(model, self.name, "pruning")
        xs = tuple(ctx.example_inputs)
        keep_names, heads = kept_layers(model, xs, cfg.ignored_layers, self.name)
        if not has_candidates(model, keep_names):
            return noop(self, artifact, ctx, "no prunable Conv/Linear layers besides the "
                        "output layers and ignored_layers")
        train = ctx.training_batches(self.name)
        ref = run_outputs(model, xs)
        macs0, params0 = count_macs_params(model, xs)
        per_round = 1.0 - (1.0 - cfg.ratio) ** (1.0 / cfg.rounds)
        notes = [f"{cfg.rounds} round(s) of {per_round:.3f} each; fine-tuning by "
                 f"{'distillation from the original' if cfg.distill else 'training'}"]
        history: list[dict[str, Any]] = []
        for r in range(cfg.rounds):
            before = params_of(model)
            mods = dict(model.named_modules())
            structured_prune(model, xs, per_round, importance=cfg.importance, scope=cfg.scope,
                             max_layer_ratio=cfg.max_layer_ratio,
                             ignored=[mods[n] for n in keep_names], round_to=cfg.round_to,
                             train_batches=train)
            model.eval()
            if params_of(model) == before:
                ctx.warn(f"{self.name}: round {r + 1} removed no channel (each layer's "
                         f"{per_round:.1%} share rounds to 0 with round_to={cfg.round_to}); "
                         "use fewer rounds, a larger ratio, or round_to=None")
            row: dict[str, Any] = {"round": r + 1,
                                   "macs": count_macs_params(model, xs)[0]}
            if cfg.epochs_per_round:
                res = finetune(model, ctx, self.name, epochs=cfg.epochs_per_round, lr=cfg.lr,
                               distill=cfg.distill, temperature=cfg.temperature,
                               alpha=cfg.alpha)
                row["train"] = last_loss(res)
            if cfg.evaluate and ctx.eval_fn is not None:
                row["metric"] = round(float(ctx.eval_fn(model)), 4)
            history.append(row)
            notes.append(", ".join(f"{k} {v}" for k, v in row.items()))
        check_same_outputs(self.name, ref, run_outputs(model, xs))
        macs1, params1 = count_macs_params(model, xs)
        notes += [format_delta("MACs", macs0, macs1), format_delta("params", params0, params1)]
        return artifact.evolve(step=self.step(notes=notes), model=model,
                               metadata={"macs": macs1, "params": params1,
                                         "macs_before": macs0, "params_before": params0,
                                         "iterative_history": history})


def params_of(model: Any) -> int:
    """Parameter count (a round that changes it pruned something)."""
    return sum(p.numel() for p in model.parameters())
