"""Fine-tuning after pruning through the shared training loop, by plain training or by
knowledge distillation from the session's original model."""

from __future__ import annotations

import copy
from typing import Any

import modelopt_core as mo


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


def make_loss(ctx: mo.Context, distill: bool, temperature: float, alpha: float,
              extra: Any = None) -> Any:
    """``loss_fn(model, inputs, targets)`` for :func:`fit`: cross-entropy (or KD from
    ``ctx.original`` when ``distill``) plus ``extra(model)`` (e.g. an L1 penalty)."""
    from torch.nn import functional as F

    teacher = None
    if distill:
        if ctx.original is None or ctx.original.format != "torch":
            raise mo.FormatError("distill=True needs the session's original torch model as "
                                 "teacher.")
        teacher = copy.deepcopy(ctx.original.model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    def loss_fn(model: Any, inputs: tuple[Any, ...], targets: Any) -> Any:
        import torch

        full = model(*inputs)
        out = _first(full)
        t_out = None
        if teacher is not None:
            with torch.no_grad():
                t_out = _first(teacher.to(out.device)(*inputs))
        if ctx.task_loss is not None:  # the session's task loss (detection, regression...)
            loss = ctx.task_loss(full, targets)
            if t_out is not None:  # soft targets: KL of class logits, else match the output
                soft = mo.kd_loss(out, t_out, None, temperature, 1.0) if out.dim() == 2 \
                    else F.mse_loss(out.float(), t_out.float())
                loss = alpha * soft + (1 - alpha) * loss
        elif t_out is not None:
            loss = mo.kd_loss(out, t_out, targets, temperature, alpha)
        else:
            loss = F.cross_entropy(out, targets)
        return loss + extra(model) if extra is not None else loss

    return loss_fn


def finetune(model: Any, ctx: mo.Context, who: str, *, epochs: int, lr: float,
             distill: bool = False, temperature: float = 4.0, alpha: float = 0.9,
             extra: Any = None, evaluate: bool = False, keep_zero: Any = ()) -> Any:
    """Train ``model`` in place with the shared loop; returns the TrainResult.

    ``keep_zero`` names parameters of ``model`` whose current zeros stay exactly zero
    (unstructured pruning: masks from ``param == 0`` now, re-applied after every step)."""
    from modelopt_core.sparsity import KeepZeros, zero_masks
    from modelopt_core.training import TrainConfig, fit

    data = ctx.training_batches(who)
    eval_fn = (lambda m: float(ctx.eval_fn(m))) if evaluate and ctx.eval_fn else None
    res = fit(model, data, config=TrainConfig(epochs=epochs, lr=lr), ctx=ctx,
              loss_fn=make_loss(ctx, distill, temperature, alpha, extra), eval_fn=eval_fn,
              callbacks=[KeepZeros(zero_masks(model, list(keep_zero))[0])] if keep_zero else ())
    model.eval()
    return res


def last_loss(res: Any) -> str:
    """'loss 0.123' from the last epoch of a TrainResult history, when present."""
    h = res.history[-1] if getattr(res, "history", None) else {}
    v = h.get("loss", h.get("train_loss"))
    return f"loss {v:.4g}" if isinstance(v, (int, float)) else "done"
