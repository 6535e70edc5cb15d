"""Untie split convolutions before structured pruning (Torch-Pruning's ``C2f_v2`` idea).

Ultralytics' CSP blocks (``C2f`` in YOLOv8, ``C3k2`` in YOLO11, ``C2PSA``) run one 1x1 conv
``cv1`` and split its output in two halves (``chunk`` / ``split``). Torch-Pruning's dependency
graph cannot map channel indices through such a split (``IndexError: index 384 is out of
bounds`` on YOLOv8n), so these blocks are rewritten, on the pruner's private copy, into the
same function with two convolutions ``cv0`` / ``cv1`` (the halves of the old ``cv1``: weights,
bias and BatchNorm sliced) and a concat: every output is the same, and each half prunes on its
own. The blocks are found by duck typing (class or base class named ``C2f`` / ``C2PSA`` with
the ``cv1`` / ``cv2`` / ``m`` / ``c`` layout), so ultralytics is never imported here; the
block's other attributes (Ultralytics' ``f`` / ``i`` / ``type`` routing) are kept.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

__all__ = ["fixed_heads", "retie_splits", "untie_splits"]


def _split_conv(cv: Any, lo: int, hi: int) -> Any:
    """A copy of Ultralytics ``Conv`` ``cv`` (conv [+ bn] + act) producing channels lo:hi."""
    import torch

    part = copy.deepcopy(cv)
    conv = part.conv
    with torch.no_grad():
        conv.weight = torch.nn.Parameter(conv.weight[lo:hi].clone())
        if conv.bias is not None:
            conv.bias = torch.nn.Parameter(conv.bias[lo:hi].clone())
    conv.out_channels = hi - lo
    bn = getattr(part, "bn", None)
    if bn is not None:
        with torch.no_grad():
            for name in ("weight", "bias"):
                p = getattr(bn, name)
                if p is not None:
                    setattr(bn, name, torch.nn.Parameter(p[lo:hi].clone()))
            for name in ("running_mean", "running_var"):
                b = getattr(bn, name)
                if b is not None:
                    setattr(bn, name, b[lo:hi].clone())
        bn.num_features = hi - lo
    return part


def _is(block: Any, names: tuple[str, ...]) -> bool:
    return any(c.__name__ in names for c in type(block).__mro__)


def _layout_ok(block: Any) -> bool:
    import torch

    cv1 = getattr(block, "cv1", None)
    conv = getattr(cv1, "conv", None)
    c = getattr(block, "c", None)
    return (isinstance(conv, torch.nn.Conv2d) and isinstance(c, int)
            and conv.out_channels == 2 * c and hasattr(block, "cv2") and hasattr(block, "m")
            and conv.groups == 1)


@functools.cache
def _untied_classes() -> dict[str, type]:
    """The untied block classes by kind (made once, on first use: torch is imported then)."""
    import torch

    class UntiedC2f(torch.nn.Module):
        """C2f / C3k2 with its split conv untied: y = [cv0(x), cv1(x)] + m(...) -> cv2."""

        def forward(self, x: Any) -> Any:
            y = [self.cv0(x), self.cv1(x)]
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class UntiedC2PSA(torch.nn.Module):
        """C2PSA with its split conv untied: cv2(cat(cv0(x), m(cv1(x))))."""

        def forward(self, x: Any) -> Any:
            return self.cv2(torch.cat((self.cv0(x), self.m(self.cv1(x))), 1))

    class RetiedC2f(torch.nn.Module):
        """C2f / C3k2 after pruning: one conv ``cv1`` again, split into the pruned halves."""

        def forward(self, x: Any) -> Any:
            y = list(self.cv1(x).split(self.sizes, 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class RetiedC2PSA(torch.nn.Module):
        """C2PSA after pruning: one conv ``cv1`` again, split into the pruned halves."""

        def forward(self, x: Any) -> Any:
            a, b = self.cv1(x).split(self.sizes, 1)
            return self.cv2(torch.cat((a, self.m(b)), 1))

    return {"c2f": UntiedC2f, "c2psa": UntiedC2PSA, "retied-c2f": RetiedC2f,
            "retied-c2psa": RetiedC2PSA}


def _merge_convs(a: Any, b: Any) -> Any:
    """One Ultralytics ``Conv`` computing ``cat(a(x), b(x))`` (conv, bias, BatchNorm stacked)."""
    import torch

    part = copy.deepcopy(a)
    ca, cb = a.conv, b.conv
    with torch.no_grad():
        part.conv.weight = torch.nn.Parameter(torch.cat([ca.weight, cb.weight]))
        if ca.bias is not None:
            part.conv.bias = torch.nn.Parameter(torch.cat([ca.bias, cb.bias]))
    part.conv.out_channels = ca.out_channels + cb.out_channels
    bn, bb = getattr(part, "bn", None), getattr(b, "bn", None)
    if bn is not None and bb is not None:
        with torch.no_grad():
            for name in ("weight", "bias"):
                if getattr(bn, name) is not None:
                    setattr(bn, name, torch.nn.Parameter(torch.cat(
                        [getattr(a.bn, name), getattr(bb, name)])))
            for name in ("running_mean", "running_var"):
                if getattr(bn, name) is not None:
                    setattr(bn, name, torch.cat([getattr(a.bn, name), getattr(bb, name)]))
        bn.num_features = part.conv.out_channels
    return part


def retie_splits(model: Any) -> int:
    """After pruning: rewrite, in place, every untied block back into one conv whose output
    is split into the (pruned) halves: the same function with one conv fewer per block (at
    small input sizes, per-op cost dominates). Returns how many were rewritten."""
    import torch

    classes = _untied_classes()
    n = 0
    for name, block in list(model.named_modules()):
        kind = next((k for k in ("c2f", "c2psa") if type(block) is classes[k]), None)
        if not name or kind is None:
            continue
        a, b = block.cv0, block.cv1
        if not all(isinstance(getattr(c, "conv", None), torch.nn.Conv2d) for c in (a, b)) \
                or type(a.act) is not type(b.act) or a.conv.kernel_size != b.conv.kernel_size:
            continue
        new = classes[f"retied-{kind}"]()
        for k, v in vars(block).items():
            if not k.startswith("_") and k != "training":
                setattr(new, k, v)
        new.sizes = [a.conv.out_channels, b.conv.out_channels]
        new.cv1 = _merge_convs(a, b)
        new.cv2, new.m = block.cv2, block.m
        new.train(block.training)
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], new)
        n += 1
    return n


def _untied(block: Any, kind: str) -> Any:
    new = _untied_classes()[kind]()
    for k, v in vars(block).items():  # Ultralytics routing (f, i, type, np), c, flags
        if not k.startswith("_") and k != "training":
            setattr(new, k, v)
    c = block.c
    new.cv0 = _split_conv(block.cv1, 0, c)
    new.cv1 = _split_conv(block.cv1, c, 2 * c)
    new.cv2 = block.cv2
    new.m = block.m
    new.train(block.training)
    return new


def untie_splits(model: Any) -> int:
    """Rewrite, in place, every C2f / C3k2 / C2PSA-shaped block of ``model`` (a private copy)
    into its untied form; returns how many were rewritten."""
    n = 0
    for name, block in list(model.named_modules()):
        if not name:
            continue
        kind = ("c2f" if _is(block, ("C2f",)) else "c2psa" if _is(block, ("C2PSA",))
                else None)
        if kind is None or not _layout_ok(block):
            continue
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], _untied(block, kind))
        n += 1
    return n


#: Ultralytics attention blocks (YOLO11's C2PSA, YOLO12's area attention): their heads are
#: views of one qkv conv, which Torch-Pruning's index mapping cannot follow (on YOLO11n it
#: grew past 9 GB); kept whole like the detection head
ATTENTION = ("Attention", "AAttn", "PSABlock", "ABlock")


def fixed_heads(model: Any) -> list[str]:
    """Qualified names of every layer with weights inside Ultralytics-style detection heads (a
    class or base class named ``Detect``, as Segment / Pose / OBB are, with ``reg_max`` and
    ``nc``): the head splits its concatenated outputs into box-distribution and class channels
    whose counts its decoding fixes, so it is kept whole, as in Torch-Pruning's YOLOv8
    example; and inside the attention blocks named in :data:`ATTENTION`."""
    names: list[str] = []
    for name, block in model.named_modules():
        head = _is(block, ("Detect",)) and hasattr(block, "reg_max") and hasattr(block, "nc")
        if name and (head or _is(block, ATTENTION)):
            names += [f"{name}.{sub}" for sub, m in block.named_modules()
                      if sub and next(m.parameters(recurse=False), None) is not None]
    return list(dict.fromkeys(names))
