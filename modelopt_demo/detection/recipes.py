"""Factories for ``modelopt run`` recipes (``docs/recipes/detect-*.toml``).

The detection recipes name a *model factory that trains*: :func:`trained_detector` builds the
detector and trains it with the detection loss (BN-gamma L1 included, for slimming) before the
recipe's steps run. The data factory gives the Session calibration canvases, the training split
(canvases and padded boxes) with the detection loss as ``task_loss`` (what the recipe's
slimming and distillation steps train on), and the mAP@0.5 eval_fn.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from .dataset import DetectionData, load_detection_data
from .metrics import detection_eval_fn
from .models import MobileDetector, YoloDetector
from .train import detection_loss, train_detector

__all__ = ["detection_data", "recipe_data", "trained_detector"]


@lru_cache(maxsize=2)
def recipe_data(size: int = 64, n_train: int = 2000, n_test: int = 500) -> DetectionData:
    """The digits-detection splits used by the recipes (cached per process)."""
    return load_detection_data(n_train=n_train, n_test=n_test, size=size)


def detection_data(size: int = 64) -> dict[str, Any]:
    """Calibration data (training canvases, batch 1), training data (canvases, padded boxes),
    the detection loss as ``task_loss`` and eval_fn (test mAP@0.5 in %) for a ``size`` x
    ``size`` detector."""
    d = recipe_data(size)
    return {"calibration_data": list(d.train.inputs(1)[:64]),
            "train_data": d.train.batches(32), "task_loss": detection_loss,
            "eval_fn": detection_eval_fn(d.test)}


def trained_detector(variant: str = "yolo", width: int = 8, epochs: int = 30,
                     sparsity: float = 1e-4, size: int = 64, seed: int = 0) -> Any:
    """A ``"yolo"`` (:class:`YoloDetector`) or ``"mobile"`` (:class:`MobileDetector`, SE
    attention) detector trained on the digits-detection train split."""
    import modelopt_core as mo

    if variant not in ("yolo", "mobile"):
        raise mo.ConfigError(f"trained_detector: variant {variant!r} is not 'yolo' or "
                             "'mobile'; set model_kwargs = {variant = \"mobile\"}.")
    cls = YoloDetector if variant == "yolo" else MobileDetector
    model = cls(width=width)
    train_detector(model, recipe_data(size), epochs=epochs, sparsity=sparsity, seed=seed)
    return model
