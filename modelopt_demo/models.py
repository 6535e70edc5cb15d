"""Reference models defined in-project: digits CNN, ResNet-18-shaped net, YOLO-style detector,
depthwise (MobileNet-style) net, a Linear-heavy MLP and an LSTM classifier."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN", "BasicBlock", "ResNet18", "YoloStyle", "DepthwiseNet", "MLP",
           "LSTMClassifier"]


def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1,
            act: bool = True) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ ReLU)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """The demo CNN for 8x8 digits (1 channel in, 10 classes out); ~40k parameters."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, width), conv_bn(width, width), nn.MaxPool2d(2),
            conv_bn(width, 2 * width), conv_bn(2 * width, 2 * width), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 4, 64),
                                        nn.ReLU(inplace=True), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block with a projection shortcut when shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                         nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class ResNet18(nn.Module):
    """A ResNet-18-shaped classifier (same layer shapes as torchvision's resnet18)."""

    def __init__(self, num_classes: int = 1000, in_ch: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cfg, blocks, cin = [(64, 1), (128, 2), (256, 2), (512, 2)], [], 64
        for cout, stride in cfg:
            blocks.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = blocks
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1 = conv_bn(c, c // 2, 1)
        self.cv2 = conv_bn(c // 2, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class YoloStyle(nn.Module):
    """A small YOLO-style detector: residual backbone, FPN neck with upsample + concat, and
    three heads (strides 8/16/32) each giving ``anchors * (5 + classes)`` channels."""

    def __init__(self, num_classes: int = 4, anchors: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        no = anchors * (5 + num_classes)
        self.stem = conv_bn(3, w, 3, 2)
        self.d1 = nn.Sequential(conv_bn(w, 2 * w, 3, 2), _Res(2 * w))               # /4
        self.d2 = nn.Sequential(conv_bn(2 * w, 4 * w, 3, 2), _Res(4 * w))           # /8
        self.d3 = nn.Sequential(conv_bn(4 * w, 8 * w, 3, 2), _Res(8 * w))           # /16
        self.d4 = nn.Sequential(conv_bn(8 * w, 16 * w, 3, 2), _Res(16 * w))         # /32
        self.lat4 = conv_bn(16 * w, 8 * w, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse3 = conv_bn(16 * w, 8 * w, 3)
        self.lat3 = conv_bn(8 * w, 4 * w, 1)
        self.fuse2 = conv_bn(8 * w, 4 * w, 3)
        self.head8 = nn.Conv2d(4 * w, no, 1)
        self.head16 = nn.Conv2d(8 * w, no, 1)
        self.head32 = nn.Conv2d(16 * w, no, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c2 = self.d2(self.d1(self.stem(x)))
        c3 = self.d3(c2)
        c4 = self.d4(c3)
        p3 = self.fuse3(torch.cat([self.up(self.lat4(c4)), c3], 1))
        p2 = self.fuse2(torch.cat([self.up(self.lat3(p3)), c2], 1))
        return self.head8(p2), self.head16(p3), self.head32(c4)


class _InvRes(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(conv_bn(cin, hid, 1), conv_bn(hid, hid, 3, stride, groups=hid),
                                   conv_bn(hid, cout, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res else y


class DepthwiseNet(nn.Module):
    """A MobileNetV2-style classifier with depthwise convs and inverted residuals."""

    def __init__(self, num_classes: int = 10, in_ch: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn(in_ch, w, 3, 2), _InvRes(w, w, 1), _InvRes(w, 2 * w, 2),
            _InvRes(2 * w, 2 * w, 1), _InvRes(2 * w, 4 * w, 2), conv_bn(4 * w, 8 * w, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w,
                                                                                num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """A Linear-heavy model (for dynamic quantization)."""

    def __init__(self, d_in: int = 512, hidden: int = 2048, d_out: int = 512,
                 depth: int = 4) -> None:
        super().__init__()
        dims = [d_in] + [hidden] * (depth - 1) + [d_out]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.GELU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LSTMClassifier(nn.Module):
    """An LSTM (or GRU) sequence classifier (for dynamic quantization)."""

    def __init__(self, d_in: int = 64, hidden: int = 256, num_classes: int = 10,
                 cell: str = "lstm") -> None:
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(d_in, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])
