"""Real models for the model-zoo tests, built offline (nothing downloads at run time).

``ultralytics``: installed with ``--no-deps`` (CI: ``.ci/run``). It reads torchvision's
version from its package metadata when imported, and PyPI's torchvision does not import beside
the CPU torch these machines use, so torchvision is not installed: while ultralytics is
imported (only then), a missing torchvision reads as version "0.0.0". Nothing of torchvision
runs in what the zoo exercises (building from a yaml, forward, export).
"""

from __future__ import annotations

import importlib.metadata as md
import os
from typing import Any

import pytest


def import_ultralytics() -> Any:
    """``ultralytics`` (skips the test when it is not installed)."""
    import importlib.util

    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics is not installed (pip install --no-deps ultralytics; see "
                    ".ci/run)")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_OFFLINE", "True")
    real = md.version

    def version(name: str) -> str:
        try:
            return real(name)
        except md.PackageNotFoundError:
            if name == "torchvision":
                return "0.0.0"
            raise

    md.version = version
    try:
        import ultralytics
    finally:
        md.version = real
    return ultralytics


def yolo(cfg: str = "yolov8n.yaml", seed: int = 0) -> Any:
    """An Ultralytics detection model (``DetectionModel``) built from its yaml, eval mode."""
    import torch

    ul = import_ultralytics()
    torch.manual_seed(seed)
    return ul.YOLO(cfg).model.eval()
