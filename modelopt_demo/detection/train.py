"""Training the detectors: centre-sampling target assignment, the loss (BCE objectness, BCE
classes, GIoU boxes: YOLOX/FCOS-style) and :func:`train_detector` on the shared loop
(:func:`modelopt_core.training.fit`) with AdamW and a cosine schedule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .dataset import DetectionData
from .decode import cell_centers, flatten_outputs
from .models import STRIDES

__all__ = ["assign", "bn_l1", "detection_loss", "giou", "train_detector"]


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of paired boxes (N, 4) and (N, 4); (N,)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-6)
    cw = torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])
    hull = (cw[:, 0] * cw[:, 1]).clamp(min=1e-6)
    return iou - (hull - union) / hull


def assign(outputs: Sequence[torch.Tensor], targets: torch.Tensor,
           strides: Sequence[int] = STRIDES, radius: float = 1.5
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre sampling on every level: a cell is positive for a box when its centre lies
    inside the box and within ``radius`` strides of the box centre; a cell claimed by several
    boxes takes the smallest. Returns (positive mask (B, N), assigned box index (B, N))."""
    ctrs, cell_stride = [], []
    for o, s in zip(outputs, strides):
        c = cell_centers(o.shape[2], o.shape[3], s, o.device)
        ctrs.append(c)
        cell_stride.append(torch.full((len(c),), float(s), device=o.device))
    ctr, st = torch.cat(ctrs), torch.cat(cell_stride)                     # (N, 2), (N,)
    valid = targets[..., 0] >= 0                                          # (B, M)
    box = targets[..., 1:]                                                # (B, M, 4)
    x, y = ctr[None, :, None, 0], ctr[None, :, None, 1]                   # (1, N, 1)
    inside = ((x > box[:, None, :, 0]) & (x < box[:, None, :, 2])
              & (y > box[:, None, :, 1]) & (y < box[:, None, :, 3]))     # (B, N, M)
    gc = (box[..., :2] + box[..., 2:]) / 2
    r = radius * st[None, :, None]
    near = ((x - gc[:, None, :, 0]).abs() < r) & ((y - gc[:, None, :, 1]).abs() < r)
    pos = inside & near & valid[:, None, :]
    area = ((box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1]))[:, None, :]
    cost = torch.where(pos, area.expand_as(pos), torch.full_like(pos, 1e9, dtype=box.dtype))
    best = cost.argmin(-1)
    return pos.any(-1), best


def detection_loss(outputs: Sequence[torch.Tensor], targets: torch.Tensor,
                   strides: Sequence[int] = STRIDES, box_weight: float = 5.0) -> torch.Tensor:
    """YOLOX-style loss per positive: BCE objectness over all cells, BCE one-hot classes and
    ``box_weight * (1 - GIoU)`` on positive cells; normalised by the number of positives."""
    boxes, obj, cls = flatten_outputs(outputs, strides)
    pos, best = assign(outputs, targets, strides)
    n_pos = pos.sum().clamp(min=1).float()
    loss_obj = F.binary_cross_entropy_with_logits(obj, pos.float(), reduction="sum")
    if not pos.any():
        return loss_obj / n_pos
    gt = torch.gather(targets, 1, best[..., None].expand(-1, -1, 5))[pos]   # (P, 5)
    onehot = F.one_hot(gt[:, 0].long(), cls.shape[-1]).float()
    loss_cls = F.binary_cross_entropy_with_logits(cls[pos], onehot, reduction="sum")
    loss_box = (1.0 - giou(boxes[pos], gt[:, 1:])).sum()
    return (loss_obj + loss_cls + box_weight * loss_box) / n_pos


def bn_l1(model: nn.Module) -> torch.Tensor:
    """Sum of |gamma| over the BatchNorm layers (network slimming's sparsity term)."""
    return sum(m.weight.abs().sum() for m in model.modules()
               if isinstance(m, nn.BatchNorm2d) and m.weight is not None)


def train_detector(model: nn.Module, data: DetectionData, epochs: int = 30,
                   lr: float = 1e-2, batch_size: int = 32, sparsity: float = 0.0,
                   seed: int = 0, progress: bool = False, weight_decay: float = 5e-4,
                   strides: Sequence[int] = STRIDES) -> Any:
    """Train ``model`` in place on ``data.train`` (AdamW, warmup + cosine, fixed seed);
    ``sparsity`` > 0 adds ``sparsity * sum|gamma|`` (BN-gamma L1 for later slimming).
    Returns the :class:`~modelopt_core.training.TrainResult`; the model ends in eval mode."""
    import modelopt_core as mo
    from modelopt_core.training import TrainConfig, fit

    torch.manual_seed(seed)
    batches = data.train.batches(batch_size)

    def loss_fn(m: Any, inputs: tuple[Any, ...], targets: Any) -> Any:
        loss = detection_loss(m(*inputs), targets, strides)
        return loss + sparsity * bn_l1(model) if sparsity else loss

    cfg = TrainConfig(epochs=epochs, optimizer="adamw", lr=lr, weight_decay=weight_decay,
                      schedule="cosine", warmup_steps=min(100, len(batches) * epochs // 10),
                      grad_clip=10.0, seed=seed)
    res = fit(model, batches, config=cfg, loss_fn=loss_fn,
              ctx=mo.Context(show_progress=progress))
    model.eval()
    return res
