"""Properties of the detection post-processing: NMS matches a brute-force greedy reference,
class-aware NMS never suppresses across classes, IoU is symmetric and bounded."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modelopt_demo.detection import batched_nms, box_iou, nms


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference(boxes: list[list[float]], scores: list[float], classes: list[int], thr: float
               ) -> list[int]:
    """Textbook greedy NMS, one box at a time, within each class."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(classes[i] != classes[k] or _iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


@st.composite
def detections(draw):
    n = draw(st.integers(0, 25))
    boxes = []
    for _ in range(n):
        x, y = draw(st.integers(0, 40)), draw(st.integers(0, 40))
        w, h = draw(st.integers(1, 20)), draw(st.integers(1, 20))
        boxes.append([float(x), float(y), float(x + w), float(y + h)])
    scores = [draw(st.integers(0, 50)) / 50 for _ in range(n)]  # ties happen on purpose
    classes = [draw(st.integers(0, 2)) for _ in range(n)]
    return boxes, scores, classes


@settings(max_examples=150, deadline=None)
@given(detections(), st.sampled_from([0.0, 0.3, 0.5, 0.7]))
def test_batched_nms_matches_brute_force(d, thr):
    boxes, scores, classes = d
    b = torch.tensor(boxes).reshape(-1, 4)
    keep = batched_nms(b, torch.tensor(scores), torch.tensor(classes, dtype=torch.long), thr)
    assert keep.tolist() == _reference(boxes, scores, classes, thr)


@settings(max_examples=100, deadline=None)
@given(detections(), st.sampled_from([0.3, 0.5]))
def test_plain_nms_is_class_agnostic_reference(d, thr):
    boxes, scores, _ = d
    b = torch.tensor(boxes).reshape(-1, 4)
    keep = nms(b, torch.tensor(scores), thr)
    assert keep.tolist() == _reference(boxes, scores, [0] * len(scores), thr)
    kept = b[keep]
    if len(kept) > 1:  # no two survivors overlap more than the threshold
        iou = box_iou(kept, kept).fill_diagonal_(0)
        assert float(iou.max()) <= thr + 1e-6


@settings(max_examples=100, deadline=None)
@given(detections())
def test_iou_symmetric_and_bounded(d):
    boxes, _, _ = d
    b = torch.tensor(boxes).reshape(-1, 4)
    iou = box_iou(b, b)
    assert torch.allclose(iou, iou.T) and (iou >= 0).all() and (iou <= 1 + 1e-6).all()
    if len(b):
        assert torch.allclose(iou.diagonal(), torch.ones(len(b)))
