"""Post-processing: hand-set head maps through postprocess, multi-label scores by the head's class activation,
NMS and the candidate cap against torchvision, and the batch equal to one image at a time."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from yolo_loss.decode import STRIDES, per_anchor_view
from yolo_loss.eval import postprocess as postprocessing
from yolo_loss.eval.postprocess import Detections, postprocess
from yolo_loss.head import HeadSpec

# A 64 px input: grids 8 x 8, 4 x 4, 2 x 2; three anchors per level; C = 3.
ANCHORS = [torch.tensor([[6.0, 8.0], [10.0, 14.0], [14.0, 10.0]]),
           torch.tensor([[16.0, 20.0], [12.0, 20.0], [20.0, 12.0]]),
           torch.tensor([[30.0, 30.0], [40.0, 50.0], [60.0, 40.0]])]
NUM_CLASSES = 3
HEAD = HeadSpec.from_anchors(ANCHORS, strides=STRIDES, num_classes=NUM_CLASSES)
OFF = -20.0  # a logit whose sigmoid (2e-9) is below any threshold used here


def blank_maps(batch: int = 1, img_size: int = 64) -> list[torch.Tensor]:
    return [torch.full((batch, 3 * (5 + NUM_CLASSES), img_size // s, img_size // s), OFF) for s in STRIDES]


def set_anchor(maps: list[torch.Tensor], *, level: int, anchor: int, row: int, col: int, values: list[float],
               image: int = 0) -> None:
    """Write ``tx, ty, tw, th, to, tc_0 .. tc_2`` of one anchor at cell (row j, column i)."""
    per_anchor_view(maps[level], 3)[image, anchor, :, row, col] = torch.tensor(values)


def run(maps: list[torch.Tensor], conf_thresh: float = 0.005, nms_iou: float = 0.45, max_det: int = 100,
        ) -> list[Detections]:
    return postprocess(maps, HEAD, conf_thresh=conf_thresh, nms_iou=nms_iou, max_det=max_det)


def test_postprocess_one_confident_anchor():
    """Stride 16, anchor 1 (12 x 20), row j = 1, column i = 2, tx = ty = 0, tw = ln 2, th = 0, objectness and
    class 2 at logit 20: cx = (2 + 0.5) * 16 = 40, cy = (1 + 0.5) * 16 = 24, w = 12 * 2 = 24, h = 20, so
    xyxy = (28, 14, 52, 34), label 2, score sig(20)^2. Every other anchor is off: one detection only."""
    maps = blank_maps()
    set_anchor(maps, level=1, anchor=1, row=1, col=2, values=[0, 0, math.log(2), 0, 20, OFF, OFF, 20])
    (det,) = run(maps)
    assert torch.allclose(det.boxes_xyxy, torch.tensor([[28.0, 14.0, 52.0, 34.0]]))
    assert det.labels.tolist() == [2] and det.labels.dtype == torch.int64
    assert det.scores.tolist() == pytest.approx([torch.sigmoid(torch.tensor(20.0)).item() ** 2])


def test_postprocess_multi_label_and_conf_thresh():
    """Objectness logit 0 (0.5) and class logits (0, 20, -20): scores 0.25, 0.5 and ~0. With conf_thresh 0.2 both
    class 1 (0.5) and class 0 (0.25) give a detection of the same box, by decreasing score (darknet's multi-label);
    with 0.3 only class 1; with 0.5 none (the threshold is strict: 0.5 * sig(20) < 0.5)."""
    maps = blank_maps()
    set_anchor(maps, level=0, anchor=0, row=2, col=5, values=[0, 0, 0, 0, 0, 0, 20, OFF])
    (det,) = run(maps, conf_thresh=0.2)
    assert det.labels.tolist() == [1, 0] and det.scores.tolist() == pytest.approx([0.5, 0.25])
    assert torch.equal(det.boxes_xyxy[0], det.boxes_xyxy[1])
    assert run(maps, conf_thresh=0.3)[0].labels.tolist() == [1]
    assert len(run(maps, conf_thresh=0.5)[0]) == 0


def overlapping_pair(second_class: int) -> list[torch.Tensor]:
    """Stride 8, anchor 0 (6 x 8) stretched to 40 x 40 at cells (3, 3) and (3, 4): boxes (8, 8, 48, 48) and
    (16, 8, 56, 48), IoU = 32 * 40 / (2 * 1600 - 1280) = 2/3 > 0.45. Objectness logits 3 and 2; the first is class 0."""
    maps = blank_maps()
    tw, th = math.log(40 / 6), math.log(40 / 8)
    first = [0, 0, tw, th, 3.0, 20, OFF, OFF]
    second = [0, 0, tw, th, 2.0, OFF, OFF, OFF]
    second[5 + second_class] = 20
    set_anchor(maps, level=0, anchor=0, row=3, col=3, values=first)
    set_anchor(maps, level=0, anchor=0, row=3, col=4, values=second)
    return maps


def test_postprocess_nms_suppresses_same_class_only():
    (same,) = run(overlapping_pair(second_class=0))
    assert same.labels.tolist() == [0]
    assert torch.allclose(same.boxes_xyxy, torch.tensor([[8.0, 8.0, 48.0, 48.0]]), atol=1e-4)
    assert same.scores.item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    (different,) = run(overlapping_pair(second_class=1))
    assert different.labels.tolist() == [0, 1]
    assert torch.allclose(different.boxes_xyxy, torch.tensor([[8.0, 8.0, 48.0, 48.0], [16.0, 8.0, 56.0, 48.0]]),
                          atol=1e-4)
    (loose,) = run(overlapping_pair(second_class=0), nms_iou=0.7)  # IoU 2/3 is not > 0.7: both kept
    assert len(loose) == 2


def test_postprocess_keeps_the_best_max_det():
    """Six disjoint 6 x 8 boxes (stride 8, anchor 0, cells two apart) with objectness logits 1 .. 6 and class 1:
    max_det 4 keeps the four with logits 6, 5, 4, 3, highest first."""
    maps = blank_maps()
    cells = [(0, 0), (0, 2), (0, 4), (2, 0), (2, 2), (2, 4)]
    for logit, (row, col) in enumerate(cells, start=1):
        set_anchor(maps, level=0, anchor=0, row=row, col=col, values=[0, 0, 0, 0, float(logit), OFF, 20, OFF])
    sig20 = torch.sigmoid(torch.tensor(20.0))
    expected = (torch.sigmoid(torch.tensor([6.0, 5.0, 4.0, 3.0])) * sig20).tolist()
    (det,) = run(maps, max_det=4)
    assert det.scores.tolist() == pytest.approx(expected)
    assert det.labels.tolist() == [1] * 4
    assert len(run(maps, max_det=100)[0]) == 6


def test_postprocess_nothing_above_threshold():
    dets = run(blank_maps(batch=2))
    assert [len(d) for d in dets] == [0, 0]
    assert dets[0].boxes_xyxy.shape == (0, 4) and dets[0].labels.dtype == torch.int64


def test_postprocess_batch_equals_one_image_at_a_time_with_one_nms(monkeypatch):
    """Three random 160 px images (thousands of candidates each, so torchvision takes the same NMS path for the
    batch and for one image): the batch gives each image exactly what it gets alone, with one grouped_nms call;
    NMS suppresses something and max_det = 50 cuts something, so the test can tell."""
    generator = torch.Generator().manual_seed(0)
    maps = [torch.randn(3, 3 * (5 + NUM_CLASSES), 160 // s, 160 // s, generator=generator) * 2 for s in STRIDES]
    calls = []
    real_nms = postprocessing.grouped_nms

    def counting_nms(boxes, scores, idxs, iou_threshold):
        calls.append(boxes.shape[0])
        return real_nms(boxes, scores, idxs, iou_threshold)

    monkeypatch.setattr(postprocessing, "grouped_nms", counting_nms)
    batched = run(maps, conf_thresh=0.05, max_det=50)
    assert len(calls) == 1 and calls[0] > 3 * 1000
    for image, det in enumerate(batched):
        (alone,) = run([m[image:image + 1] for m in maps], conf_thresh=0.05, max_det=50)
        assert torch.equal(det.boxes_xyxy, alone.boxes_xyxy)
        assert torch.equal(det.scores, alone.scores) and torch.equal(det.labels, alone.labels)
        assert len(det) == 50 and bool((det.scores[:-1] >= det.scores[1:]).all())
    unlimited = run(maps, conf_thresh=0.05, max_det=10**6)
    no_nms = run(maps, conf_thresh=0.05, nms_iou=1.0, max_det=10**6)
    assert all(50 < len(u) < len(n) for u, n in zip(unlimited, no_nms))


def test_postprocess_caps_candidates_per_image_before_nms(monkeypatch):
    """max_candidates: each image sends only its best-scoring candidates to NMS. Against a plain per-image
    reference: every (row, class) score above the threshold, the top 400 by score, torchvision's batched_nms by
    class, the best 30."""
    from torchvision.ops import batched_nms

    from yolo_loss.boxes import box_cxcywh_to_xyxy
    from yolo_loss.head import decode_predictions

    generator = torch.Generator().manual_seed(1)
    maps = [torch.randn(2, 3 * (5 + NUM_CLASSES), 160 // s, 160 // s, generator=generator) * 2 for s in STRIDES]
    sizes = []
    real_nms = postprocessing.grouped_nms
    monkeypatch.setattr(postprocessing, "grouped_nms", lambda b, s, i, t: sizes.append(len(b)) or real_nms(b, s, i, t))
    detections = postprocess(maps, HEAD, conf_thresh=0.05, nms_iou=0.45, max_det=30, max_candidates=400)
    assert sizes == [800]
    boxes_cxcywh, obj, cls = decode_predictions(maps, HEAD)
    for image, det in enumerate(detections):
        scores = obj[image][:, None] * cls[image]  # [N, C]
        rows, labels = (scores > 0.05).nonzero(as_tuple=True)
        candidate_scores = scores[rows, labels]
        assert candidate_scores.numel() > 2000  # the cap bites
        top = torch.sort(candidate_scores, descending=True, stable=True).indices[:400]
        xyxy = box_cxcywh_to_xyxy(boxes_cxcywh[image][rows[top]])
        keep = batched_nms(xyxy, candidate_scores[top], labels[top], 0.45)[:30]
        assert torch.equal(det.boxes_xyxy, xyxy[keep]) and torch.equal(det.labels, labels[top][keep])
        assert torch.equal(det.scores, candidate_scores[top][keep])


@pytest.mark.parametrize("count, groups", [(300, 7), (5000, 3), (20000, 400)])
def test_grouped_nms_equals_torchvision_batched_nms(count, groups):
    """The same kept boxes as torchvision.ops.batched_nms, below and above its one-call size, with few and many
    groups (overlapping boxes, so that NMS suppresses), by decreasing score; among equal scores (20000 random
    float32 scores have ties) the order may differ, torchvision's sort being unstable."""
    from torchvision.ops import batched_nms

    generator = torch.Generator().manual_seed(count)
    corner = torch.rand(count, 2, generator=generator) * 200
    boxes = torch.cat((corner, corner + 10 + torch.rand(count, 2, generator=generator) * 40), dim=1)
    scores = torch.rand(count, generator=generator)
    keys = torch.randint(0, groups, (count,), generator=generator)
    expected = batched_nms(boxes, scores, keys, 0.45)
    assert 0 < len(expected) < count
    kept = postprocessing.grouped_nms(boxes, scores, keys, 0.45)
    assert torch.equal(torch.sort(kept).values, torch.sort(expected).values)
    assert torch.equal(scores[kept], scores[expected])  # the same order up to equal scores


def test_scores_follow_the_heads_class_activation():
    """One confident anchor (objectness logit 20, sig = 1 - 2e-9) with class logits (2, 0, 0).
    Sigmoid head: scores sig(2) = 0.8808 and sig(0) = 0.5 for the other two, three detections of one box.
    Softmax head: e^2 / (e^2 + 2) = 0.7870 and 1 / (e^2 + 2) = 0.1065, summing to 1 with the objectness.
    Adding 3 to every class logit leaves the softmax scores as they are and raises the sigmoid ones to sig(5),
        sig(3)."""
    def detections(head: HeadSpec, shift: float) -> Detections:
        maps = blank_maps()
        set_anchor(maps, level=1, anchor=1, row=1, col=2, values=[0, 0, 0, 0, 20, 2 + shift, shift, shift])
        (det,) = postprocess(maps, head, conf_thresh=0.005, nms_iou=0.45, max_det=100)
        return det

    softmax_head = dataclasses.replace(HEAD, class_activation="softmax")
    e2 = math.exp(2.0)
    for shift in (0.0, 3.0):
        det = detections(softmax_head, shift)
        assert det.labels.tolist() == [0, 1, 2]
        torch.testing.assert_close(det.scores, torch.tensor([e2 / (e2 + 2), 1 / (e2 + 2), 1 / (e2 + 2)]))
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    plain, shifted = detections(HEAD, 0.0), detections(HEAD, 3.0)
    torch.testing.assert_close(plain.scores, torch.tensor([sig(2), sig(0), sig(0)]))
    torch.testing.assert_close(shifted.scores, torch.tensor([sig(5), sig(3), sig(3)]))
    assert torch.equal(plain.boxes_xyxy[0], shifted.boxes_xyxy[0])
