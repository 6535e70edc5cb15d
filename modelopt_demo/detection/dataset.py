"""Digits detection: scikit-learn's 8x8 digits (shipped as ``modelopt_demo/digits.npz``) pasted
at random positions and scales on small canvases, with pixel boxes and classes 0-9.

The digit images are split first (stratified, fixed seed) into train / val / test pools, so no
digit image of the test canvases was ever seen in training. Everything is deterministic given
the seed; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..data import _digits, stratified_split

__all__ = [
    "MAX_OBJECTS",
    "MEAN",
    "STD",
    "DetectionData",
    "DetectionSplit",
    "collate_targets",
    "load_detection_data",
    "make_canvases",
]

MAX_OBJECTS = 4
#: fixed input normalisation (canvas pixels are in 0..1)
MEAN, STD = 0.1, 0.25


@dataclass(frozen=True)
class DetectionSplit:
    """Canvases ``images`` (N, 1, S, S) float32 (normalised) with per-image ``boxes``
    ((k, 4) float32, x1 y1 x2 y2 in pixels) and ``labels`` ((k,) int64, 0-9)."""

    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, targets)`` batches; targets padded as by :func:`collate_targets`."""
        out = []
        for i in range(0, len(self), batch_size):
            j = min(i + batch_size, len(self))
            out.append((self.images[i:j].contiguous(),
                        collate_targets(self.boxes[i:j], self.labels[i:j])))
        return out

    def inputs(self, batch_size: int) -> list[torch.Tensor]:
        """Input batches only (calibration / inference)."""
        return [self.images[i:i + batch_size].contiguous()
                for i in range(0, len(self), batch_size)]


@dataclass(frozen=True)
class DetectionData:
    """The three splits plus the canvas geometry."""

    train: DetectionSplit
    val: DetectionSplit
    test: DetectionSplit
    size: int

    @property
    def example(self) -> torch.Tensor:
        """One test canvas, shape (1, 1, S, S)."""
        return self.test.images[:1]


def collate_targets(boxes: list[torch.Tensor], labels: list[torch.Tensor],
                    max_objects: int = MAX_OBJECTS) -> torch.Tensor:
    """Pad per-image targets into one float tensor (B, max_objects, 5): ``class, x1, y1, x2,
    y2``; padding rows have class -1."""
    t = torch.zeros(len(boxes), max_objects, 5)
    t[:, :, 0] = -1
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        k = min(len(lab), max_objects)
        t[i, :k, 0] = lab[:k].float()
        t[i, :k, 1:] = b[:k]
    return t


def _overlaps(box: np.ndarray, others: list[np.ndarray], max_iou: float) -> bool:
    for o in others:
        iw = min(box[2], o[2]) - max(box[0], o[0])
        ih = min(box[3], o[3]) - max(box[1], o[1])
        if iw > 0 and ih > 0:
            inter = iw * ih
            union = (box[2] - box[0]) * (box[3] - box[1]) + (o[2] - o[0]) * (o[3] - o[1]) - inter
            if inter / union > max_iou:
                return True
    return False


def make_canvases(pool: np.ndarray, n: int, size: int = 64, seed: int = 0,
                  scale: tuple[int, int] = (14, 26), max_objects: int = MAX_OBJECTS,
                  max_iou: float = 0.0, noise: float = 0.05) -> DetectionSplit:
    """``n`` canvases of ``size`` x ``size`` with 1..``max_objects`` digits drawn from ``pool``
    (indices into the digits set), each resized (bilinear) to a side in ``scale`` pixels and
    placed at random with IoU <= ``max_iou`` to the others (0: no overlap)."""
    images, labels_all = _digits()
    rng = np.random.default_rng(seed)
    canv = np.zeros((n, size, size), np.float32)
    boxes: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for i in range(n):
        k = int(rng.integers(1, max_objects + 1))
        placed: list[np.ndarray] = []
        cls: list[int] = []
        for _ in range(k):
            for _try in range(30):
                side = int(rng.integers(scale[0], scale[1] + 1))
                x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
                box = np.array([x, y, x + side, y + side], np.float32)
                if not _overlaps(box, placed, max_iou):
                    break
            else:
                continue
            idx = int(pool[rng.integers(len(pool))])
            patch = torch.from_numpy(images[idx].astype(np.float32) / 16.0)[None, None]
            patch = F.interpolate(patch, size=(side, side), mode="bilinear",
                                  align_corners=False)[0, 0].clamp(0, 1).numpy()
            region = canv[i, y:y + side, x:x + side]
            np.maximum(region, patch, out=region)
            placed.append(box)
            cls.append(int(labels_all[idx]))
        boxes.append(torch.from_numpy(np.stack(placed)))
        labels.append(torch.tensor(cls, dtype=torch.int64))
    canv += noise * rng.standard_normal(canv.shape).astype(np.float32)
    x = (torch.from_numpy(canv).unsqueeze(1) - MEAN) / STD
    return DetectionSplit(x.contiguous(), boxes, labels)


def digit_pools(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint stratified (train, val, test) pools of digit indices (70/15/15)."""
    labels = _digits()[1]
    train, rest = stratified_split(labels, 0.3, seed)
    val_i, test_i = stratified_split(labels[rest], 0.5, seed + 1)
    return np.sort(train), np.sort(rest[val_i]), np.sort(rest[test_i])


def load_detection_data(n_train: int = 2000, n_val: int = 200, n_test: int = 500,
                        size: int = 64, seed: int = 0,
                        scale: tuple[int, int] | None = None) -> DetectionData:
    """Train/val/test canvases (fixed seeds; test digits from the held-out pool).
    ``scale`` defaults to digit sides of about 22%-40% of the canvas."""
    scale = scale or (max(6, round(size * 0.22)), max(8, round(size * 0.4)))
    tr, va, te = digit_pools(seed)
    return DetectionData(make_canvases(tr, n_train, size, seed * 3 + 11, scale),
                         make_canvases(va, n_val, size, seed * 3 + 12, scale),
                         make_canvases(te, n_test, size, seed * 3 + 13, scale), size)
