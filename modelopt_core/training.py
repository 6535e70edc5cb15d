"""The one training entry point of the project: every component that trains (distillation,
QAT, fine-tuning after pruning, slimming) calls :func:`fit`, a thin wrapper over
:class:`~modelopt_core.trainer.Trainer` (the loop), built on Lightning Fabric.

Features: epochs or a step budget, Adam/AdamW/SGD, per-step LR schedules (cosine, step, linear,
none; optional warmup), gradient clipping, mixed precision (bf16 autocast; fp16 autocast +
GradScaler on CUDA), evaluation each epoch, early stopping, checkpoint/resume in safe formats
(safetensors + JSON, never pickle; :mod:`~modelopt_core.checkpoint`), per-epoch reseeding (a
resumed run is bit-identical to an uninterrupted one), a progress bar with the loss and the best
metric (or loss), or without a bar one line per epoch with elapsed time and ETA
(:data:`PROGRESS_LOG`), and data-parallel training (DDP, :mod:`~modelopt_core.strategy`) when
``torch.distributed`` is initialised or the process was launched by ``torchrun`` (gloo on CPU,
nccl on CUDA). The zeros of unstructured pruning stay zero through training
(:mod:`~modelopt_core.sparsity`, ``masks=``). The Hinton KD loss is :func:`kd_loss`.
torch and Fabric are imported lazily so ``import modelopt_core`` stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from .checkpoint import Checkpointer, load_checkpoint_weights
from .config import config, field, positive
from .progress import PROGRESS_LOG, Progress, clock, eta_text
from .sparsity import (SPARSE_RECORD, KeepZeros, KeptZeros, apply_masks, kept_zeros,
                       sparse_param_names, zero_masks)
from .strategy import Strategy, is_main_process
from .train_parts import lr_factor
from .trainer import Callback, EarlyStopping, EpochHooks, RestoreBest, Trainer, TrainResult

__all__ = ["TrainConfig", "TrainResult", "fit", "kd_loss", "load_checkpoint_weights",
           "SPARSE_RECORD", "sparse_param_names", "zero_masks", "apply_masks", "kept_zeros",
           "KeptZeros", "KeepZeros", "PROGRESS_LOG", "clock", "eta_text", "Trainer", "Callback",
           "EarlyStopping", "RestoreBest", "EpochHooks", "Checkpointer", "Strategy",
           "is_main_process", "callbacks_for"]

#: kept for callers of the names this module had before the split
_lr_factor = lr_factor
_Progress = Progress


@config
class TrainConfig:
    """Typed options of :func:`fit` (plain data: safe to embed in a component's config)."""

    epochs: int = field(5, help="passes over train_data (ignored when steps is set)",
                        validator=positive)
    steps: int | None = field(None, help="total optimizer steps; overrides epochs",
                              validator=positive)
    optimizer: Literal["adam", "adamw", "sgd"] = field("adam", help="optimizer")
    lr: float = field(1e-3, help="peak learning rate", validator=positive)
    weight_decay: float = field(0.0, help="weight decay (L2 for adam/sgd, decoupled for adamw)")
    momentum: float = field(0.9, help="SGD momentum")
    schedule: Literal["cosine", "none", "step", "linear"] = field(
        "cosine", help="per-step LR schedule after warmup")
    warmup_steps: int = field(0, help="linear LR warmup steps")
    step_gamma: float = field(0.1, help="'step' schedule: LR factor at 1/3 and 2/3 of training")
    grad_clip: float | None = field(None, help="max global grad norm (None: no clipping)",
                                    validator=positive)
    precision: Literal["fp32", "bf16", "fp16"] = field(
        "fp32", help="autocast dtype; fp16 uses a GradScaler and needs CUDA (bf16 elsewhere)")
    early_stopping_patience: int | None = field(
        None, help="stop after this many epochs without improvement of the metric",
        validator=positive)
    min_delta: float = field(0.0, help="smallest metric gain that counts as improvement")
    restore_best: bool = field(False, help="end with the weights of the best epoch")
    checkpoint_dir: str | None = field(None, help="folder for the 'last' checkpoint")
    resume: bool = field(False, help="continue from checkpoint_dir/last when it exists")
    seed: int = field(0, help="seed (re-applied at every epoch start for exact resume)")
    shuffle: bool = field(True, help="shuffle batch order each epoch when train_data is a list")
    device: str | None = field(None, help="training device (default: ctx.device or the model's)")
    log_every: int = field(0, help="log the running loss every N steps (0: per epoch only)")
    strategy: Literal["auto", "single", "ddp"] = field(
        "auto", help="'auto': data-parallel (DDP) when launched by torchrun with several "
                     "processes, else one process; 'single': this process alone; 'ddp': "
                     "require a process group")


def callbacks_for(cfg: TrainConfig, masks: Mapping[str, Any] | None = None,
                  on_epoch_start: Callable[[int, Any], None] | None = None,
                  on_epoch_end: Callable[[int, Any], None] | None = None) -> list[Callback]:
    """The callbacks :func:`fit` gives its Trainer for ``cfg`` and its keyword hooks, in the
    order they run: masks first (every step), the user's epoch hooks, then early stopping and
    restore-best (which see the epoch after the hooks)."""
    out: list[Callback] = []
    if masks:
        out.append(KeepZeros(masks))
    if on_epoch_start is not None or on_epoch_end is not None:
        out.append(EpochHooks(on_epoch_start, on_epoch_end))
    if cfg.early_stopping_patience:
        out.append(EarlyStopping(cfg.early_stopping_patience))
    if cfg.restore_best:
        out.append(RestoreBest())
    return out


def fit(model: Any, train_data: Iterable[Any], *, config: TrainConfig | None = None,
        loss_fn: Callable[[Any, tuple[Any, ...], Any], Any] | None = None,
        eval_fn: Callable[[Any], float] | None = None, ctx: Any = None,
        on_epoch_start: Callable[[int, Any], None] | None = None,
        on_epoch_end: Callable[[int, Any], None] | None = None,
        params: Iterable[Any] | None = None, extra_state: Any = None,
        masks: Mapping[str, Any] | None = None,
        callbacks: Iterable[Callback] = ()) -> TrainResult:
    """Train ``model`` in place on ``train_data`` (an iterable of ``(inputs, targets)``).

    ``loss_fn(model, inputs, targets)`` returns a scalar (default: cross-entropy of
    ``model(*inputs)``); under DDP ``model`` is the wrapped module. ``eval_fn(module)`` runs in
    eval mode after each epoch (higher is better; rank 0 runs it, every rank records it).
    ``params`` may include tensors outside the model (e.g. distillation adapters); they are
    optimised, synced and checkpointed too.
    ``extra_state`` is any object with ``state_dict() -> {name: tensor}`` and
    ``load_state_dict(d)`` whose state changes during training without being optimised (an EMA
    teacher): it is saved in checkpoints, restored on resume, and rolled back with the model
    when a non-finite loss stops training.
    ``config`` is the run's :class:`TrainConfig` (None: a fresh default one, never shared
    between calls).
    ``masks`` maps parameter names of ``model`` to boolean keep-masks of their shape (see
    :func:`zero_masks`): masked-out entries are zeroed before training and again after every
    optimizer step (the :class:`KeepZeros` callback), so pruned weights stay exactly zero.
    ``callbacks`` run after those ``fit`` builds from the config (:func:`callbacks_for`).
    Every batch is checked as it is drawn (lists: all of them up front) against the model's
    input specs, ``ctx.original.inputs`` when ``ctx`` has them (else only for NaN/Inf): see
    :func:`modelopt_core.data.check_train_item`.
    Under ``torchrun`` (several processes) each rank trains on its shard of the batches
    (DistributedDataParallel; one global step covers ``world`` batches), only rank 0 writes
    checkpoints, and every rank returns the same history.
    Raises :class:`DataError` for empty, one-shot, malformed or non-finite data and
    :class:`TrainingError` on a non-finite loss (in both cases, mid-training, the model then
    holds the weights from the start of that epoch).
    """
    cfg = config if config is not None else TrainConfig()
    cbs = callbacks_for(cfg, masks, on_epoch_start, on_epoch_end) + list(callbacks)
    trainer = Trainer(model, cfg, loss_fn=loss_fn, eval_fn=eval_fn, params=params,
                      extra_state=extra_state, callbacks=cbs, ctx=ctx)
    return trainer.fit(train_data)


# ---- knowledge distillation loss --------------------------------------------------------

def kd_loss(student_logits: Any, teacher_logits: Any, targets: Any, temperature: float,
            alpha: float) -> Any:
    """Hinton KD: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.

    The class dimension is dim 1 (``(B, C)`` or ``(B, C, ...)`` dense outputs). Without integer
    targets (unlabelled data) only the soft term is used.
    """
    import torch
    from torch.nn import functional as F

    s = student_logits.float()
    t = teacher_logits.float().detach()
    log_p_s = F.log_softmax(s / temperature, dim=1)
    log_p_t = F.log_softmax(t / temperature, dim=1)
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)
    soft = per_sample.mean() * temperature ** 2
    hard_ok = (isinstance(targets, torch.Tensor) and not targets.is_floating_point()
               and alpha < 1.0)
    if not hard_ok:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(s, targets)
