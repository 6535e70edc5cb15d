"""The INT8 layers of ``quantize.dynamic``: :class:`DynLinear` (INT8 weights, dynamically
quantized INT8 inputs through fbgemm) and :class:`DynRNN` (LSTM/GRU on top of it).

This module imports torch at load time; :mod:`modelopt_quant.dynamic` imports it inside
``apply`` / ``rebuild``, so plugin discovery never does.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

import modelopt_core as mo

__all__ = ["DynLinear", "DynRNN"]


def _int8_weight(w: torch.Tensor, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.detach().float()
    if not bool(torch.isfinite(w).all()):
        raise mo.NumericalError(f"layer {who!r}: the weight holds NaN or Inf; fix the model "
                                "before quantizing.")
    scale = w.abs().amax(1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


def _pack(w_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """fbgemm-packed weight for ``linear_dynamic``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch._make_per_channel_quantized_tensor(
            w_int8, scale.double(), torch.zeros(len(scale), dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(q, bias)


class DynLinear(nn.Module):
    """A Linear with INT8 weights (per-channel) and dynamically quantized INT8 inputs."""

    def __init__(self, layer: nn.Linear, who: str, reduce_range: bool = False) -> None:
        super().__init__()
        w, s = _int8_weight(layer.weight, who)
        self.register_buffer("weight_int8", w)
        self.register_buffer("weight_scale", s)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(),
                                                                 requires_grad=False)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.reduce_range = reduce_range
        self._packed: Any = None

    def packed(self) -> Any:
        if self._packed is None:
            self._packed = _pack(self.weight_int8, self.weight_scale,
                                 None if self.bias is None else self.bias.detach())
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        y = torch.ops.quantized.linear_dynamic(x.float().contiguous(), self.packed(),
                                               self.reduce_range)
        return y if dt == torch.float32 else y.to(dt)

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["_packed"] = None  # repacked lazily after copy / unpickling
        return d


class DynRNN(nn.Module):
    """A unidirectional LSTM/GRU with INT8 input and recurrent projections (gates in float).

    Same call signature and outputs as the ``nn.LSTM`` / ``nn.GRU`` it replaces."""

    def __init__(self, rnn: nn.LSTM | nn.GRU, who: str, reduce_range: bool = False) -> None:
        super().__init__()
        self.mode = "lstm" if isinstance(rnn, nn.LSTM) else "gru"
        self.batch_first, self.hidden_size = rnn.batch_first, rnn.hidden_size
        self.num_layers = rnn.num_layers
        self.ih, self.hh = nn.ModuleList(), nn.ModuleList()
        for layer in range(rnn.num_layers):
            for part, dst in (("ih", self.ih), ("hh", self.hh)):
                lin = nn.Linear(1, 1, bias=rnn.bias)
                lin.weight = nn.Parameter(getattr(rnn, f"weight_{part}_l{layer}").detach())
                if rnn.bias:
                    lin.bias = nn.Parameter(getattr(rnn, f"bias_{part}_l{layer}").detach())
                lin.in_features, lin.out_features = lin.weight.shape[1], lin.weight.shape[0]
                dst.append(DynLinear(lin, f"{who}.{part}_l{layer}", reduce_range))

    def forward(self, x: torch.Tensor, hx: Any = None) -> tuple[torch.Tensor, Any]:
        if not self.batch_first:
            x = x.transpose(0, 1)
        b, t, _ = x.shape
        hs, cs = [], []
        for layer in range(self.num_layers):
            gi = self.ih[layer](x.reshape(b * t, -1)).reshape(b, t, -1)
            h, c = self._init(hx, layer, b, x)
            outs = []
            for step in range(t):
                gh = self.hh[layer](h)
                if self.mode == "lstm":
                    i, f, g, o = (gi[:, step] + gh).chunk(4, 1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                else:
                    ir, iz, inn = gi[:, step].chunk(3, 1)
                    hr, hz, hn = gh.chunk(3, 1)
                    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                    h = (1 - z) * torch.tanh(inn + r * hn) + z * h
                outs.append(h)
            x = torch.stack(outs, 1)
            hs.append(h)
            cs.append(c)
        out = x if self.batch_first else x.transpose(0, 1)
        h_n = torch.stack(hs)
        return (out, (h_n, torch.stack(cs))) if self.mode == "lstm" else (out, h_n)

    def _init(self, hx: Any, layer: int, b: int, x: torch.Tensor) -> tuple[Any, Any]:
        zeros = x.new_zeros(b, self.hidden_size)
        if hx is None:
            return zeros, zeros
        if self.mode == "lstm":
            return hx[0][layer], hx[1][layer]
        return hx[layer], zeros
