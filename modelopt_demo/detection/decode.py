"""Decoding the detectors' raw head outputs into boxes, scores and classes.

Each head ``(B, 5 + C, H, W)`` at stride ``s`` predicts, per cell with centre
``((j + 0.5) s, (i + 0.5) s)``: distances to the box sides ``softplus(raw[0:4]) * s``
(left, top, right, bottom), an objectness logit and C class logits; the score of a cell is
``sigmoid(obj) * sigmoid(cls)`` of its best class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .nms import batched_nms

__all__ = ["Detections", "cell_centers", "decode", "decode_level", "flatten_outputs"]


@dataclass(frozen=True)
class Detections:
    """One image's detections: boxes (k, 4) x1 y1 x2 y2 pixels, scores (k,), labels (k,)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def cell_centers(h: int, w: int, stride: int, device: torch.device | None = None
                 ) -> torch.Tensor:
    """(H*W, 2) pixel centres (x, y) of the cells of an H x W grid, row-major."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                            indexing="ij")
    return (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * stride


def decode_level(raw: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
    """One head ``(B, 5 + C, H, W)`` -> boxes (B, HW, 4), objectness logits (B, HW),
    class logits (B, HW, C)."""
    b, c, h, w = raw.shape
    p = raw.float().permute(0, 2, 3, 1).reshape(b, h * w, c)
    ctr = cell_centers(h, w, stride, raw.device)
    d = F.softplus(p[..., :4]) * stride
    boxes = torch.cat([ctr - d[..., :2], ctr + d[..., 2:]], -1)
    return boxes, p[..., 4], p[..., 5:]


def flatten_outputs(outputs: Sequence[torch.Tensor], strides: Sequence[int]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All levels concatenated: boxes (B, N, 4), objectness (B, N), class logits (B, N, C)."""
    parts = [decode_level(o, s) for o, s in zip(outputs, strides)]
    return tuple(torch.cat([p[k] for p in parts], 1) for k in range(3))  # type: ignore


def decode(outputs: Sequence[torch.Tensor], strides: Sequence[int] = (4, 8, 16),
           score_threshold: float = 0.01, iou_threshold: float = 0.5, pre_nms: int = 300,
           max_det: int = 100, image_size: int | None = None) -> list[Detections]:
    """Raw head outputs (any backend's, as torch tensors) -> per-image :class:`Detections`
    after score filtering, top-``pre_nms`` selection and class-aware NMS."""
    outs = [torch.as_tensor(o) for o in outputs]
    boxes, obj, cls = flatten_outputs(outs, strides)
    prob = torch.sigmoid(obj)[..., None] * torch.sigmoid(cls)
    scores, labels = prob.max(-1)
    if image_size is not None:
        boxes = boxes.clamp(0, image_size)
    result = []
    for i in range(len(boxes)):
        keep = scores[i] > score_threshold
        b, s, lab = boxes[i][keep], scores[i][keep], labels[i][keep]
        if len(s) > pre_nms:
            top = s.topk(pre_nms).indices
            b, s, lab = b[top], s[top], lab[top]
        k = batched_nms(b, s, lab, iou_threshold)[:max_det]
        result.append(Detections(b[k], s[k], lab[k]))
    return result
