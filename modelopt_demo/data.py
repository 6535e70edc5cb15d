"""scikit-learn's digits (shipped with the package: no download) as torch batches, and the
accuracy eval_fn used by the demo, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["DigitsData", "load_digits_data", "accuracy_fn", "predict_accuracy"]


class DigitsData:
    """Train/test split of digits as lists of (x, y) batches; x is (B, 1, 8, 8) float32."""

    def __init__(self, train: list[tuple[torch.Tensor, torch.Tensor]],
                 test: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.train = train
        self.test = test

    @property
    def calibration(self) -> list[torch.Tensor]:
        """Inputs only, from the training split (never the test split)."""
        return [x for x, _ in self.train]

    @property
    def example(self) -> torch.Tensor:
        return self.test[0][0][:1]


def load_digits_data(batch_size: int = 64, test_fraction: float = 0.25,
                     seed: int = 0) -> DigitsData:
    """Load digits, standardise with train statistics, split deterministically."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    itr, ite = train_test_split(range(len(y)), test_size=test_fraction, random_state=seed,
                                stratify=d.target)
    xtr, ytr, xte, yte = x[itr], y[itr], x[ite], y[ite]
    mean, std = xtr.mean(), xtr.std()
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ytr), generator=g)
    xtr, ytr = xtr[perm], ytr[perm]

    def batches(a: torch.Tensor, b: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(a[i:i + batch_size].contiguous(), b[i:i + batch_size])
                for i in range(0, len(b), batch_size)]

    return DigitsData(batches(xtr, ytr), batches(xte, yte))


def predict_accuracy(fn: Callable[[torch.Tensor], Any],
                     batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy in percent of ``fn`` (a runner or module) over (x, y) batches."""
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            out = fn(x)
            out = out[0] if isinstance(out, (tuple, list)) else out
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
    return 100.0 * correct / total


def accuracy_fn(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[Any], float]:
    """An ``eval_fn(runner) -> accuracy %`` over the given batches."""
    return lambda runner: predict_accuracy(runner, batches)


def image_batches(n_batches: int, batch_size: int = 8, size: int = 224, seed: int = 0,
                  channels: int = 3) -> list[torch.Tensor]:
    """ImageNet-shaped batches built from real digit images (no download): each digit is
    upsampled to ``size`` x ``size``, colour-tinted and noised, then standardised."""
    from sklearn.datasets import load_digits

    g = torch.Generator().manual_seed(seed)
    imgs = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0
    out = []
    for _ in range(n_batches):
        idx = torch.randint(0, len(imgs), (batch_size,), generator=g)
        x = torch.nn.functional.interpolate(imgs[idx], size=(size, size), mode="bilinear",
                                            align_corners=False)
        tint = torch.rand(batch_size, channels, 1, 1, generator=g) * 0.8 + 0.2
        bg = torch.rand(batch_size, channels, 1, 1, generator=g) * 0.3
        x = x * tint + bg + 0.05 * torch.randn(batch_size, channels, size, size, generator=g)
        out.append(((x - 0.45) / 0.25).contiguous())
    return out
