"""Small pieces of the training loop: batches (order, shards, device), the optimizer, the LR
schedule, seeding and the roll-back snapshot. torch is imported lazily."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any

from .errors import DataError
from .interfaces import as_input_tuple

__all__ = ["default_loss", "model_device", "count_batches", "epoch_batches", "split",
           "to_device", "make_optimizer", "lr_factor", "seed_all", "Rollback"]


def default_loss(model: Any, inputs: tuple[Any, ...], targets: Any) -> Any:
    """Cross-entropy of the model's (first) output against integer targets."""
    from torch.nn import functional as F

    out = model(*inputs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return F.cross_entropy(out.float(), targets)


def model_device(model: Any) -> str:
    p = next(iter(model.parameters()), None)
    return str(p.device) if p is not None else "cpu"


def count_batches(data: Iterable[Any]) -> int:
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return sum(1 for _ in data)


def epoch_batches(data: Any, cfg: Any, epoch: int, world: int, rank: int,
                  per_rank: int) -> Iterable[Any]:
    """This rank's ``(index, batch)`` pairs for ``epoch``: sharded by position (step ``s`` of
    rank ``r`` is batch ``s * world + r``, so one global step covers ``world`` consecutive
    batches), and for lists with ``shuffle`` those global steps reordered (the same order on
    every rank: a run on ``world`` processes sees the data in the order one process sees the
    same batches joined ``world`` by ``world``); ``index`` is the batch's position in ``data``
    (for error messages)."""
    import torch

    order = None
    if cfg.shuffle and isinstance(data, (list, tuple)):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        steps = len(data) // world  # whole global steps; the few batches left over go last
        order = [k * world + j for k in torch.randperm(steps, generator=g).tolist()
                 for j in range(world)] + list(range(steps * world, len(data)))
        data = [data[i] for i in order]
    taken = 0
    for i, batch in enumerate(data):
        if taken >= per_rank:
            return
        if i % world == rank:
            taken += 1
            yield (order[i] if order is not None else i), batch


def split(batch: Any, index: int) -> tuple[tuple[Any, ...], Any]:
    """``(inputs tuple, targets)`` of one train_data item."""
    if isinstance(batch, dict) and "inputs" in batch:
        return as_input_tuple(batch["inputs"]), batch.get("targets")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise DataError(f"fit: train_data item {index} is not an (inputs, targets) pair "
                        f"(got {type(batch).__name__}).")
    return as_input_tuple(batch[0]), batch[1]


def to_device(obj: Any, device: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def make_optimizer(cfg: Any, params: list[Any]) -> Any:
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: Any, step: int, total: int) -> float:
    """The LR multiplier at ``step`` of ``total``: linear warmup, then the schedule."""
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


def seed_all(seed: int) -> None:
    """Seed Python, torch and numpy (re-applied at every epoch start: exact resume)."""
    import numpy as np  # a declared dependency
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


class Rollback:
    """The weights (model, extra tensors) and extra training state at an epoch's start, put
    back when the epoch fails (a malformed batch, a non-finite loss)."""

    def __init__(self, model: Any, extra: list[Any], extra_state: Any) -> None:
        self.model, self.extra, self.extra_state = model, extra, extra_state
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.tensors = [p.detach().clone() for p in extra]
        self.state = (None if extra_state is None else
                      {k: v.detach().clone() for k, v in extra_state.state_dict().items()})

    def restore(self) -> None:
        import torch

        self.model.load_state_dict(self.weights)
        with torch.no_grad():
            for p, v in zip(self.extra, self.tensors):
                p.copy_(v)
        if self.extra_state is not None:
            self.extra_state.load_state_dict(self.state)
