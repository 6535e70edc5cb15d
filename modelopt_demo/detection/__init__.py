"""Digits detection: a real, offline detection task for the YOLO-style detectors.

``dataset`` (digits on canvases, boxes + classes), ``models`` (:class:`YoloDetector`,
:class:`MobileDetector` with SE attention), ``decode`` / ``nms`` (post-processing in torch),
``metrics`` (COCO mAP via pycocotools, :func:`detection_eval_fn`), ``train`` (loss and
training loop), ``pipeline`` (slim -> KD -> INT8 -> OpenVINO through the Session),
``recipes`` (factories for ``modelopt run``) and ``demo`` (``modelopt demo --task
detection``).
"""

from __future__ import annotations

from .dataset import DetectionData, DetectionSplit, collate_targets, load_detection_data
from .decode import Detections, decode
from .demo import run_detection_demo
from .metrics import coco_map, detection_eval_fn, evaluate
from .models import STRIDES, MobileDetector, SqueezeExcite, YoloDetector
from .nms import batched_nms, box_iou, nms
from .train import detection_loss, train_detector

__all__ = [
    "STRIDES",
    "DetectionData",
    "DetectionSplit",
    "Detections",
    "MobileDetector",
    "SqueezeExcite",
    "YoloDetector",
    "batched_nms",
    "box_iou",
    "coco_map",
    "collate_targets",
    "decode",
    "detection_eval_fn",
    "detection_loss",
    "evaluate",
    "load_detection_data",
    "nms",
    "run_detection_demo",
    "train_detector",
]

