"""``prune.iterative``: N rounds of pruning + fine-tuning (plain training or distillation from
the session's original model), reaching the final ``ratio`` gradually.

``method="structured"`` (default) removes channels: each round removes
``1 - (1 - ratio) ** (1 / rounds)`` of the channels left. ``method="unstructured"`` zeroes
weights by magnitude (per layer, or over all layers with ``scope="global"``): after round r the
sparsity is ``1 - (1 - ratio) ** (r / rounds)``, the last round exactly ``round(ratio * n)``
zeros per layer (global: over all the layers' weights), as ``prune.unstructured`` does.

Fine-tuning keeps every zero of unstructured pruning fixed (the masks are re-applied after each
optimizer step): the zeros of this step's own rounds, and those of earlier
``prune.unstructured`` / ``prune.global`` steps in the lineage (in the channels that survive a
structured round). The result is exactly as sparse as pruned, and the restore record lists the
sparse tensors so later training steps keep them too."""

from __future__ import annotations

from typing import Any, Literal

import modelopt_core as mo

from .common import (amount_in_range, check_same_outputs, copy_model, count_macs_params,
                     format_delta, noop, run_outputs)
from .finetune import finetune, last_loss
from .structured import (UNTIED_NOTE, Importance, has_candidates, kept_layers,
                         structured_prune)
from .untie import untie_splits
from .unstructured import magnitude_mask_


@mo.config
class IterativeConfig:
    ratio: float = mo.field(0.5, validator=amount_in_range,
                            help="fraction of channels (structured) or weights (unstructured) "
                                 "removed after all rounds")
    method: Literal["structured", "unstructured"] = mo.field(
        "structured", help="remove channels, or zero single weights by magnitude (the zeros "
                           "are kept fixed while fine-tuning)")
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
    stage = "structure"
    Config = IterativeConfig
    needs = ("train_data",)
    requires = ("torch_pruning",)
    install_hint = "pip install torch-pruning"

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        from modelopt_core.sparsity import SPARSE_RECORD, KeptZeros, kept_zeros, zero_masks

        cfg = self.config
        model = copy_model(artifact)
        mo.check_finite_weights(model, self.name, "pruning")
        earlier = kept_zeros(model, artifact)  # zeros of earlier unstructured steps: kept
        if cfg.method == "unstructured":
            return self._unstructured(artifact, model, ctx, sorted(earlier.masks))
        xs = tuple(ctx.example_inputs)
        untied = untie_splits(model)
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
        if untied:
            notes.append(UNTIED_NOTE.format(n=untied))
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
                               alpha=cfg.alpha, keep_zero=sorted(earlier.masks))
                row["train"] = last_loss(res)
            if cfg.evaluate and ctx.eval_fn is not None:
                row["metric"] = round(float(ctx.eval_fn(model)), 4)
            history.append(row)
            notes.append(", ".join(f"{k} {v}" for k, v in row.items()))
        check_same_outputs(self.name, ref, run_outputs(model, xs))
        macs1, params1 = count_macs_params(model, xs)
        notes += [format_delta("MACs", macs0, macs1), format_delta("params", params0, params1)]
        if cfg.epochs_per_round and earlier.masks:  # counted in the channels that survived
            notes += KeptZeros(zero_masks(model, sorted(earlier.masks))[0], earlier.missing,
                               earlier.source).notes
        restore = {SPARSE_RECORD: sorted(earlier.masks)} if earlier.masks else {}
        return artifact.evolve(step=self.step(notes=notes, restore=restore), model=model,
                               metadata={"macs": macs1, "params": params1,
                                         "macs_before": macs0, "params_before": params0,
                                         "iterative_history": history})


    def _unstructured(self, artifact: mo.ModelArtifact, model: Any, ctx: mo.Context,
                      earlier: list[str]) -> mo.ModelArtifact:
        """Gradual magnitude pruning: each round raises the sparsity, then fine-tunes with
        every zero kept; the last round reaches exactly ``round(ratio * n)`` zeros."""
        from modelopt_core.sparsity import SPARSE_RECORD

        from .common import prunable_layers, resolve_names

        cfg = self.config
        skip = {id(m) for m in resolve_names(model, cfg.ignored_layers, self.name,
                                             "ignored_layers")}
        layers = {n: m for n, m in prunable_layers(model).items()
                  if id(m) not in skip and getattr(m, "weight", None) is not None}
        if not layers:
            return noop(self, artifact, ctx, "no Conv/Linear layers to prune")
        if cfg.epochs_per_round:
            ctx.training_batches(self.name)  # missing / malformed train_data fails early
        sparse = sorted(set(earlier) | {f"{n}.weight" for n in layers})
        notes = [(f"{cfg.rounds} round(s) of {cfg.scope} unstructured magnitude pruning to "
                  f"{cfg.ratio:.3f}; fine-tuning by "
                  f"{'distillation from the original' if cfg.distill else 'training'} with "
                  "every zero kept fixed")]
        history: list[dict[str, Any]] = []
        weights = [m.weight for m in layers.values()]
        total = sum(w.numel() for w in weights)
        for r in range(cfg.rounds):
            target = (cfg.ratio if r == cfg.rounds - 1
                      else 1.0 - (1.0 - cfg.ratio) ** ((r + 1) / cfg.rounds))
            if cfg.scope == "global":
                magnitude_mask_(weights, target)
            else:
                for w in weights:
                    magnitude_mask_([w], target)
            model.eval()
            zeros = sum(int((w == 0).sum()) for w in weights)
            row: dict[str, Any] = {"round": r + 1, "sparsity": round(zeros / total, 4)}
            if cfg.epochs_per_round:
                res = finetune(model, ctx, self.name, epochs=cfg.epochs_per_round, lr=cfg.lr,
                               distill=cfg.distill, temperature=cfg.temperature,
                               alpha=cfg.alpha, keep_zero=sparse)
                row["train"] = last_loss(res)
            if cfg.evaluate and ctx.eval_fn is not None:
                row["metric"] = round(float(ctx.eval_fn(model)), 4)
            history.append(row)
            notes.append(", ".join(f"{k} {v}" for k, v in row.items()))
        zeros = sum(int((w == 0).sum()) for w in weights)
        per_layer = {n: round(float((m.weight == 0).float().mean()), 4)
                     for n, m in layers.items()}
        notes.append("per-layer sparsity: " + ", ".join(f"{n}={v:.2f}"
                                                         for n, v in per_layer.items()))
        return artifact.evolve(step=self.step(notes=notes, restore={SPARSE_RECORD: sparse}),
                               model=model,
                               metadata={"sparsity": zeros / max(total, 1),
                                         "layer_sparsity": per_layer,
                                         "iterative_history": history})


def params_of(model: Any) -> int:
    """Parameter count (a round that changes it pruned something)."""
    return sum(p.numel() for p in model.parameters())
