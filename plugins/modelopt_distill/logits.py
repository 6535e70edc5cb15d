"""``distill.logits``: Hinton-style knowledge distillation on the model outputs."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import modelopt_core as mo
from modelopt_core.sparsity import kept_zeros

from .common import (DistillConfig, first_output, frozen_copy, history_data, kd_loss,
                     resolve_teacher, run_fit, summary_notes)

__all__ = ["LogitsDistill", "TeacherFn", "teacher_fn", "check_logit_shapes", "mix_inputs"]


class TeacherFn:
    """A frozen teacher callable: a private eval-mode copy of a torch module, or a runner for
    artifacts in other formats (e.g. an ONNX teacher on onnxruntime)."""

    def __init__(self, module: Any = None, runner: Any = None) -> None:
        self.module, self.runner = module, runner

    def __call__(self, *inputs: Any) -> Any:
        import torch

        with torch.no_grad():
            if self.module is not None:
                dev = next(iter(self.module.parameters()), torch.empty(0)).device
                if inputs and inputs[0].device != dev:
                    self.module.to(inputs[0].device)
                return self.module(*inputs)
            out = self.runner(*[x.detach().cpu() for x in inputs])
            dev = inputs[0].device
            return (tuple(o.to(dev) for o in out) if isinstance(out, (tuple, list))
                    else out.to(dev))

    def close(self) -> None:
        """Release the runner, if any."""
        if self.runner is not None:
            self.runner.close()


def teacher_fn(teacher: Any, ctx: mo.Context, who: str) -> TeacherFn:
    """Build a :class:`TeacherFn` from an ``nn.Module`` or a :class:`ModelArtifact`."""
    if isinstance(teacher, mo.ModelArtifact):
        if teacher.format == "torch":
            return TeacherFn(module=frozen_copy(teacher.model))
        backend = {"onnx": "onnxruntime"}.get(teacher.format, teacher.format)
        return TeacherFn(runner=ctx.runner(teacher, backend))
    if hasattr(teacher, "parameters") and callable(teacher):
        return TeacherFn(module=frozen_copy(teacher))
    raise mo.ConfigError(f"{who}: the teacher must be a torch module or a ModelArtifact, got "
                         f"{type(teacher).__name__}.")


def check_logit_shapes(student: Any, teacher: TeacherFn, inputs: tuple[Any, ...], index: int,
                       who: str) -> None:
    """Fail before training when teacher and student outputs cannot be compared."""
    import torch

    with torch.no_grad():
        modes = {m: m.training for m in student.modules()}
        try:
            s_out = student.eval()(*inputs)
        finally:
            for m, mode in modes.items():
                m.training = mode
        t_out = teacher(*inputs)
    for name, out in (("student", s_out), ("teacher", t_out)):
        n = len(out) if isinstance(out, (tuple, list)) else 1
        if index >= n:
            raise mo.ConfigError(f"{who}: output={index} but the {name} model has {n} output(s).")
    s, t = first_output(s_out, index), first_output(t_out, index)
    if tuple(s.shape) != tuple(t.shape):
        raise mo.FormatError(
            f"{who}: teacher output {index} has shape {tuple(t.shape)} but student output "
            f"{index} has shape {tuple(s.shape)}; logit distillation needs the same classes "
            "per position. Use distill.features (with adapters) or a matching teacher.")


class LogitsDistill(mo.Optimizer):
    """Hinton KD: soft teacher targets at a temperature plus the hard-label loss."""

    name: ClassVar[str] = "distill.logits"
    stage = "recover"
    accepts: ClassVar[tuple[str, ...]] = ("torch",)
    needs: ClassVar[tuple[str, ...]] = ("train_data",)

    @mo.config
    class Config(DistillConfig):
        temperature: float = mo.field(4.0, validator=mo.positive,
                                      search=mo.choice(2.0, 4.0, 8.0),
                                      help="softmax temperature T for the soft targets")
        alpha: float = mo.field(0.9, validator=mo.in_range(0.0, 1.0),
                                search=mo.floats(0.5, 0.9, step=0.1),
                                help="weight of the soft (KD) term; 1 - alpha weighs hard CE")
        output: int = mo.field(0, validator=mo.in_range(0, 1 << 16),
                               help="which output holds the logits (models with several)")
        mixup: float = mo.field(
            0.0, validator=mo.in_range(0.0, 100.0),
            help="Beta(mixup, mixup) mixing of each batch's inputs with a shuffled copy; the "
                 "teacher labels the mixed inputs (function matching) and the hard term uses "
                 "the mixed labels. 0 = off. Helps most when the recovery data is small")

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        cfg = self.config
        teacher = teacher_fn(resolve_teacher(cfg.teacher, ctx, self.name), ctx, self.name)
        student = copy.deepcopy(artifact.model)
        kept = kept_zeros(student, artifact)  # earlier unstructured pruning stays exact
        try:
            first = _first_inputs(ctx, self.name)
            check_logit_shapes(student, teacher, first, cfg.output, self.name)

            def loss_fn(model: Any, inputs: tuple[Any, ...], targets: Any) -> Any:
                lam, perm = 1.0, None
                if cfg.mixup > 0:
                    inputs, lam, perm = mix_inputs(inputs, cfg.mixup)
                s = first_output(model(*inputs), cfg.output)
                t = first_output(teacher(*inputs), cfg.output)
                loss = kd_loss(s, t, targets, cfg.temperature, cfg.alpha)
                if perm is not None and cfg.alpha < 1.0 and _labels(targets):
                    # the hard term of the mixed input is the same mix of both label sets
                    other = kd_loss(s, t, targets[perm.to(targets.device)], cfg.temperature,
                                    cfg.alpha)
                    loss = lam * loss + (1.0 - lam) * other
                return loss

            result = run_fit(self.name, student, ctx, cfg, loss_fn, masks=kept.masks)
        finally:
            teacher.close()
        student.eval()
        notes = [f"teacher: {cfg.teacher}", f"T={cfg.temperature}, alpha={cfg.alpha}"
                 + (f", mixup={cfg.mixup}" if cfg.mixup > 0 else "")]
        return artifact.evolve(step=self.step(notes=notes + summary_notes(result) + kept.notes,
                                              restore=kept.restore),
                               model=student,
                               metadata={"train_history": history_data(result)})


def mix_inputs(inputs: tuple[Any, ...], concentration: float
               ) -> tuple[tuple[Any, ...], float, Any]:
    """Mixup of a batch with a shuffled copy of itself: ``lam * x + (1 - lam) * x[perm]`` for
    every floating-point input with the batch's leading size, ``lam ~ Beta(c, c)``. Uses the
    global torch RNG, which :func:`fit` reseeds every epoch (runs stay reproducible)."""
    import torch

    n = inputs[0].shape[0]
    lam = float(torch.distributions.Beta(concentration, concentration).sample())
    perm = torch.randperm(n)
    mixed = tuple(lam * x + (1.0 - lam) * x[perm.to(x.device)]
                  if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() > 0
                  and x.shape[0] == n else x for x in inputs)
    return mixed, lam, perm


def _labels(targets: Any) -> bool:
    import torch

    return isinstance(targets, torch.Tensor) and not targets.is_floating_point()


def _first_inputs(ctx: mo.Context, who: str) -> tuple[Any, ...]:
    """Inputs for the shape checks before training: the example inputs (never a batch drawn
    from train_data, which may be a one-shot iterator that training still needs)."""
    ctx.training_batches(who)  # missing / malformed / used-up train_data fails here, early
    return tuple(ctx.example_inputs)
