"""The one training loop of the project: every component that trains (distillation, QAT,
fine-tuning after pruning, slimming) calls :func:`fit`.

Features: epochs or a step budget, Adam/AdamW/SGD, per-step LR schedules (cosine, step, linear,
none; optional warmup), gradient clipping, mixed precision (bf16 autocast; fp16 autocast +
GradScaler on CUDA), evaluation each epoch, early stopping, checkpoint/resume in safe formats
(safetensors + JSON, never pickle), per-epoch reseeding (a resumed run is bit-identical to an
uninterrupted one), a progress bar with the loss and the best metric (or loss), or without a
bar one line per epoch with elapsed time and ETA (:data:`PROGRESS_LOG`), and
DistributedDataParallel when ``torch.distributed`` is initialised (gloo on CPU, nccl on CUDA;
launch with ``torchrun``). torch is imported lazily so ``import modelopt_core`` stays light.

Sparsity kept: a step that zeroes weights one by one (``prune.unstructured``, ``prune.global``,
``prune.iterative``'s unstructured mode) lists those parameters in its lineage Step's restore
record under :data:`SPARSE_RECORD`. Every step that trains afterwards finds the newest such
record (:func:`kept_zeros`), derives a keep-mask ``param != 0`` from the weights it is about to
train, and passes it to :func:`fit` (``masks=``), which zeroes the masked entries again after
every optimizer step: the zero count of each listed tensor is exactly the same after training.
The training step lists the parameters in its own restore record, under the names they have in
its result, so the zeros stay fixed through any later training too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from .config import config, config_to_data, field, positive
from .data import (ONE_SHOT_HINT, check_iterable, check_train_item, check_train_list,
                   is_one_shot, warn_once)
from .errors import ConfigError, DataError, TrainingError
from .interfaces import as_input_tuple

__all__ = ["TrainConfig", "TrainResult", "fit", "kd_loss", "load_checkpoint_weights",
           "SPARSE_RECORD", "sparse_param_names", "zero_masks", "apply_masks", "kept_zeros",
           "KeptZeros", "PROGRESS_LOG", "clock", "eta_text"]

log = logging.getLogger("modelopt.training")


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


@attrs.define(eq=False)
class TrainResult:
    """What :func:`fit` returns: the (same) trained model, per-epoch history, best metric."""

    model: Any
    history: list[dict[str, Any]]
    best_metric: float | None
    stopped: bool = False
    steps: int = 0
    resumed_from: int | None = None


def fit(model: Any, train_data: Iterable[Any], *, config: TrainConfig | None = None,
        loss_fn: Callable[[Any, tuple[Any, ...], Any], Any] | None = None,
        eval_fn: Callable[[Any], float] | None = None, ctx: Any = None,
        on_epoch_start: Callable[[int, Any], None] | None = None,
        on_epoch_end: Callable[[int, Any], None] | None = None,
        params: Iterable[Any] | None = None, extra_state: Any = None,
        masks: Mapping[str, Any] | None = None) -> TrainResult:
    """Train ``model`` in place on ``train_data`` (an iterable of ``(inputs, targets)``).

    ``loss_fn(model, inputs, targets)`` returns a scalar (default: cross-entropy of
    ``model(*inputs)``); under DDP ``model`` is the wrapped module. ``eval_fn(module)`` runs in
    eval mode after each epoch (higher is better). ``params`` may include tensors outside the
    model (e.g. distillation adapters); they are optimised, synced and checkpointed too.
    ``extra_state`` is any object with ``state_dict() -> {name: tensor}`` and
    ``load_state_dict(d)`` whose state changes during training without being optimised (an EMA
    teacher): it is saved in checkpoints, restored on resume, and rolled back with the model
    when a non-finite loss stops training.
    ``config`` is the run's :class:`TrainConfig` (None: a fresh default one, never shared
    between calls).
    ``masks`` maps parameter names of ``model`` to boolean keep-masks of their shape (see
    :func:`zero_masks`): masked-out entries are zeroed before training and again after every
    optimizer step, so pruned weights stay exactly zero (momentum and weight decay included).
    Every batch is checked as it is drawn (lists: all of them up front) against the model's
    input specs, ``ctx.original.inputs`` when ``ctx`` has them (else only for NaN/Inf): see
    :func:`modelopt_core.data.check_train_item`.
    Raises :class:`DataError` for empty, one-shot, malformed or non-finite data and
    :class:`TrainingError` on a non-finite loss (in both cases, mid-training, the model then
    holds the weights from the start of that epoch).
    """
    import torch
    from torch import distributed as dist

    cfg = config if config is not None else TrainConfig()
    specs = getattr(getattr(ctx, "original", None), "inputs", None) or ()
    warn = warn_once(ctx.warn if ctx is not None else log.warning)
    check_iterable(train_data, "train_data", "fit")
    if is_one_shot(train_data):  # a one-shot iterator: fine for a single pass only
        if (cfg.steps or cfg.epochs) > 1:
            raise DataError("fit: train_data is a one-shot iterator; pass a list or a "
                            "DataLoader so it can be read once per epoch.")
        train_data = list(train_data)
        if not train_data:
            raise DataError("fit: train_data is empty: " + ONE_SHOT_HINT.format(
                field="train_data"))
    checked = isinstance(train_data, (list, tuple))
    if checked:  # in memory: check every batch before any training
        train_data = check_train_list(train_data, specs, "fit", warn)
    dist_on = dist.is_available() and dist.is_initialized()
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist_on else (1, 0)
    device = torch.device(cfg.device or getattr(ctx, "device", None) or _model_device(model))
    home = _model_device(model)
    model.to(device)
    params = list(params) if params is not None else list(model.parameters())
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("fit: no trainable parameters (all have requires_grad=False).")
    kept = _resolve_masks(model, masks, device)
    apply_masks(kept)
    model_ids = {id(p) for p in model.parameters()}
    extra = [p for p in params if id(p) not in model_ids]
    nbatches = _count_batches(train_data)
    per_rank = nbatches // world
    if per_rank == 0:
        raise DataError(f"fit: train_data is empty ({nbatches} batch(es) for {world} rank(s)); "
                        "give at least one (inputs, targets) batch per process.")
    total = cfg.steps or cfg.epochs * per_rank
    epochs = math.ceil(total / per_rank)
    opt = _make_optimizer(cfg, params)
    amp_dtype, scaler = _amp(cfg, device, ctx)
    loss_fn = loss_fn or _default_loss
    net = model
    if dist_on:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    ckpt = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    state = {"epoch": 0, "step": 0, "history": [], "best": None, "bad": 0}
    resumed = None
    if ckpt is not None and cfg.resume and (ckpt / "last" / "state.json").exists():
        state = _load_ckpt(ckpt / "last", model, extra, opt, scaler, cfg, ctx, extra_state)
        resumed = state["epoch"]
    best_state = None
    stopped = False
    model.train()
    bar = _Progress(total, ctx, rank, state["step"], has_metric=eval_fn is not None)
    try:
        for epoch in range(state["epoch"], epochs):
            if state["step"] >= total:
                break
            _seed_all(cfg.seed + epoch)
            good = {k: v.detach().clone() for k, v in model.state_dict().items()}
            good_extra = [p.detach().clone() for p in extra]
            good_state = _snapshot(extra_state)
            if on_epoch_start is not None:
                on_epoch_start(epoch, model)
            t0, run_loss, n = time.perf_counter(), 0.0, 0
            for bi, batch in _epoch_batches(train_data, cfg, epoch, world, rank, per_rank):
                if state["step"] >= total:
                    break
                if not checked:  # drawn lazily: check it now (every rank, so all stop together)
                    batch, bad = _to_device(batch, device), None  # checked on the step's device
                    try:
                        batch = check_train_item(batch, specs, bi, "fit", warn)
                    except DataError as e:
                        bad = e
                    if dist_on:
                        bad = _any_rank_failed(bad, device)
                    if bad is not None:
                        _restore(model, good, extra, good_extra)
                        if extra_state is not None:
                            extra_state.load_state_dict(good_state)
                        raise DataError(f"{bad} Training stopped at epoch {epoch + 1}; the "
                                        f"weights from the start of epoch {epoch + 1} were "
                                        "restored.") from bad
                inputs, targets = _to_device(_split(batch, bi), device)
                lr = cfg.lr * _lr_factor(cfg, state["step"], total)
                for g in opt.param_groups:
                    g["lr"] = lr
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = loss_fn(net, inputs, targets)
                if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                    raise TrainingError("fit: loss_fn must return a scalar tensor.")
                seen = loss.detach().float()
                if dist_on:
                    dist.all_reduce(seen)
                    seen = seen / world
                if not torch.isfinite(seen):
                    _restore(model, good, extra, good_extra)
                    if extra_state is not None:
                        extra_state.load_state_dict(good_state)
                    raise TrainingError(
                        f"fit: non-finite loss ({float(seen)}) at epoch {epoch + 1}, step "
                        f"{state['step'] + 1} (batch {bi}); training stopped and the weights "
                        f"from the start of epoch {epoch + 1} (the last good ones) were restored. "
                        "Lower lr, set grad_clip, or check the data and loss for NaN/Inf.")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward() if scaler else loss.backward()
                if dist_on and extra:
                    _sync_grads(extra, world)
                if scaler:
                    scaler.unscale_(opt)
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                if scaler:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                apply_masks(kept)
                state["step"] += 1
                run_loss, n = run_loss + float(seen), n + 1
                bar.step(epoch, run_loss / n, state["best"])
                if cfg.log_every and state["step"] % cfg.log_every == 0 and rank == 0:
                    log.info("step %d: loss %.4f lr %.3g", state["step"], run_loss / n, lr)
            if dist_on:
                _sync_buffers(model, world)
            rec = {"epoch": epoch + 1, "steps": state["step"], "train_loss": run_loss / max(n, 1),
                   "lr": opt.param_groups[0]["lr"], "time_s": round(time.perf_counter() - t0, 3)}
            metric = _evaluate(model, eval_fn, dist_on, rank, device)
            if metric is not None:
                rec["metric"] = metric
            score = metric if metric is not None else -rec["train_loss"]
            if state["best"] is None or score > state["best"] + cfg.min_delta:
                state["best"], state["bad"] = score, 0
                if cfg.restore_best:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                state["bad"] += 1
            state["history"].append(rec)
            state["epoch"] = epoch + 1
            if on_epoch_end is not None:
                on_epoch_end(epoch, model)
            if rank == 0:
                bar.epoch_done(epochs, rec, state)  # the log line; the progress line without a bar
                if ckpt is not None:
                    _save_ckpt(ckpt / "last", model, extra, opt, scaler, state, cfg,
                               extra_state)
            if dist_on and ckpt is not None:
                dist.barrier()
            if cfg.early_stopping_patience and state["bad"] >= cfg.early_stopping_patience:
                stopped = True
                break
    finally:
        bar.close()
        if best_state is not None:
            model.load_state_dict(best_state)
        model.to(home)
    has_metric = any("metric" in r for r in state["history"])
    best = max((r["metric"] for r in state["history"] if "metric" in r), default=None)
    return TrainResult(model, state["history"], best if has_metric else None, stopped,
                       state["step"], resumed)


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


# ---- sparsity kept through training --------------------------------------------------------

#: key of a lineage Step's restore record listing the parameters whose zeros must stay zero
SPARSE_RECORD = "sparse_params"


def sparse_param_names(artifact: Any) -> list[str]:
    """Parameter names of the newest lineage step of ``artifact`` that records them under
    :data:`SPARSE_RECORD` (each such record is complete: it lists every sparse tensor of that
    step's result); ``[]`` when no step did."""
    for step in reversed(getattr(artifact, "lineage", ()) or ()):
        rec = step.restore.get(SPARSE_RECORD) if isinstance(step.restore, dict) else None
        if isinstance(rec, list):
            return [n for n in rec if isinstance(n, str)]
    return []


def zero_masks(model: Any, names: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``({name in model: keep-mask}, [names not found])``: the keep-mask is ``param != 0``
    of the parameter now (so shapes follow any structured pruning since). A recorded name is
    found as is, or as the one parameter under the same module path with the same leaf name
    (a layer wrapped by a later step: ``fc.weight`` -> ``fc.layer.weight``); a name matching
    none or several (a layer rewritten into several) is returned as not found."""
    params = dict(model.named_parameters())
    masks: dict[str, Any] = {}
    missing: list[str] = []
    for name in dict.fromkeys(names):
        found = name if name in params else None
        if found is None:
            mod, _, leaf = name.rpartition(".")
            near = [n for n in params if n.endswith("." + leaf)
                    and (not mod or n.startswith(mod + "."))]
            found = near[0] if len(near) == 1 else None
        if found is None:
            missing.append(name)
        elif found not in masks:
            masks[found] = params[found].detach() != 0
    return masks, missing


def apply_masks(masks: Any) -> None:
    """Zero, in place, the entries of each ``param`` where its boolean ``keep`` mask is False
    (``masks``: pairs ``(param, keep)``); ``masked_fill`` writes +0.0, even over NaN."""
    import torch

    with torch.no_grad():
        for p, keep in masks:
            p.masked_fill_(~keep, 0)


def _resolve_masks(model: Any, masks: Mapping[str, Any] | None,
                   device: Any) -> list[tuple[Any, Any]]:
    if not masks:
        return []
    params = dict(model.named_parameters())
    out = []
    for name, keep in masks.items():
        if name not in params:
            raise ConfigError(f"fit: masks names parameter {name!r}, which the model does not "
                              f"have (some: {list(params)[:8]}).")
        p = params[name]
        if tuple(keep.shape) != tuple(p.shape):
            raise ConfigError(f"fit: the mask of {name!r} has shape {tuple(keep.shape)}, the "
                              f"parameter {tuple(p.shape)}.")
        out.append((p, keep.to(device=p.device, dtype=bool)))
    return out


@attrs.define(eq=False)
class KeptZeros:
    """What a training step needs to keep earlier unstructured pruning: the masks for
    :func:`fit`, the restore record for its own lineage Step, and a note."""

    masks: dict[str, Any]
    missing: list[str]
    source: str = ""

    @property
    def restore(self) -> dict[str, Any]:
        """``{SPARSE_RECORD: names}`` for ``Component.step(restore=...)`` ({} when none)."""
        return {SPARSE_RECORD: sorted(self.masks)} if self.masks else {}

    @property
    def notes(self) -> list[str]:
        """Lineage notes: what was kept and what could no longer be found."""
        out = []
        if self.masks:
            zeros = sum(int((~m).sum()) for m in self.masks.values())
            total = sum(m.numel() for m in self.masks.values())
            out.append(f"kept the {zeros} zero(s) of {len(self.masks)} pruned tensor(s) "
                       f"({zeros / max(total, 1):.1%} of their weights, from {self.source}) "
                       "fixed through training")
        if self.missing:
            out.append(f"{len(self.missing)} pruned tensor(s) recorded by {self.source} are no "
                       f"longer in the model under their names (a later step rewrote them); "
                       f"their zeros are not enforced: {self.missing[:6]}")
        return out

    def apply(self, model: Any) -> None:
        """Zero the masked-out entries of ``model``'s parameters of the same names."""
        params = dict(model.named_parameters())
        apply_masks([(params[n], m.to(params[n].device)) for n, m in self.masks.items()
                     if n in params and tuple(params[n].shape) == tuple(m.shape)])


def kept_zeros(model: Any, artifact: Any) -> KeptZeros:
    """The zeros of ``artifact``'s unstructured pruning, as masks over ``model`` (the copy a
    training step is about to train; see :func:`sparse_param_names`, :func:`zero_masks`)."""
    names = sparse_param_names(artifact)
    if not names:
        return KeptZeros({}, [])
    source = next((s.component for s in reversed(artifact.lineage)
                   if isinstance(s.restore, dict) and SPARSE_RECORD in s.restore), "")
    masks, missing = zero_masks(model, names)
    return KeptZeros(masks, missing, source)


# ---- pieces of the loop ------------------------------------------------------------------

def _default_loss(model: Any, inputs: tuple[Any, ...], targets: Any) -> Any:
    from torch.nn import functional as F

    out = model(*inputs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return F.cross_entropy(out.float(), targets)


def _model_device(model: Any) -> str:
    p = next(iter(model.parameters()), None)
    return str(p.device) if p is not None else "cpu"


def _count_batches(data: Iterable[Any]) -> int:
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return sum(1 for _ in data)


def _epoch_batches(data: Any, cfg: TrainConfig, epoch: int, world: int, rank: int,
                   per_rank: int) -> Iterable[Any]:
    """This rank's ``(index, batch)`` pairs for ``epoch``: optionally reordered (lists), then
    sharded by position; ``index`` is the batch's position in ``data`` (for error messages)."""
    import torch

    order = None
    if cfg.shuffle and isinstance(data, (list, tuple)):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(len(data), generator=g).tolist()
        data = [data[i] for i in order]
    taken = 0
    for i, batch in enumerate(data):
        if taken >= per_rank:
            return
        if i % world == rank:
            taken += 1
            yield (order[i] if order is not None else i), batch


def _any_rank_failed(err: DataError | None, device: Any) -> DataError | None:
    """Share whether any rank drew a malformed batch, so that no rank waits in a collective."""
    import torch
    from torch import distributed as dist

    flag = torch.tensor([0 if err is None else 1], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if err is None and int(flag[0]):
        return DataError("fit: another rank drew a malformed train_data batch (its error names "
                         "the batch); every rank stopped.")
    return err


def _split(batch: Any, index: int) -> tuple[tuple[Any, ...], Any]:
    if isinstance(batch, dict) and "inputs" in batch:
        return as_input_tuple(batch["inputs"]), batch.get("targets")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise DataError(f"fit: train_data item {index} is not an (inputs, targets) pair "
                        f"(got {type(batch).__name__}).")
    return as_input_tuple(batch[0]), batch[1]


def _to_device(obj: Any, device: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _make_optimizer(cfg: TrainConfig, params: list[Any]) -> Any:
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.schedule == "linear":
        return max(0.0, 1.0 - t)
    if cfg.schedule == "step":
        return cfg.step_gamma ** min(2, int(t * 3))
    return 1.0


def _amp(cfg: TrainConfig, device: Any, ctx: Any) -> tuple[Any, Any]:
    import torch

    if cfg.precision == "fp32":
        return None, None
    if cfg.precision == "fp16" and device.type == "cuda":
        return torch.float16, torch.amp.GradScaler("cuda")
    if cfg.precision == "fp16":
        msg = f"fit: precision='fp16' needs CUDA; training on {device} uses bf16 autocast instead."
        ctx.warn(msg) if ctx is not None else log.warning(msg)
    return torch.bfloat16, None


def _seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    import numpy as np  # a declared dependency

    np.random.seed(seed % 2**32)


def _snapshot(obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    return {k: v.detach().clone() for k, v in obj.state_dict().items()}


def _restore(model: Any, good: dict[str, Any], extra: list[Any], good_extra: list[Any]) -> None:
    import torch

    model.load_state_dict(good)
    with torch.no_grad():
        for p, v in zip(extra, good_extra):
            p.copy_(v)


def _sync_grads(extra: list[Any], world: int) -> None:
    from torch import distributed as dist

    for p in extra:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def _sync_buffers(model: Any, world: int) -> None:
    """Average floating buffers (BN running stats) over ranks; others follow rank 0."""
    from torch import distributed as dist

    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b /= world
        else:
            dist.broadcast(b, src=0)


def _evaluate(model: Any, eval_fn: Any, dist_on: bool, rank: int, device: Any) -> float | None:
    """Run eval_fn on rank 0 in eval mode, restore each module's mode, share the result."""
    import torch

    if eval_fn is None:
        return None
    value = torch.zeros(1, dtype=torch.float64, device=device)
    if rank == 0:
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            with torch.no_grad():
                value[0] = float(eval_fn(model))
        finally:
            for m, mode in modes.items():
                m.training = mode
    if dist_on:
        from torch import distributed as dist

        dist.broadcast(value, src=0)
    return float(value[0])


#: the logger of the lines that say how a long run is going when no progress bar does: one
#: per training epoch here (and one per search trial in modelopt_search). The ``modelopt``
#: command shows its INFO lines on stderr unless ``--quiet``; a program sees them when it
#: configures logging (e.g. ``logging.basicConfig(level=logging.INFO)``).
PROGRESS_LOG = "modelopt.progress"


def clock(seconds: float) -> str:
    """``seconds`` as ``m:ss`` (``h:mm:ss`` from an hour on), as progress lines show time."""
    s = max(0, round(seconds))
    h, m = divmod(s, 3600)
    return f"{h}:{m // 60:02d}:{m % 60:02d}" if h else f"{m // 60}:{m % 60:02d}"


def eta_text(elapsed_s: float, done: float, total: float) -> str:
    """``"elapsed 0:12, ETA 1:05"``: the time so far, and the time left at the pace of the
    ``done`` units of ``total`` finished so far (``ETA ?`` before the first)."""
    left = "?" if done <= 0 else clock(elapsed_s / done * max(total - done, 0))
    return f"elapsed {clock(elapsed_s)}, ETA {left}"


def _best_label(has_metric: bool, best: float) -> tuple[str, str]:
    """What ``best`` is (the loop keeps the metric, or minus the train loss without one):
    ``("best_metric", "97.5")`` or ``("best_loss", "0.1234")``."""
    return ("best_metric", f"{best:.4g}") if has_metric else ("best_loss", f"{-best:.4f}")


def _postfix(epoch: int, loss: float, best: float | None,
             has_metric: bool = False) -> dict[str, str]:
    d = {"ep": str(epoch + 1), "loss": f"{loss:.4f}"}
    if best is not None:
        key, value = _best_label(has_metric, best)
        d[key] = value
    return d


class _Progress:
    """How :func:`fit` says how training goes: a tqdm bar (rank 0, when ``ctx`` shows progress:
    loss, and ``best_metric`` or ``best_loss``, elapsed and ETA), else one line per epoch on
    the :data:`PROGRESS_LOG` logger (loss, metric, the best so far, elapsed and ETA)."""

    def __init__(self, total: int, ctx: Any, rank: int, initial: int, has_metric: bool) -> None:
        self.total, self.initial, self.has_metric = total, initial, has_metric
        self.t0 = time.perf_counter()
        self.bar = None
        if rank == 0 and (ctx is None or getattr(ctx, "show_progress", True)):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", leave=False,
                            dynamic_ncols=True, disable=None if ctx is None else False)

    def step(self, epoch: int, loss: float, best: float | None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(_postfix(epoch, loss, best, self.has_metric), refresh=False)

    def epoch_done(self, epochs: int, rec: dict[str, Any], state: dict[str, Any]) -> None:
        """Log epoch ``rec``; without a bar, say it on :data:`PROGRESS_LOG` too."""
        log.info("epoch %d/%d: %s", rec["epoch"], epochs, rec)
        if self.bar is not None and not getattr(self.bar, "disable", False):
            return
        text = f"train epoch {rec['epoch']}/{epochs}: loss {rec['train_loss']:.4f}"
        if "metric" in rec:
            text += f", metric {rec['metric']:.4g}"
        if state["best"] is not None:
            key, value = _best_label(self.has_metric, state["best"])
            text += f" ({key.replace('_', ' ')} {value})"
        done = state["step"] - self.initial
        text += "; " + eta_text(time.perf_counter() - self.t0, done, self.total - self.initial)
        logging.getLogger(PROGRESS_LOG).info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---- checkpoints: safetensors for tensors, JSON for scalars ------------------------------

_SKIP_CFG = ("resume", "checkpoint_dir", "epochs", "steps", "device")


def _save_ckpt(folder: Path, model: Any, extra: list[Any], opt: Any, scaler: Any,
               state: dict[str, Any], cfg: TrainConfig, extra_state: Any = None) -> None:
    """Write model/optimizer tensors (safetensors) and scalars (JSON); swap in atomically."""
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".last.tmp-", dir=folder.parent))
    weights = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    weights.update({f"__extra__.{i}": p.detach().cpu().clone() for i, p in enumerate(extra)})
    if extra_state is not None:
        weights.update({f"__state__.{k}": v.detach().cpu().clone().contiguous()
                        for k, v in extra_state.state_dict().items()})
    save_file(weights, str(tmp / "model.safetensors"))
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if hasattr(v, "detach"):
                tensors[f"{idx}.{k}"] = v.detach().cpu().clone().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    meta = {"epoch": state["epoch"], "step": state["step"], "history": state["history"],
            "best": state["best"], "bad": state["bad"], "opt_scalars": scalars,
            "param_groups": sd["param_groups"], "scaler": scaler.state_dict() if scaler else None,
            "config": {k: v for k, v in config_to_data(cfg).items() if k not in _SKIP_CFG}}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _load_ckpt(folder: Path, model: Any, extra: list[Any], opt: Any, scaler: Any,
               cfg: TrainConfig, ctx: Any, extra_state: Any = None) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    meta = json.loads((folder / "state.json").read_text())
    now = {k: v for k, v in config_to_data(cfg).items() if k not in _SKIP_CFG}
    if meta.get("config") != now:
        diff = sorted(k for k in now if meta.get("config", {}).get(k) != now[k])
        msg = f"fit: resuming {folder} with a different config ({', '.join(diff)} changed)."
        ctx.warn(msg) if ctx is not None else log.warning(msg)
    weights = load_file(str(folder / "model.safetensors"))
    ex = [weights.pop(f"__extra__.{i}", None) for i in range(len(extra))]
    saved_state = {k[len("__state__."):]: weights.pop(k) for k in list(weights)
                   if k.startswith("__state__.")}
    if extra_state is not None:
        if not saved_state:
            raise TrainingError(f"fit: {folder} holds no extra training state (e.g. an EMA "
                                "teacher) but this run keeps one; resume from a checkpoint "
                                "written by the same kind of run, or set resume=False.")
        extra_state.load_state_dict(saved_state)
    model.load_state_dict(weights)
    with torch.no_grad():
        for p, v in zip(extra, ex):
            if v is not None:
                p.copy_(v)
    per: dict[int, dict[str, Any]] = {}
    for key, v in load_file(str(folder / "optimizer.safetensors")).items():
        idx, k = key.split(".", 1)
        per.setdefault(int(idx), {})[k] = v
    for key, v in meta["opt_scalars"].items():
        idx, k = key.split(".", 1)
        per.setdefault(int(idx), {})[k] = v
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v
               for k, v in g.items()} for g in meta["param_groups"]]
    opt.load_state_dict({"state": per, "param_groups": groups})
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return {k: meta[k] for k in ("epoch", "step", "history", "best", "bad")}


def load_checkpoint_weights(checkpoint_dir: str | os.PathLike[str], model: Any) -> Any:
    """Load the model weights of ``checkpoint_dir/last`` into ``model`` (safetensors only)."""
    from safetensors.torch import load_file

    weights = load_file(str(Path(checkpoint_dir) / "last" / "model.safetensors"))
    model.load_state_dict({k: v for k, v in weights.items() if not k.startswith("__extra__.")})
    return model
