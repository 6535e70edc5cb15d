"""The detector optimization pipeline through the Session: slimming (BN-gamma L1 + channel
removal) -> feature distillation from the original with adapters -> INT8 -> OpenVINO.

The Session carries the detection loss as its ``task_loss``: ``prune.slimming``'s fine-tuning
and ``distill.features``' task term train on it (boxes, objectness, classes), next to the
feature-matching losses, so the whole recovery happens inside the Session's lineage. The BN-gamma
L1 sparsity training happens when the detector is trained (:func:`~.train.train_detector` with
``sparsity``); slimming then only removes channels and fine-tunes one epoch.
"""

from __future__ import annotations

from typing import Any

import modelopt_core as mo

from ..demo import run_steps as run_pipeline  # one step runner for both demos
from .dataset import DetectionData
from .metrics import detection_eval_fn

__all__ = [
    "ORT_PIPELINE",
    "PIPELINE",
    "detection_session",
    "run_pipeline",
]

#: (session method, component or target, config): slim -> KD -> OpenVINO -> INT8
PIPELINE: list[tuple[str, str, dict[str, Any]]] = [
    ("apply", "prune.slimming", {"ratio": 0.5, "epochs": 1, "sparsity": 0.0, "lr": 1e-4}),
    # feature KD from the original (adapters) + the detection loss (the session's task_loss)
    # (the automatic pairs include the raw heads: at weight 1 the feature term held the
    # student at 89.9 mAP@0.5 vs the teacher's 93.8 in bench_detect; 0.1 leaves the detection
    # loss in charge and KD as the regularizer)
    ("apply", "distill.features", {"epochs": 20, "lr": 5e-3, "optimizer": "adamw",
                                   "task_weight": 1.0, "feature_weight": 0.1}),
    ("export", "openvino", {}),
    ("apply", "openvino.quantize", {"preset": "mixed", "calibration_batches": 64}),
]

#: the same up to the export, then INT8 with ONNX Runtime's tooling
ORT_PIPELINE: list[tuple[str, str, dict[str, Any]]] = PIPELINE[:2] + [
    ("export", "onnx", {}),
    ("apply", "onnx.quantize_static", {"per_channel": True, "calibrate_method": "minmax"}),
]


def detection_session(model: Any, data: DetectionData, batch_size: int = 32,
                      calib_batches: int = 64, progress: bool = False) -> mo.Session:
    """A Session over a trained detector: the test split's mAP@0.5 (%) as eval_fn, the
    training split (canvases, padded boxes) as training data with the detection loss as
    ``task_loss``, and ``calib_batches`` training canvases (batch 1) as calibration data."""
    from .train import detection_loss

    calib = data.train.inputs(1)[:calib_batches]
    return mo.Session(model.eval(), (data.example,), calibration_data=calib,
                      train_data=data.train.batches(batch_size), task_loss=detection_loss,
                      eval_fn=detection_eval_fn(data.test), progress=progress)
