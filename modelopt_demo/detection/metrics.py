"""Detection metrics: COCO mAP@0.5 and mAP@0.5:0.95 with pycocotools (ground truth and
detections built as COCO dicts in memory), and :func:`detection_eval_fn`, a Session
``eval_fn`` that runs any backend's runner, decodes its raw head outputs and scores them."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .decode import Detections, decode
from .models import STRIDES

__all__ = ["coco_map", "detection_eval_fn", "evaluate", "predict"]


def _coco() -> Any:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:  # the 'detect' extra
        import modelopt_core as mo

        raise mo.BackendUnavailableError(
            f"detection metrics need pycocotools ({e}); pip install -e \".[detect]\"") from e
    return COCO, COCOeval


def coco_map(detections: Sequence[Detections], boxes: Sequence[torch.Tensor],
             labels: Sequence[torch.Tensor], num_classes: int = 10) -> dict[str, float]:
    """COCO ``{"map50", "map"}`` (0..1) of per-image ``detections`` against ground truth
    ``boxes`` (k, 4) x1 y1 x2 y2 and ``labels`` (k,). No detections at all scores 0."""
    COCO, COCOeval = _coco()
    images, anns, dets = [], [], []
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        images.append({"id": i})
        for box, c in zip(b.tolist(), lab.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c),
                         "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
    for i, d in enumerate(detections):
        for box, s, c in zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist()):
            dets.append({"image_id": i, "category_id": int(c), "score": float(s),
                         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    if not anns or not dets:
        return {"map50": 0.0, "map": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c} for c in range(num_classes)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map50": max(0.0, float(ev.stats[1])), "map": max(0.0, float(ev.stats[0]))}


def predict(fn: Callable[..., Any], inputs: Sequence[torch.Tensor],
            strides: Sequence[int] = STRIDES, **decode_options: Any) -> list[Detections]:
    """Run ``fn`` (a runner or module returning the three raw heads) over input batches and
    decode every image."""
    out: list[Detections] = []
    with torch.no_grad():
        for x in inputs:
            heads = fn(x)
            out += decode([torch.as_tensor(h) for h in heads], strides,
                          image_size=x.shape[-1], **decode_options)
    return out


def evaluate(fn: Callable[..., Any], split: Any, batch_size: int = 50,
             strides: Sequence[int] = STRIDES) -> dict[str, float]:
    """``{"map50", "map"}`` of ``fn`` on a :class:`~.dataset.DetectionSplit`."""
    return coco_map(predict(fn, split.inputs(batch_size), strides), split.boxes, split.labels)


def detection_eval_fn(split: Any, batch_size: int = 1, strides: Sequence[int] = STRIDES
                      ) -> Callable[[Any], float]:
    """A Session ``eval_fn(runner) -> mAP@0.5`` in percent (0..100, like the project's
    accuracy), on a :class:`~.dataset.DetectionSplit`. ``batch_size`` defaults to 1 because
    exported detectors often have a fixed batch of 1."""
    return lambda runner: 100.0 * evaluate(runner, split, batch_size, strides)["map50"]
