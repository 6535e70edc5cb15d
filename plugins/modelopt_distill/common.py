"""Shared pieces of the distillation optimizers: the config base, teacher resolution and the
eval adapter. ``kd_loss`` is the core's :func:`modelopt_core.kd_loss`, re-exported."""

from __future__ import annotations

import copy
import math
from typing import Any

import modelopt_core as mo
from modelopt_core.training import TrainConfig, TrainResult, fit, kd_loss

__all__ = ["DistillBase", "DistillConfig", "resolve_teacher", "register_teacher", "train_config",
           "module_eval_fn", "first_output", "kd_loss", "run_fit", "frozen_copy"]

_TEACHERS: dict[str, Any] = {}


def register_teacher(name: str, model: Any) -> None:
    """Make ``model`` (an ``nn.Module`` or :class:`ModelArtifact`) usable as a teacher by name:
    ``s.apply("distill.logits", teacher="registered:<name>")`` keeps the config plain data."""
    _TEACHERS[name] = model


def _check_teacher(inst: Any, attr: Any, value: str) -> None:
    ok = value in ("original", "current") or value.startswith(("history:", "registered:"))
    if not ok:
        raise mo.ConfigError(f"config key 'teacher' = {value!r}: use 'original', 'current', "
                             "'history:<index>' (e.g. 'history:-2') or 'registered:<name>'.")


@mo.config
class DistillBase(TrainConfig):
    """Training options (see :class:`TrainConfig`) plus per-epoch evaluation."""

    eval_each_epoch: bool = mo.field(True, help="run the session's eval_fn after every epoch")


@mo.config
class DistillConfig(DistillBase):
    """:class:`DistillBase` plus the teacher, named in plain data."""

    teacher: str = mo.field("original", validator=_check_teacher,
                            help="'original', 'current', 'history:<i>' or 'registered:<name>'")


def train_config(cfg: Any) -> TrainConfig:
    """The :class:`TrainConfig` part of a distillation config."""
    import attrs

    names = [a.name for a in attrs.fields(TrainConfig)]
    return TrainConfig(**{n: getattr(cfg, n) for n in names})


def resolve_teacher(spec: str, ctx: mo.Context, who: str) -> Any:
    """Teacher spec -> a :class:`ModelArtifact` or ``nn.Module`` (not yet copied)."""
    if spec == "original":
        if ctx.original is None:
            raise mo.ConfigError(f"{who}: teacher='original' but the context has no original "
                                 "model; run through a Session or pass teacher explicitly.")
        return ctx.original
    if spec == "current":
        return ctx.history[-1]
    if spec.startswith("registered:"):
        name = spec.split(":", 1)[1]
        if name not in _TEACHERS:
            raise mo.ConfigError(f"{who}: no teacher registered as {name!r} (known: "
                                 f"{sorted(_TEACHERS) or 'none'}); call "
                                 "modelopt_distill.register_teacher(name, model) first.")
        return _TEACHERS[name]
    raw = spec.split(":", 1)[1]
    try:
        idx = int(raw)
        return ctx.history[idx]
    except (ValueError, IndexError):
        raise mo.ConfigError(f"{who}: teacher={spec!r} does not name an artifact; the session "
                             f"history has {len(ctx.history)} entries (use history:0 .. "
                             f"history:{len(ctx.history) - 1}, or negative indices).") from None


def frozen_copy(module: Any) -> Any:
    """A deep copy in eval mode with gradients off (the source is never touched)."""
    m = copy.deepcopy(module).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


class _OnDevice:
    """Calls a module with inputs moved to its device and outputs moved back to the CPU."""

    def __init__(self, module: Any) -> None:
        self.module = module
        p = next(iter(module.parameters()), None)
        self.device = p.device if p is not None else "cpu"

    def __call__(self, *xs: Any) -> Any:
        out = self.module(*[x.to(self.device) for x in xs])
        if isinstance(out, (tuple, list)):
            return type(out)(o.float().cpu() for o in out)
        return out.float().cpu()


def module_eval_fn(ctx: mo.Context, enabled: bool) -> Any:
    """Adapt the session's ``eval_fn(runner)`` to :func:`fit`'s ``eval_fn(module)``."""
    if not enabled or ctx.eval_fn is None:
        return None
    return lambda module: float(ctx.eval_fn(_OnDevice(module)))


def first_output(out: Any, index: int = 0) -> Any:
    """The ``index``-th tensor of a model output (a tensor or a tuple of tensors)."""
    if isinstance(out, (tuple, list)):
        return out[index]
    return out


def run_fit(who: str, student: Any, ctx: mo.Context, cfg: Any, loss_fn: Any,
            params: Any = None, **hooks: Any) -> TrainResult:
    """Call the shared :func:`fit` with the session's data and eval function."""
    data = ctx.training_batches(who)
    return fit(student, data, config=train_config(cfg), loss_fn=loss_fn,
               eval_fn=module_eval_fn(ctx, cfg.eval_each_epoch), ctx=ctx, params=params, **hooks)


def summary_notes(result: TrainResult) -> list[str]:
    """Lineage notes describing a training run."""
    h = result.history
    notes = [f"trained {len(h)} epoch(s), {result.steps} step(s)"
             + (f", resumed after epoch {result.resumed_from}" if result.resumed_from else "")]
    if h:
        last = h[-1]
        notes.append(f"final train loss {last['train_loss']:.4f}"
                     + (f", metric {last['metric']:.4g}" if "metric" in last else ""))
    if result.stopped:
        notes.append("stopped early (no metric improvement)")
    return notes


def history_data(result: TrainResult) -> list[dict[str, Any]]:
    """Per-epoch history as plain JSON data (for artifact metadata)."""
    return [{k: (v if not isinstance(v, float) or math.isfinite(v) else None)
             for k, v in r.items()} for r in result.history]
