"""The digits data set (shipped with the package: no download) as torch batches, and the
accuracy eval_fn used by the demo, tests and benchmarks.

``digits.npz`` holds the 1797 8x8 images (``uint8``, 0..16) and labels of scikit-learn's
``load_digits()``, unchanged: a copy of the test set of the UCI "Optical Recognition of
Handwritten Digits" data set (E. Alpaydin, C. Kaynak, 1998; https://doi.org/10.24432/C50P49),
licensed CC BY 4.0. The train/test split reproduces scikit-learn's stratified
``train_test_split`` exactly, so results match those of earlier versions that used it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import torch

__all__ = ["DigitsData", "load_digits_data", "accuracy_fn", "predict_accuracy"]


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(images ``(1797, 8, 8)`` uint8 in 0..16, labels ``(1797,)`` uint8), read-only."""
    with resources.files(__package__).joinpath("digits.npz").open("rb") as f, \
            np.load(f) as z:
        images, labels = z["images"], z["labels"]
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _approximate_mode(counts: np.ndarray, n_draws: int, rng: np.random.RandomState
                      ) -> np.ndarray:
    """Per-class draws closest to ``counts / counts.sum() * n_draws``, ties broken by ``rng``
    (scikit-learn's ``_approximate_mode``, step for step: same draws from ``rng``)."""
    continuous = counts / counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need -= add_now
            if need == 0:
                break
    return floored.astype(int)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of a stratified shuffled split: the same indices, in the same
    order, as scikit-learn's ``train_test_split(range(n), test_size=test_fraction,
    random_state=seed, stratify=labels)`` (``StratifiedShuffleSplit`` on NumPy's legacy
    ``RandomState``, whose stream NumPy keeps fixed)."""
    n = len(labels)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be in the open range (0, 1).")
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    classes, y_idx, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if min(n_train, n_test) < len(classes):
        raise ValueError(f"test_fraction={test_fraction} leaves {n_train} train and {n_test} "
                         f"test samples; both need at least one per class ({len(classes)}).")
    class_indices = np.split(np.argsort(y_idx, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        perm = class_indices[i].take(rng.permutation(counts[i]), mode="clip")
        train.extend(perm[:n_i[i]])
        test.extend(perm[n_i[i]:n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


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
    images, labels = _digits()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(labels, dtype=torch.long)
    itr, ite = (torch.from_numpy(i.astype(np.int64))
                for i in stratified_split(labels, test_fraction, seed))
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
    g = torch.Generator().manual_seed(seed)
    imgs = torch.tensor(_digits()[0], dtype=torch.float32).unsqueeze(1) / 16.0
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
