"""Adapters mapping a student feature onto its teacher's shape: a 1x1 convolution (or a linear
layer) when the channel counts differ, interpolation when the spatial (or sequence) sizes
differ. Shapes that no adapter can bridge raise :class:`ConfigError` naming both layers.

This module imports torch (``FeatureAdapter`` is an ``nn.Module``): the plugin imports it only
when ``distill.features`` runs, so plugin discovery stays free of torch."""

from __future__ import annotations

from typing import Any

from torch import nn

import modelopt_core as mo

__all__ = ["FeatureAdapter", "make_adapter"]


def make_adapter(s_shape: tuple[int, ...], t_shape: tuple[int, ...], s_name: str,
                 t_name: str, who: str) -> Any:
    """A :class:`FeatureAdapter` for per-batch shapes ``s_shape`` -> ``t_shape``."""
    return FeatureAdapter(s_shape, t_shape, s_name, t_name, who)


class FeatureAdapter(nn.Module):
    """Student feature -> teacher feature shape.

    4-D ``(B, C, H, W)``: 1x1 conv for channels, bilinear resize for ``(H, W)``;
    3-D ``(B, L, C)``: linear on ``C``, linear resize along ``L``; 2-D ``(B, C)``: linear.
    """

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...], s_name: str,
                 t_name: str, who: str = "distill.features") -> None:
        super().__init__()
        self.s_shape, self.t_shape = tuple(s_shape), tuple(t_shape)
        rank = len(s_shape)
        where = (f"{who}: student layer {s_name!r} gives shape {list(s_shape)} and teacher "
                 f"layer {t_name!r} gives {list(t_shape)}")
        if rank != len(t_shape) or rank not in (2, 3, 4):
            raise mo.ConfigError(f"{where}: no adapter maps a {rank}-D feature onto a "
                                 f"{len(t_shape)}-D one (2-D, 3-D and 4-D features of equal "
                                 "rank are supported). Pick layers of the same kind in "
                                 "`pairs`.")
        if s_shape[0] != t_shape[0]:
            raise mo.ConfigError(f"{where}: batch sizes differ; the two layers do not see the "
                                 "same samples.")
        self.rank = rank
        ch_s, ch_t = (s_shape[1], t_shape[1]) if rank in (2, 4) else (s_shape[2], t_shape[2])
        self.size = tuple(t_shape[2:]) if rank == 4 else (t_shape[1],) if rank == 3 else ()
        s_size = tuple(s_shape[2:]) if rank == 4 else (s_shape[1],) if rank == 3 else ()
        self.resize = s_size != self.size
        if ch_s == ch_t:
            self.proj = nn.Identity()
        elif rank == 4:
            self.proj = nn.Conv2d(ch_s, ch_t, 1, bias=False)
        else:
            self.proj = nn.Linear(ch_s, ch_t, bias=False)
        self.kind = ", ".join(
            ([f"1x1 conv {ch_s}->{ch_t}" if rank == 4 else f"linear {ch_s}->{ch_t}"]
             if ch_s != ch_t else [])
            + ([f"resize {list(s_size)}->{list(self.size)}"] if self.resize else [])) or "identity"

    def forward(self, x: Any) -> Any:
        from torch.nn import functional as F

        x = self.proj(x)
        if not self.resize:
            return x
        if self.rank == 4:
            return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return F.interpolate(x.transpose(1, 2), size=self.size, mode="linear",
                             align_corners=False).transpose(1, 2)
