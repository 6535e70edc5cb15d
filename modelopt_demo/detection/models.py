"""Detectors for the digits-detection task, defined in-project (pure torch, export-friendly:
no data-dependent control flow in ``forward``).

* :class:`YoloDetector` — YOLOv5/v8-shaped: Conv-BN-SiLU, CSP (C3-like) backbone blocks,
  an upsample + concat (FPN) neck and three anchor-free heads at strides 4 / 8 / 16.
* :class:`MobileDetector` — the lightweight variant: depthwise-separable blocks with
  squeeze-and-excitation channel attention (:class:`SqueezeExcite`), same neck and heads.

Both return a tuple of three raw head tensors ``(B, 5 + C, H/s, W/s)`` with channels
``[l, t, r, b, objectness, class_0..class_{C-1}]`` (see :mod:`.decode`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "STRIDES",
    "CSPBlock",
    "ConvBNAct",
    "DWSeparable",
    "MobileDetector",
    "SqueezeExcite",
    "YoloDetector",
]

#: output strides of the three heads
STRIDES = (4, 8, 16)


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BatchNorm + SiLU."""

    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.SiLU() if act else nn.Identity())


class _Bottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1 = ConvBNAct(c, c, 1)
        self.cv2 = ConvBNAct(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class CSPBlock(nn.Module):
    """C3-style cross-stage-partial block: two 1x1 branches, bottlenecks on one, concat, 1x1."""

    def __init__(self, cin: int, cout: int, n: int = 1) -> None:
        super().__init__()
        h = max(cout // 2, 1)
        self.cv1 = ConvBNAct(cin, h, 1)
        self.cv2 = ConvBNAct(cin, h, 1)
        self.m = nn.Sequential(*(_Bottleneck(h) for _ in range(n)))
        self.cv3 = ConvBNAct(2 * h, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation channel attention (Hu et al. 2018): global average pool,
    1x1 reduce + SiLU, 1x1 expand + sigmoid, rescale the channels of the input."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        r = max(c // reduction, 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, r, 1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(r, c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class DWSeparable(nn.Module):
    """MobileNet-style block: depthwise 3x3 (stride s) + BN + SiLU, optional SE, pointwise
    1x1 + BN + SiLU; a residual add when the shape is unchanged."""

    def __init__(self, cin: int, cout: int, s: int = 1, se: bool = True) -> None:
        super().__init__()
        self.dw = ConvBNAct(cin, cin, 3, s, groups=cin)
        self.se = SqueezeExcite(cin) if se else nn.Identity()
        self.pw = ConvBNAct(cin, cout, 1)
        self.res = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.se(self.dw(x)))
        return x + y if self.res else y


class _Detector(nn.Module):
    """Shared FPN neck + heads over backbone features at strides 4, 8, 16."""

    def _build_neck(self, c2: int, c3: int, c4: int, no: int) -> None:
        self.lat4 = ConvBNAct(c4, c3, 1)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.fuse3 = self._fuse(2 * c3, c3)
        self.lat3 = ConvBNAct(c3, c2, 1)
        self.fuse2 = self._fuse(2 * c2, c2)
        self.pre2, self.pre3, self.pre4 = (ConvBNAct(c, c, 3) for c in (c2, c3, c4))
        self.head4, self.head8, self.head16 = (nn.Conv2d(c, no, 1) for c in (c2, c3, c4))
        for h in (self.head4, self.head8, self.head16):
            nn.init.normal_(h.weight, std=0.01)
            nn.init.zeros_(h.bias)
            with torch.no_grad():  # prior: ~1% objectness and class probability
                h.bias[4:].fill_(-4.6)

    def _fuse(self, cin: int, cout: int) -> nn.Module:
        return CSPBlock(cin, cout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c2, c3, c4 = self.backbone(x)
        l4 = self.lat4(c4)
        p3 = self.fuse3(torch.cat([self.up(l4), c3], 1))
        p2 = self.fuse2(torch.cat([self.up(self.lat3(p3)), c2], 1))
        return (self.head4(self.pre2(p2)), self.head8(self.pre3(p3)),
                self.head16(self.pre4(c4)))


class _CSPBackbone(nn.Module):
    def __init__(self, cin: int, w: int) -> None:
        super().__init__()
        self.stem = ConvBNAct(cin, w, 3, 2)                                          # /2
        self.s2 = nn.Sequential(ConvBNAct(w, 2 * w, 3, 2), CSPBlock(2 * w, 2 * w))   # /4
        self.s3 = nn.Sequential(ConvBNAct(2 * w, 4 * w, 3, 2), CSPBlock(4 * w, 4 * w))  # /8
        self.s4 = nn.Sequential(ConvBNAct(4 * w, 8 * w, 3, 2), CSPBlock(8 * w, 8 * w))  # /16

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c2 = self.s2(self.stem(x))
        c3 = self.s3(c2)
        return c2, c3, self.s4(c3)


class YoloDetector(_Detector):
    """YOLO-style anchor-free detector (CSP backbone, SiLU, FPN neck, 3 heads)."""

    def __init__(self, num_classes: int = 10, in_ch: int = 1, width: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = _CSPBackbone(in_ch, width)
        self._build_neck(2 * width, 4 * width, 8 * width, 5 + num_classes)


class _MobileBackbone(nn.Module):
    def __init__(self, cin: int, w: int) -> None:
        super().__init__()
        self.stem = ConvBNAct(cin, w, 3, 2)                                            # /2
        self.s2 = nn.Sequential(DWSeparable(w, 2 * w, 2), DWSeparable(2 * w, 2 * w))   # /4
        self.s3 = nn.Sequential(DWSeparable(2 * w, 4 * w, 2), DWSeparable(4 * w, 4 * w))
        self.s4 = nn.Sequential(DWSeparable(4 * w, 8 * w, 2), DWSeparable(8 * w, 8 * w))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c2 = self.s2(self.stem(x))
        c3 = self.s3(c2)
        return c2, c3, self.s4(c3)


class MobileDetector(_Detector):
    """Lightweight YOLO variant: depthwise-separable blocks with SE attention everywhere
    (backbone and neck), the same FPN neck and heads as :class:`YoloDetector`."""

    def __init__(self, num_classes: int = 10, in_ch: int = 1, width: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = _MobileBackbone(in_ch, width)
        self._build_neck(2 * width, 4 * width, 8 * width, 5 + num_classes)

    def _fuse(self, cin: int, cout: int) -> nn.Module:
        return nn.Sequential(ConvBNAct(cin, cout, 1), DWSeparable(cout, cout))
