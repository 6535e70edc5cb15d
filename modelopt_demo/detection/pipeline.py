"""The detector optimization pipeline through the Session: slimming (BN-gamma L1 + channel
removal) -> feature distillation from the original with adapters -> INT8 -> OpenVINO.

The project's pruning and distillation steps train with their own losses: ``prune.slimming``
adds its L1 term to a cross-entropy on output 0, and ``distill.features`` adds cross-entropy
only when the targets are class labels. A detector has no class-label target, so
:func:`session_train_data` pairs every training canvas with an all-zero soft target shaped
like head 0: cross-entropy against an all-zero target is exactly 0, which leaves slimming's
sparsity term and the distillation losses as the whole training signal. The task-aware
sparsity training (detection loss + BN-gamma L1) happens when the detector is trained
(:func:`~.train.train_detector` with ``sparsity``).
"""

from __future__ import annotations

from typing import Any

import torch

import modelopt_core as mo

from .dataset import DetectionData, DetectionSplit
from .metrics import detection_eval_fn

__all__ = [
    "ORT_PIPELINE",
    "PIPELINE",
    "detection_session",
    "run_pipeline",
    "session_train_data",
]

#: (session method, component or target, config): slim -> KD -> OpenVINO -> INT8
PIPELINE: list[tuple[str, str, dict[str, Any]]] = [
    ("apply", "prune.slimming", {"ratio": 0.5, "epochs": 1, "sparsity": 0.0, "lr": 1e-4}),
    ("apply", "distill.features", {"epochs": 8, "lr": 2e-3, "optimizer": "adamw"}),
    ("export", "openvino", {}),
    ("apply", "openvino.quantize", {"preset": "mixed", "subset_size": 64}),
]

#: the same up to the export, then INT8 with ONNX Runtime's tooling
ORT_PIPELINE: list[tuple[str, str, dict[str, Any]]] = PIPELINE[:2] + [
    ("export", "onnx", {}),
    ("apply", "onnx.quantize_static", {"per_channel": True, "calibrate_method": "minmax"}),
]


def session_train_data(split: DetectionSplit, batch_size: int, head0_shape: tuple[int, ...]
                       ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(canvases, zeros)`` batches for the Session's training steps (see the module
    docstring); ``head0_shape`` is head 0's ``(C, H, W)``."""
    return [(x, torch.zeros(len(x), *head0_shape)) for x in split.inputs(batch_size)]


def detection_session(model: Any, data: DetectionData, batch_size: int = 32,
                      calib_batches: int = 64, progress: bool = False) -> mo.Session:
    """A Session over a trained detector: the test split's mAP@0.5 (%) as eval_fn,
    training canvases as training data and (``calib_batches`` of them, batch 1) as
    calibration data."""
    example = data.example
    with torch.no_grad():
        head0 = tuple(model.eval()(example)[0].shape[1:])
    calib = data.train.inputs(1)[:calib_batches]
    return mo.Session(model, (example,), calibration_data=calib,
                      train_data=session_train_data(data.train, batch_size, head0),
                      eval_fn=detection_eval_fn(data.test), progress=progress)


def run_pipeline(s: mo.Session, pipeline: list[tuple[str, str, dict[str, Any]]],
                 say: Any = print) -> None:
    """Run ``pipeline`` steps on ``s``; optimizers that are not installed are skipped."""
    import time

    for method, name, cfg in pipeline:
        if method == "apply" and not any(i.name == name for i in s.pm.components("optimizer")):
            say(f"      - {name}: not installed, skipped")
            continue
        t = time.perf_counter()
        art = getattr(s, method)(name, **cfg)
        notes = "; ".join(art.lineage[-1].notes)
        say(f"      - {art.name} ({time.perf_counter() - t:.1f} s){': ' + notes if notes else ''}")
