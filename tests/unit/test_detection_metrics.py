"""Digits detection: data set invariants, decoding, and COCO mAP (pycocotools) on known cases."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pycocotools")

from modelopt_demo.detection import (
    Detections,
    YoloDetector,
    coco_map,
    collate_targets,
    decode,
    detection_loss,
    load_detection_data,
)
from modelopt_demo.detection.dataset import digit_pools


@pytest.fixture(scope="module")
def data():
    return load_detection_data(n_train=40, n_val=10, n_test=30, size=48)


def test_dataset_is_deterministic_and_boxes_lie_inside(data):
    again = load_detection_data(n_train=40, n_val=10, n_test=30, size=48)
    assert torch.equal(data.train.images, again.train.images)
    assert all(torch.equal(a, b) for a, b in zip(data.test.boxes, again.test.boxes))
    other = load_detection_data(n_train=40, n_val=10, n_test=30, size=48, seed=1)
    assert not torch.equal(data.train.images, other.train.images)
    for split in (data.train, data.val, data.test):
        assert split.images.shape[1:] == (1, 48, 48)
        for b, lab in zip(split.boxes, split.labels):
            assert 1 <= len(lab) <= 4 and len(b) == len(lab)
            assert (b >= 0).all() and (b <= 48).all() and (b[:, 2:] > b[:, :2]).all()
            assert ((lab >= 0) & (lab <= 9)).all()


def test_test_digits_never_seen_in_training():
    tr, va, te = digit_pools(0)
    assert not set(tr) & set(te) and not set(tr) & set(va) and not set(va) & set(te)
    assert len(tr) + len(va) + len(te) == 1797


def test_collate_pads_with_minus_one():
    t = collate_targets([torch.tensor([[1.0, 2, 3, 4]])], [torch.tensor([7])])
    assert t.shape == (1, 4, 5) and t[0, 0].tolist() == [7, 1, 2, 3, 4]
    assert (t[0, 1:, 0] == -1).all()


def _perfect(split):
    return [Detections(b.clone(), torch.ones(len(b)), lab.clone())
            for b, lab in zip(split.boxes, split.labels)]


def test_map_perfect_is_one_and_shifted_is_lower(data):
    s = data.test
    assert coco_map(_perfect(s), s.boxes, s.labels) == {"map50": 1.0, "map": 1.0}
    shifted = [Detections(d.boxes + 1.5, d.scores, d.labels) for d in _perfect(s)]
    m = coco_map(shifted, s.boxes, s.labels)  # IoU 0.59..0.8: all match at 0.5, few at 0.95
    assert m["map50"] == pytest.approx(1.0) and m["map"] < 0.8
    far = [Detections(d.boxes + 8, d.scores, d.labels) for d in _perfect(s)]
    assert coco_map(far, s.boxes, s.labels)["map50"] < m["map50"]
    wrong = [Detections(d.boxes, d.scores, (d.labels + 1) % 10) for d in _perfect(s)]
    assert coco_map(wrong, s.boxes, s.labels)["map50"] == 0.0


def test_map_empty_detections_score_zero(data):
    s = data.test
    none = [Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
            for _ in s.labels]
    assert coco_map(none, s.boxes, s.labels) == {"map50": 0.0, "map": 0.0}


def test_map_low_scored_false_positives_rank_below(data):
    s = data.test
    dets = []
    for d in _perfect(s):  # an extra, lower-scored box far from any object
        extra = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        dets.append(Detections(torch.cat([d.boxes, extra]), torch.cat([d.scores,
                    torch.tensor([0.1])]), torch.cat([d.labels, d.labels[:1]])))
    assert coco_map(dets, s.boxes, s.labels)["map50"] == pytest.approx(1.0)


def test_detector_shapes_and_decode():
    m = YoloDetector(width=4).eval()
    heads = m(torch.randn(2, 1, 32, 32))
    assert [tuple(h.shape) for h in heads] == [(2, 15, 8, 8), (2, 15, 4, 4), (2, 15, 2, 2)]
    dets = decode(heads, score_threshold=0.0, max_det=7, image_size=32)
    assert len(dets) == 2 and all(len(d.scores) <= 7 for d in dets)
    assert all((d.boxes >= 0).all() and (d.boxes <= 32).all() for d in dets)
    assert all((d.scores[:-1] >= d.scores[1:]).all() for d in dets)


def test_loss_is_finite_and_decreases_on_one_batch(data):
    torch.manual_seed(0)
    m = YoloDetector(width=4)
    x, t = data.train.batches(8)[0]
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    losses = []
    for _ in range(6):
        loss = detection_loss(m(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
