"""``distill.features``: match intermediate representations (FitNets-style), with adapters
built automatically when student and teacher layers differ in channels or spatial size.

Layers are named ``"<module name>"`` (its first call in a forward) or ``"<module name>#k"``
(its k-th call, for modules used several times, like a shared upsample). Without ``pairs``,
layers are chosen automatically: the model outputs that come from modules (detector heads)
plus the ends of the resolution stages, spaced over the depth; pairs match by name when the
student keeps the teacher's layer names (pruned models), otherwise by relative depth.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any, ClassVar, Literal

import modelopt_core as mo
from modelopt_core.sparsity import kept_zeros

from .common import (DistillConfig, first_output, frozen_copy, history_data, kd_loss,
                     resolve_teacher, run_fit, summary_notes)
from .logits import _first_inputs

__all__ = ["FeatureDistill", "FeatureRecorder", "probe_layers", "auto_layers"]


class FeatureRecorder:
    """Forward hooks that keep the output of selected layers ("name" or "name#k")."""

    def __init__(self, model: Any, specs: list[str], who: str) -> None:
        self.specs = specs
        self.outputs: dict[str, Any] = {}
        self._calls: dict[str, int] = {}
        self._handles = []
        wanted: dict[str, list[tuple[int, str]]] = {}
        for spec in specs:
            name, _, k = spec.partition("#")
            wanted.setdefault(name, []).append((int(k) if k else 0, spec))
        mods = dict(model.named_modules())
        for name, calls in wanted.items():
            if name not in mods or name == "":
                raise mo.ConfigError(f"{who}: the model has no layer {name!r}; some layer names: "
                                     f"{[n for n in mods if n][:12]}.")
            self._handles.append(mods[name].register_forward_hook(self._hook(name, calls)))

    def _hook(self, name: str, calls: list[tuple[int, str]]) -> Any:
        def hook(mod: Any, args: Any, out: Any) -> None:
            k = self._calls.get(name, 0)
            self._calls[name] = k + 1
            for want, spec in calls:
                if want == k:
                    self.outputs[spec] = first_output(out)
        return hook

    def reset(self) -> None:
        """Forget the outputs of the previous forward."""
        self.outputs, self._calls = {}, {}

    def get(self, spec: str, who: str) -> Any:
        """The recorded output of ``spec`` (ConfigError if the layer did not run)."""
        if spec not in self.outputs:
            raise mo.ConfigError(f"{who}: layer {spec!r} did not run in the forward pass (or ran "
                                 "fewer times than its #k index).")
        return self.outputs[spec]

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()


def probe_layers(model: Any, inputs: tuple[Any, ...], train: bool = False
                 ) -> tuple[list[tuple[str, tuple]], set]:
    """Run ``model`` once (in eval mode, or with ``train`` a copy in training mode, whose
    forward may differ: a detector's head skips its box decoding); return its executed layers
    ``[(spec, shape)]`` in order (one entry per distinct tensor, the outermost module that
    returned it) and the specs of its outputs."""
    import torch

    if train:
        model = copy.deepcopy(model)

    order: list[list[Any]] = []  # [spec, shape, tensor]
    by_tensor: dict[int, int] = {}
    calls: dict[str, int] = {}
    handles = []

    def hook_for(name: str) -> Any:
        def hook(mod: Any, args: Any, out: Any) -> None:
            k = calls.get(name, 0)
            calls[name] = k + 1
            if not isinstance(out, torch.Tensor):
                return
            spec = name if k == 0 else f"{name}#{k}"
            if id(out) in by_tensor:  # an enclosing container returned the same tensor
                order[by_tensor[id(out)]][0] = spec
                return
            by_tensor[id(out)] = len(order)
            order.append([spec, tuple(out.shape), out])
        return hook

    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_hook(hook_for(name)))
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            out = model.train(train)(*inputs)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    outs = out if isinstance(out, (tuple, list)) else (out,)
    out_specs = {order[by_tensor[id(o)]][0] for o in outs if id(o) in by_tensor}
    return [(spec, shape) for spec, shape, _ in order], out_specs


def auto_layers(layers: list[tuple[str, tuple]], out_specs: set, k: int) -> list[str]:
    """Pick up to ``k`` layers: module outputs with >= 3 dims (detector heads) first, then
    stage ends (last layer before the resolution changes) spaced over the depth."""
    feats = [(s, sh) for s, sh in layers if len(sh) >= 3]
    outs = [s for s, _ in feats if s in out_specs][:k]

    def res(sh: tuple) -> tuple:
        return sh[2:] if len(sh) == 4 else sh[1:2]

    ends = [s for i, (s, sh) in enumerate(feats)
            if s not in out_specs and (i == len(feats) - 1 or res(feats[i + 1][1]) != res(sh))]
    room = k - len(outs)
    if room <= 0 or not ends:
        chosen = set(outs)
    else:
        n = len(ends)
        picks = sorted({min(n - 1, max(0, round((i + 1) * n / room) - 1)) for i in range(room)})
        chosen = set(outs) | {ends[i] for i in picks}
    return [s for s, _ in feats if s in chosen]


class FeatureDistill(mo.Optimizer):
    """Feature distillation: student layers regress teacher layers through adapters."""

    name: ClassVar[str] = "distill.features"
    stage = "recover"
    accepts: ClassVar[tuple[str, ...]] = ("torch",)
    needs: ClassVar[tuple[str, ...]] = ("train_data",)

    @mo.config
    class Config(DistillConfig):
        pairs: tuple[tuple[str, str], ...] | None = mo.field(
            None, help="(student layer, teacher layer) names; None: automatic by depth")
        weights: tuple[float, ...] | None = mo.field(None, help="loss weight per pair")
        max_pairs: int = mo.field(4, validator=mo.positive, help="automatic pairs, at most")
        feature_loss: Literal["mse", "smooth_l1", "cosine"] = mo.field(
            "mse", help="distance between adapted student and teacher features")
        feature_weight: float = mo.field(1.0, help="weight of the summed feature losses")
        task_weight: float = mo.field(1.0, help="weight of the task term: the session's "
                                                "task_loss, else hard-label CE when targets "
                                                "are class labels (ignored otherwise)")
        kd_weight: float = mo.field(0.0, help="weight of logit KD on output 0 (same shapes)")
        temperature: float = mo.field(4.0, validator=mo.positive, help="temperature of kd")

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        import torch

        cfg = self.config
        teacher_src = resolve_teacher(cfg.teacher, ctx, self.name)
        t_model = getattr(teacher_src, "model", teacher_src)
        if isinstance(teacher_src, mo.ModelArtifact) and teacher_src.format != "torch":
            raise mo.FormatError(f"{self.name}: the teacher ({cfg.teacher}) is a "
                                 f"{teacher_src.format!r} artifact; feature distillation needs "
                                 "a torch teacher to read its layers.")
        teacher = frozen_copy(t_model)
        student = copy.deepcopy(artifact.model)
        kept = kept_zeros(student, artifact)  # earlier unstructured pruning stays exact
        first = _first_inputs(ctx, self.name)
        pairs, weights, adapters, notes = self._plan(student, teacher, first)
        device = torch.device(cfg.device or ctx.device)
        adapters.to(device)
        teacher.to(device)
        s_rec = FeatureRecorder(student, [p[0] for p in pairs], self.name)
        t_rec = FeatureRecorder(teacher, [p[1] for p in pairs], self.name)
        warned: list[bool] = []

        def loss_fn(model: Any, inputs: tuple[Any, ...], targets: Any) -> Any:
            s_rec.reset()
            t_rec.reset()
            s_out = model(*inputs)
            with torch.no_grad():
                t_out = teacher(*inputs)
            loss = 0.0
            for (sp, tp), w, ad in zip(pairs, weights, adapters):
                s = ad(s_rec.get(sp, self.name).float())
                loss = loss + w * _distance(s, t_rec.get(tp, self.name).float(),
                                            cfg.feature_loss)
            loss = cfg.feature_weight * loss
            s0, t0 = first_output(s_out), first_output(t_out)
            if cfg.kd_weight and s0.shape == t0.shape:
                loss = loss + cfg.kd_weight * kd_loss(s0, t0, None, cfg.temperature, 1.0)
            if cfg.task_weight and ctx.task_loss is not None:  # the session's own task loss
                loss = loss + cfg.task_weight * ctx.task_loss(s_out, targets)
            elif cfg.task_weight and _is_labels(targets, s0):
                loss = loss + cfg.task_weight * torch.nn.functional.cross_entropy(
                    s0.float(), targets)
            elif cfg.task_weight and not warned:
                warned.append(True)
                ctx.warn(f"{self.name}: targets are not class labels for output 0; training "
                         "on the distillation losses only.")
            return loss

        try:
            result = run_fit(self.name, student, ctx, cfg, loss_fn,
                             params=list(student.parameters()) + list(adapters.parameters()),
                             masks=kept.masks)
        finally:
            s_rec.close()
            t_rec.close()
        student.eval()
        return artifact.evolve(step=self.step(notes=notes + summary_notes(result) + kept.notes,
                                              restore=kept.restore),
                               model=student, metadata={"train_history": history_data(result)})

    def _plan(self, student: Any, teacher: Any, inputs: tuple[Any, ...]) -> tuple:
        """Choose pairs, check them on one batch, and build their adapters."""
        from torch import nn

        from .adapters import make_adapter  # torch at class level: imported on use

        cfg = self.config
        s_layers, s_outs = probe_layers(student, inputs)
        t_layers, t_outs = probe_layers(teacher, inputs)
        # the student trains in training mode: only layers that run there can be distilled
        try:
            trains = {spec for spec, _ in probe_layers(student, inputs, train=True)[0]}
        except Exception:  # e.g. batch-norm on one row in training mode: keep every layer
            trains = {spec for spec, _ in s_layers}
        eval_only = [spec for spec, _ in s_layers if spec not in trains]
        s_layers = [(spec, sh) for spec, sh in s_layers if spec in trains]
        s_outs = {spec for spec in s_outs if spec in trains}
        s_shapes, t_shapes = dict(s_layers), dict(t_layers)
        if cfg.pairs is not None:
            pairs = [tuple(p) for p in cfg.pairs]
            for sp, tp in pairs:
                for spec, shapes, who in ((sp, s_shapes, "student"), (tp, t_shapes, "teacher")):
                    if spec not in shapes:
                        if who == "student" and spec in eval_only:
                            raise mo.ConfigError(
                                f"{self.name}: student layer {spec!r} runs only in eval mode "
                                "(training skips it, e.g. a detector's box decoding); pair a "
                                "layer that runs in training.")
                        near = difflib.get_close_matches(spec, list(shapes), n=3, cutoff=0.5)
                        raise mo.ConfigError(
                            f"{self.name}: {who} layer {spec!r} is not a layer that returns a "
                            f"tensor in forward" + (f" (did you mean {near}?)" if near else "")
                            + f"; {who} layers: {list(shapes)[:16]}.")
        else:
            s_pick = auto_layers(s_layers, s_outs, cfg.max_pairs)
            if all(s in t_shapes for s in s_pick):
                pairs = [(s, s) for s in s_pick]
            else:
                t_pick = auto_layers(t_layers, t_outs, len(s_pick))
                n = min(len(s_pick), len(t_pick))
                pairs = list(zip(_spread(s_pick, n), _spread(t_pick, n)))
            if not pairs:
                raise mo.ConfigError(f"{self.name}: found no feature layers (>= 3-D outputs) to "
                                     "pair automatically; give pairs=((student, teacher), ...).")
        weights = list(cfg.weights) if cfg.weights is not None else [1.0] * len(pairs)
        if len(weights) != len(pairs):
            raise mo.ConfigError(f"{self.name}: weights has {len(weights)} value(s) for "
                                 f"{len(pairs)} pair(s) {pairs}; give one weight per pair.")
        adapters = nn.ModuleList(make_adapter(s_shapes[sp], t_shapes[tp], sp, tp, self.name)
                                 for sp, tp in pairs)
        notes = [f"teacher: {cfg.teacher}"] + [f"pair {sp} -> {tp} (w={w}): {ad.kind}"
                                                for (sp, tp), w, ad in zip(pairs, weights,
                                                                           adapters)]
        return pairs, weights, adapters, notes


def _spread(items: list[str], n: int) -> list[str]:
    if n >= len(items):
        return items
    return [items[round(i * (len(items) - 1) / max(1, n - 1))] for i in range(n)]


def _distance(s: Any, t: Any, kind: str) -> Any:
    from torch.nn import functional as F

    if kind == "mse":
        return F.mse_loss(s, t)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(s, t)
    return (1.0 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1)).mean()


def _is_labels(targets: Any, out: Any) -> bool:
    import torch

    return (isinstance(targets, torch.Tensor) and not targets.is_floating_point()
            and not targets.dtype == torch.bool and out.dim() == targets.dim() + 1
            and out.shape[0] == targets.shape[0] and out.shape[2:] == targets.shape[1:])
