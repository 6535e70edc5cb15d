"""``distill.self_ema``: self-distillation from an exponential moving average of the model.

The EMA teacher is a ``copy.deepcopy`` of the student (never a re-instantiation of its class,
which would lose pruned shapes, fused layers and constructor arguments). After every optimizer
step the EMA absorbs the student's weights; the student learns from the EMA's softened outputs
plus the hard labels (mean-teacher style). The result is the EMA model by default.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal

import modelopt_core as mo
from modelopt_core.sparsity import kept_zeros

from .common import (DistillBase, first_output, frozen_copy, history_data, kd_loss, run_fit,
                     summary_notes)

__all__ = ["SelfEMADistill", "EMA"]


class EMA:
    """An exponential moving average of a module's parameters (buffers are copied).

    ``decay_t = min(decay, (1 + t) / (10 + t))`` warms the average up over the first steps.
    """

    def __init__(self, module: Any, decay: float) -> None:
        self.module = frozen_copy(module)
        self.decay = decay
        self.updates = 0

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights and the update count (checkpointed by :func:`fit`)."""
        import torch

        d = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        d["updates"] = torch.tensor(self.updates, dtype=torch.int64)
        return d

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` gave (into the existing tensors, on their device)."""
        import torch

        own = self.module.state_dict()
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(state[f"module.{k}"])
        self.updates = int(state["updates"])

    def update(self, source: Any) -> None:
        """Fold ``source``'s current weights into the average."""
        import torch

        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        with torch.no_grad():
            for e, s in zip(self.module.parameters(), source.parameters()):
                if e.device != s.device:
                    self.module.to(s.device)
                e.mul_(d).add_(s.detach().to(e.dtype), alpha=1.0 - d)
            for e, s in zip(self.module.buffers(), source.buffers()):
                e.copy_(s)


class SelfEMADistill(mo.Optimizer):
    """Self-distillation: the model learns from an EMA copy of itself."""

    name: ClassVar[str] = "distill.self_ema"
    stage = "recover"
    accepts: ClassVar[tuple[str, ...]] = ("torch",)
    needs: ClassVar[tuple[str, ...]] = ("train_data",)

    @mo.config
    class Config(DistillBase):
        decay: float = mo.field(0.99, validator=mo.in_range(0.0, 1.0, hi_open=True),
                                help="EMA decay per optimizer step")
        temperature: float = mo.field(2.0, validator=mo.positive, help="softmax temperature")
        alpha: float = mo.field(0.5, validator=mo.in_range(0.0, 1.0),
                                help="weight of the soft term; 1 - alpha weighs hard CE")
        output: int = mo.field(0, validator=mo.in_range(0, 1 << 16),
                               help="which output holds the logits")
        keep: Literal["ema", "student"] = mo.field("ema", help="which model the step returns")

    def apply(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        cfg = self.config
        student = copy.deepcopy(artifact.model)
        kept = kept_zeros(student, artifact)  # earlier unstructured pruning stays exact
        ema = EMA(student, cfg.decay)

        def loss_fn(model: Any, inputs: tuple[Any, ...], targets: Any) -> Any:
            ema.update(student)  # fold in the previous optimizer step
            s = first_output(model(*inputs), cfg.output)
            t = first_output(ema.module(*inputs), cfg.output)
            return kd_loss(s, t, targets, cfg.temperature, cfg.alpha)

        result = run_fit(self.name, student, ctx, cfg, loss_fn, extra_state=ema,
                         masks=kept.masks)
        ema.update(student)  # and the last one
        if cfg.keep == "ema":
            out = ema.module.to(next(iter(student.parameters())).device)
            for e, s in zip(out.parameters(), student.parameters()):
                e.requires_grad_(s.requires_grad)
        else:
            out = student
        kept.apply(out)  # the EMA of masked weights is 0 there already; made certain
        out.eval()
        notes = [f"EMA decay {cfg.decay} over {ema.updates} update(s); returned the {cfg.keep}"]
        return artifact.evolve(step=self.step(notes=notes + summary_notes(result) + kept.notes,
                                              restore=kept.restore), model=out,
                               metadata={"train_history": history_data(result)})
