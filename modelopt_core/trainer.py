"""The training loop: a small :class:`Trainer` with a :class:`~modelopt_core.strategy.Strategy`
(one process, or DDP over a torchrun group, on Lightning Fabric), a
:class:`~modelopt_core.checkpoint.Checkpointer` and callbacks (:class:`EarlyStopping`,
:class:`RestoreBest`, :class:`EpochHooks`, :class:`~modelopt_core.sparsity.KeepZeros`).

:func:`modelopt_core.training.fit` builds one from a :class:`~modelopt_core.training.TrainConfig`;
use a Trainer directly to add callbacks of your own. torch and Fabric are imported lazily.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from .checkpoint import Checkpointer
from .data import (ONE_SHOT_HINT, check_iterable, check_train_item, check_train_list,
                   is_one_shot, warn_once)
from .errors import ConfigError, DataError, TrainingError
from .progress import Progress
from .strategy import Strategy
from .train_parts import (Rollback, count_batches, default_loss, epoch_batches, lr_factor,
                          make_optimizer, model_device, seed_all, split, to_device)

__all__ = ["Trainer", "TrainResult", "Callback", "EarlyStopping", "RestoreBest", "EpochHooks"]

log = logging.getLogger("modelopt.training")


@attrs.define(eq=False)
class TrainResult:
    """What a training run returns: the (same) trained model, per-epoch history, best metric."""

    model: Any
    history: list[dict[str, Any]]
    best_metric: float | None
    stopped: bool = False
    steps: int = 0
    resumed_from: int | None = None


class Callback:
    """Hooks into the :class:`Trainer`'s loop; each gets the trainer (``.model``, ``.state``
    with ``epoch``/``step``/``history``/``best``/``bad``, ``.improved``, ``.should_stop``)."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_step_end(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without improvement (of the metric, or of minus the
    train loss without one; ``min_delta`` of the config is the smallest gain that counts)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.state["bad"] >= self.patience:
            trainer.should_stop = True


class RestoreBest(Callback):
    """End with the weights of the best epoch."""

    best: dict[str, Any] | None = None

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.improved:
            self.best = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def on_train_end(self, trainer: Trainer) -> None:
        if self.best is not None:
            trainer.model.load_state_dict(self.best)


class EpochHooks(Callback):
    """Call ``start(epoch, model)`` / ``end(epoch, model)`` around every epoch."""

    def __init__(self, start: Callable[[int, Any], None] | None = None,
                 end: Callable[[int, Any], None] | None = None) -> None:
        self.start, self.end = start, end

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if self.start is not None:
            self.start(epoch, trainer.model)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.end is not None:
            self.end(record["epoch"] - 1, trainer.model)


class Trainer:
    """Train ``model`` in place; see :func:`modelopt_core.training.fit` for every argument.
    ``callbacks`` run in order; ``ctx`` gives the device, input specs, warnings and progress."""

    def __init__(self, model: Any, cfg: Any, *, loss_fn: Callable[..., Any] | None = None,
                 eval_fn: Callable[[Any], float] | None = None,
                 params: Iterable[Any] | None = None, extra_state: Any = None,
                 callbacks: Sequence[Callback] = (), ctx: Any = None) -> None:
        self.model, self.cfg, self.ctx = model, cfg, ctx
        self.loss_fn = loss_fn or default_loss
        self.eval_fn, self.extra_state = eval_fn, extra_state
        self.callbacks = list(callbacks)
        self.warn = warn_once(ctx.warn if ctx is not None else log.warning)
        params = list(params) if params is not None else list(model.parameters())
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ConfigError("fit: no trainable parameters (all have requires_grad=False).")
        ids = {id(p) for p in model.parameters()}
        self.extra = [p for p in self.params if id(p) not in ids]  # e.g. distillation adapters
        self.state: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "best": None,
                                      "bad": 0}
        self.improved = self.should_stop = False

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:  # a callback may define only some hooks (duck-typed)
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)

    def fit(self, train_data: Iterable[Any]) -> TrainResult:
        """Run the loop over ``train_data`` (an iterable of ``(inputs, targets)``)."""
        data, checked = self._data(train_data)
        home = model_device(self.model)
        total, epochs, resumed = self._setup(data)
        st, s = self.state, self.strategy
        bar = Progress(total, self.ctx, s.rank, st["step"], has_metric=self.eval_fn is not None)
        try:
            self._call("on_train_start")
            self.model.train()
            for epoch in range(st["epoch"], epochs):
                if st["step"] >= total:
                    break
                seed_all(self.cfg.seed + epoch)
                self.rollback = Rollback(self.model, self.extra, self.extra_state)
                self._call("on_epoch_start", epoch)
                t0, run, n = time.perf_counter(), 0.0, 0
                for bi, batch in epoch_batches(data, self.cfg, epoch, s.world, s.rank,
                                               self.per_rank):
                    if st["step"] >= total:
                        break
                    if not checked:
                        batch = self._check(bi, batch, epoch)
                    run, n = run + self._step(bi, batch, epoch, total), n + 1
                    bar.step(epoch, run / n, st["best"])
                    if self.cfg.log_every and st["step"] % self.cfg.log_every == 0 and s.is_main:
                        log.info("step %d: loss %.4f", st["step"], run / n)
                rec = self._end_epoch(epoch, t0, run / max(n, 1))
                if s.is_main:
                    bar.epoch_done(epochs, rec, st)
                self._save()
                if self.should_stop:
                    break
        finally:
            bar.close()
            self._call("on_train_end")
            self.model.to(home)
        metrics = [r["metric"] for r in st["history"] if "metric" in r]
        return TrainResult(self.model, st["history"], max(metrics) if metrics else None,
                           self.should_stop, st["step"], resumed)

    # ---- setup -----------------------------------------------------------------------

    def _data(self, train_data: Iterable[Any]) -> tuple[Any, bool]:
        """Check the data up front where it can be (lists); a one-shot iterator is read once."""
        cfg = self.cfg
        check_iterable(train_data, "train_data", "fit")
        if is_one_shot(train_data):  # a one-shot iterator: fine for a single pass only
            if (cfg.steps or cfg.epochs) > 1:
                raise DataError("fit: train_data is a one-shot iterator; pass a list or a "
                                "DataLoader so it can be read once per epoch.")
            train_data = list(train_data)
            if not train_data:
                raise DataError("fit: train_data is empty: " + ONE_SHOT_HINT.format(
                    field="train_data"))
        self.specs = getattr(getattr(self.ctx, "original", None), "inputs", None) or ()
        if isinstance(train_data, (list, tuple)):  # in memory: every batch before training
            return check_train_list(train_data, self.specs, "fit", self.warn), True
        return train_data, False

    def _setup(self, data: Any) -> tuple[int, int, int | None]:
        """Strategy, device, optimizer, wrapping, resume: ``(total steps, epochs, resumed)``."""
        import torch

        cfg = self.cfg
        device = torch.device(cfg.device or getattr(self.ctx, "device", None)
                              or model_device(self.model))
        self.strategy = s = Strategy.resolve(cfg.strategy, device, cfg.precision, self.warn)
        self.model.to(s.device)
        nbatches = count_batches(data)
        self.per_rank = nbatches // s.world
        if self.per_rank == 0:
            raise DataError(f"fit: train_data is empty ({nbatches} batch(es) for {s.world} "
                            "rank(s)); give at least one (inputs, targets) batch per process.")
        total = cfg.steps or cfg.epochs * self.per_rank
        self.opt = make_optimizer(cfg, self.params)
        self.net, self.fopt = s.setup(self.model, self.opt)
        ck = Checkpointer(cfg.checkpoint_dir, cfg, self.warn) if cfg.checkpoint_dir else None
        self.checkpointer, resumed = ck, None
        if ck is not None and cfg.resume and s.from_main(ck.exists()):
            self.state, scaler = ck.load(self.model, self.extra, self.opt, self.extra_state)
            s.load_scaler_state(scaler)
            resumed = self.state["epoch"]
        return total, math.ceil(total / self.per_rank), resumed

    # ---- one step, one epoch ---------------------------------------------------------

    def _check(self, bi: int, batch: Any, epoch: int) -> Any:
        """Check a lazily drawn batch on every rank, so that all stop together."""
        batch, bad = to_device(batch, self.strategy.device), None
        try:
            batch = check_train_item(batch, self.specs, bi, "fit", self.warn)
        except DataError as e:
            bad = e
        if self.strategy.any(bad is not None) and bad is None:
            bad = DataError("fit: another rank drew a malformed train_data batch (its error "
                            "names the batch); every rank stopped.")
        if bad is not None:
            self.rollback.restore()
            raise DataError(f"{bad} Training stopped at epoch {epoch + 1}; the weights from "
                            f"the start of epoch {epoch + 1} were restored.") from bad
        return batch

    def _step(self, bi: int, batch: Any, epoch: int, total: int) -> float:
        """One optimizer step on ``batch``; returns the loss averaged over the ranks."""
        import torch

        s, st, cfg = self.strategy, self.state, self.cfg
        inputs, targets = to_device(split(batch, bi), s.device)
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(cfg, st["step"], total)
        with s.autocast():
            loss = self.loss_fn(self.net, inputs, targets)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TrainingError("fit: loss_fn must return a scalar tensor.")
        seen = s.mean(loss.detach().float())
        if not torch.isfinite(seen):
            self.rollback.restore()
            raise TrainingError(
                f"fit: non-finite loss ({float(seen)}) at epoch {epoch + 1}, step "
                f"{st['step'] + 1} (batch {bi}); training stopped and the weights from the start "
                f"of epoch {epoch + 1} (the last good ones) were restored. Lower lr, set "
                "grad_clip, or check the data and loss for NaN/Inf.")
        self.fopt.zero_grad(set_to_none=True)
        s.backward(loss)
        s.sync_grads(self.extra)
        if cfg.grad_clip:
            s.clip(self.net, self.fopt, cfg.grad_clip)
        self.fopt.step()
        st["step"] += 1
        self._call("on_step_end")
        return float(seen)

    def _end_epoch(self, epoch: int, t0: float, loss: float) -> dict[str, Any]:
        """Sync buffers, evaluate (rank 0), record the epoch the same way on every rank."""
        st = self.state
        self.strategy.sync_buffers(self.model)
        metric = self._evaluate()
        # rank 0's wall time and metric: every rank ends with the same history
        spent, metric = self.strategy.from_main((round(time.perf_counter() - t0, 3), metric))
        rec = {"epoch": epoch + 1, "steps": st["step"], "train_loss": loss,
               "lr": self.opt.param_groups[0]["lr"], "time_s": spent}
        if metric is not None:
            rec["metric"] = metric
        score = metric if metric is not None else -loss
        self.improved = st["best"] is None or score > st["best"] + self.cfg.min_delta
        st["best"], st["bad"] = (score, 0) if self.improved else (st["best"], st["bad"] + 1)
        st["history"].append(rec)
        st["epoch"] = epoch + 1
        self._call("on_epoch_end", rec)
        return rec

    def _evaluate(self) -> float | None:
        """Run eval_fn (rank 0) in eval mode without gradients; restore each module's mode."""
        import torch

        if self.eval_fn is None or not self.strategy.is_main:
            return None
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            with torch.no_grad():
                return float(self.eval_fn(self.model))
        finally:
            for m, mode in modes.items():
                m.training = mode

    def _save(self) -> None:
        """Rank 0 writes the 'last' checkpoint; the others wait until it is there."""
        if self.checkpointer is None:
            return
        if self.strategy.is_main:
            self.checkpointer.save(self.model, self.extra, self.opt,
                                   self.strategy.scaler_state(), self.state, self.extra_state)
        self.strategy.barrier()
