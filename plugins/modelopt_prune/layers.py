"""The ``nn.Module`` classes of the compression plugin: the MobileNetV2-style block of
``arch.depthwise_separable`` and the k-means shared layers of ``compress.weight_sharing``.

This module imports torch at load time; the optimizers import it inside ``apply`` /
``rebuild``, so plugin discovery never does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .weight_sharing import kmeans_1d, pack_indices, unpack_indices

__all__ = ["InvertedResidual", "identity_bn", "SharedLinear", "SharedConv"]


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted-residual block: 1x1 expand -> BN -> ReLU6 -> depthwise KxK -> BN ->
    ReLU6 -> 1x1 project -> BN (linear bottleneck), plus the input when ``residual``.

    ``arch.depthwise_separable`` builds it with identity BatchNorms (see :func:`identity_bn`)
    and weights that reproduce the replaced conv (see ``modelopt_prune.depthwise``)."""

    def __init__(self, cin: int, cout: int, hidden: int, kernel_size: Any, stride: Any,
                 padding: Any, dilation: Any, bias: bool, residual: bool) -> None:
        super().__init__()
        self.expand = nn.Conv2d(cin, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act1 = nn.ReLU6()
        self.dw = nn.Conv2d(hidden, hidden, kernel_size, stride, padding, dilation,
                            groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.act2 = nn.ReLU6()
        self.project = nn.Conv2d(hidden, cout, 1, bias=bias)
        self.bn3 = nn.BatchNorm2d(cout)
        self.residual = residual

    def forward(self, x: Any) -> Any:
        y = self.act1(self.bn1(self.expand(x)))
        y = self.act2(self.bn2(self.dw(y)))
        y = self.bn3(self.project(y))
        return x + y if self.residual else y


def identity_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """Make an eval-mode BatchNorm exactly the identity (in place): weight 1, bias 0,
    running_mean 0 and running_var ``1 - eps`` rounded so that ``var + eps == 1`` in the
    layer's dtype, hence ``1 / sqrt(var + eps) == 1`` and ``bn(x) == x`` bit for bit."""
    with torch.no_grad():
        one = torch.ones((), dtype=bn.running_var.dtype)
        eps = torch.tensor(bn.eps, dtype=bn.running_var.dtype)
        var = one - eps
        for _ in range(8):  # rounding: step to the neighbour that makes var + eps == 1
            total = var + eps
            if total == one:
                break
            var = torch.nextafter(var, -one if total > one else 2 * one)
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(float(var))
    return bn


class _Shared:
    """Mixin: weight = codebook[indices], cached while not training."""

    def _init_shared(self, weight: Any, k: int, iters: int, init: str) -> None:
        c, labels = kmeans_1d(weight, k, iters, init)
        self._set_shared(c.to(weight.dtype), labels, tuple(weight.shape))

    def _set_shared(self, codebook: Any, labels: Any, shape: tuple[int, ...]) -> None:
        self.n_clusters = len(codebook)
        self.weight_shape = shape
        self.codebook = torch.nn.Parameter(codebook)
        self.register_buffer("indices", pack_indices(labels, self.n_clusters))
        self._cache: tuple[int, Any] | None = None

    @property
    def weight(self) -> Any:
        if self.training or torch.is_grad_enabled() and self.codebook.requires_grad:
            return self._rebuild()
        ver = self.codebook._version
        if self._cache is None or self._cache[0] != ver:
            self._cache = (ver, self._rebuild().detach())
        return self._cache[1]

    def num_weights(self) -> int:
        """Weights of the dense layer this one computes (plus the bias)."""
        return math.prod(self.weight_shape) + (self.bias.numel() if self.bias is not None
                                               else 0)

    def macs_per_output(self) -> int:
        """Multiply-accumulates per output element (for MAC counting)."""
        return math.prod(self.weight_shape[1:])

    def _rebuild(self) -> Any:
        n = math.prod(self.weight_shape)
        return self.codebook[unpack_indices(self.indices, n, self.n_clusters)].view(
            self.weight_shape)


class SharedLinear(_Shared, nn.Module):
    """Linear layer whose weight is ``codebook[indices]`` (k-means weight sharing)."""

    def forward(self, x: Any) -> Any:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, clusters={self.n_clusters}"


class SharedConv(_Shared, nn.Module):
    """Conv1d/2d/3d whose weight is ``codebook[indices]`` (k-means weight sharing)."""

    def forward(self, x: Any) -> Any:
        fn = (F.conv1d, F.conv2d, F.conv3d)[self.ndim - 1]
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return fn(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return fn(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                  self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, groups={self.groups}, clusters={self.n_clusters}")
