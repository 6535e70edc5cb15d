"""The contract checks' own tiny models and data (nothing to download, nothing to bring).

Two models on 8x8 one-channel images with 10 classes: a small CNN (Conv/BatchNorm/ReLU blocks,
max-pooling, a Linear head; briefly trained) and a plain ``nn.Sequential`` MLP
(Flatten/Linear/ReLU/Linear) for components that take only such stacks. The data are
synthetic: ten fixed prototypes plus noise, so the labels are learnable and an ``eval_fn``
means something. Everything is built on first use and cached per process and plugin manager.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

__all__ = [
    "World",
    "accuracy_fn",
    "digit_batches",
    "forget",
    "tiny_cnn",
    "tiny_mlp",
    "world",
]

#: batch size of the synthetic batches; the example input is one row
BATCH = 64


def tiny_cnn(width: int = 8, classes: int = 10) -> Any:
    """Conv-BN-ReLU x2, pool, Conv-BN-ReLU x2, pool, Flatten, Linear, ReLU, Linear (8x8 in)."""
    from torch import nn

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))

    class TinyCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(block(1, width), block(width, width), nn.MaxPool2d(2),
                                          block(width, 2 * width),
                                          block(2 * width, 2 * width), nn.MaxPool2d(2))
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 4, 64),
                                            nn.ReLU(inplace=True), nn.Linear(64, classes))

        def forward(self, x: Any) -> Any:
            return self.classifier(self.features(x))

    return TinyCNN()


def tiny_mlp(classes: int = 10) -> Any:
    """``nn.Sequential(Flatten, Linear(64, 32), ReLU, Linear(32, classes))`` (8x8 in)."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, classes))


def digit_batches(n: int, seed: int = 0) -> list[tuple[Any, Any]]:
    """``n`` synthetic (x, y) batches: x (64, 1, 8, 8) float32 (a class prototype plus noise,
    standardised), y (64,) int64 labels."""
    import torch

    protos = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, 10, (BATCH,), generator=g)
        x = protos[y] + 0.7 * torch.randn(BATCH, 1, 8, 8, generator=g)
        out.append(((x / x.std()).contiguous(), y))
    return out


def accuracy_fn(batches: list[tuple[Any, Any]]) -> Callable[[Any], float]:
    """An ``eval_fn(runner) -> top-1 accuracy in %`` over ``batches``."""

    def accuracy(runner: Any) -> float:
        import torch

        hits = total = 0
        with torch.no_grad():
            for x, y in batches:
                out = runner(x)
                out = out[0] if isinstance(out, tuple | list) else out
                hits += int((out.argmax(1) == y).sum())
                total += len(y)
        return 100.0 * hits / total

    return accuracy


class World:
    """One model with its Session inputs: ``model`` (eval), ``example`` (one row), ``kw``
    (calibration_data, train_data, eval_fn for ``mo.Session``), ``x`` (16 test rows), the
    model's state hash, and artifacts made from it, per plugin manager and format."""

    def __init__(self, label: str, model: Any, train: list, test: list) -> None:
        self.label, self.model = label, model
        self.example = test[0][0][:1]
        self.x = test[0][0][:16]
        self.kw = {"calibration_data": [x for x, _ in train[:2]], "train_data": train[:3],
                       "eval_fn": accuracy_fn(test[:1]), "progress": False}
        self.hash = state_hash(model)
        self._made: weakref.WeakKeyDictionary[Any, dict[str, Any]] = \
            weakref.WeakKeyDictionary()

    def session(self, pm: Any) -> Any:
        import modelopt_core as mo

        return mo.Session(self.model, (self.example,), plugins=pm, **self.kw)

    def made(self, pm: Any) -> dict[str, Any]:
        """{format: artifact} already exported from this model with ``pm`` (reused)."""
        return self._made.setdefault(pm, {})

    def intact(self) -> bool:
        return state_hash(self.model) == self.hash


def state_hash(model: Any) -> str:
    """SHA-256 over a module's state_dict (names, dtypes, shapes, raw bytes)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            if t.is_quantized:
                t = t.int_repr()
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(v).encode())
    return h.hexdigest()


_worlds: dict[str, World] = {}


def world(label: str = "cnn") -> World:
    """The cached world of ``label`` ("cnn": trained 1 epoch on 8 batches; "mlp")."""
    if label not in _worlds:
        import torch

        import modelopt_core as mo
        from modelopt_core.training import TrainConfig, fit

        train, test = digit_batches(8, seed=0), digit_batches(1, seed=1)
        torch.manual_seed(0)
        model = tiny_cnn() if label == "cnn" else tiny_mlp()
        fit(model, train, config=TrainConfig(epochs=1, lr=3e-3),
            ctx=mo.Context(show_progress=False))
        _worlds[label] = World(label, model.eval(), train, test)
    return _worlds[label]


def forget() -> None:
    """Drop the cached worlds (after a check found one changed)."""
    _worlds.clear()
