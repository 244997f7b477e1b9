"""The metrics: hand-worked VOC APs, the VOC matching rules (duplicates, difficult boxes, the strict 0.5), parity
with pycocotools and with a plain-loop VOC devkit, and the evaluator's public views of what it holds."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from yolo_loss.eval.metrics import (Evaluator, voc07_ap_11_point, voc_ap_area, voc_match, voc_pr_curve,
                                  write_results_json)
from yolo_loss.eval.postprocess import Detections

CATEGORIES = {3: "circle", 7: "square", 11: "triangle"}  # non-contiguous ids: label i is CATEGORY_IDS[i]
CATEGORY_IDS = [3, 7, 11]


# ----------------------------------------------------------------------------------------------- helpers

def make_coco_gt(boxes_per_image: dict[int, list[tuple[int, list[float], int]]], width: int = 160,
                 height: int = 160) -> COCO:
    """An in-memory COCO ground truth: ``{image_id: [(category_id, [x1, y1, x2, y2], iscrowd), ...]}``."""
    images, annotations = [], []
    for image_id, boxes in boxes_per_image.items():
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height})
        for category_id, (x1, y1, x2, y2), iscrowd in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": iscrowd})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": i, "name": n} for i, n in CATEGORIES.items()]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def detections(rows: list[tuple[list[float], float, int]]) -> Detections:
    """``[([x1, y1, x2, y2], score, label), ...]`` -> :class:`Detections`."""
    return Detections(torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4),
                      torch.tensor([r[1] for r in rows], dtype=torch.float32),
                      torch.tensor([r[2] for r in rows], dtype=torch.int64))


def evaluate(coco_gt: COCO, dets_per_image: dict[int, Detections]) -> tuple[dict[str, float], Evaluator]:
    evaluator = Evaluator(coco_gt, CATEGORY_IDS)
    evaluator.update(list(dets_per_image), list(dets_per_image.values()))
    return evaluator.compute(), evaluator


# --------------------------------------------------------------------------------------- metrics: by hand

def test_perfect_detections_give_ap_one():
    """The non-crowd ground truth as detections with score 1: every COCO and VOC AP is 1. The sizes cover the
    three COCO area ranges (small < 32^2 <= medium < 96^2 <= large), so APs, APm and APl are defined; the crowd
    box (undetected) must not count as a miss."""
    gt = {1: [(3, [5, 5, 15, 17], 0), (7, [30, 40, 70, 90], 0), (11, [20, 20, 140, 150], 0)],
          2: [(3, [10, 10, 60, 60], 0), (3, [70, 70, 80, 78], 0), (7, [0, 0, 159, 120], 1)],
          3: [(11, [100, 10, 150, 40], 0), (7, [2, 100, 22, 124], 0)]}
    dets = {image_id: detections([(box, 1.0, CATEGORY_IDS.index(cat)) for cat, box, crowd in boxes if not crowd])
            for image_id, boxes in gt.items()}
    metrics, evaluator = evaluate(make_coco_gt(gt), dets)
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "VOC07_AP50", "VOC_AP50"}
    assert metrics == pytest.approx(dict.fromkeys(metrics, 1.0), abs=1e-12)
    assert evaluator.per_class_ap50() == {"circle": 1.0, "square": 1.0, "triangle": 1.0}
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in evaluator.summary_text


def test_voc_hand_worked_curve_and_aps():
    """One class, GT A = (10, 10, 50, 50) and B = (100, 100, 140, 150); detections by score:
    0.9 on A (TP), 0.8 at (60, 10, 90, 40) touching nothing (FP), 0.7 on B (TP).

        cumulative TP 1, 1, 2;  FP 0, 1, 1;  recall TP/2 = 0.5, 0.5, 1;  precision TP/(TP+FP) = 1, 0.5, 2/3.

    VOC07 11-point: thresholds 0, .1, .., .5 (6 of them) reach the first point, best precision at or after it 1;
    thresholds .6, .., 1 (5) reach only the last point, precision 2/3: AP = (6 * 1 + 5 * 2/3) / 11 = 0.8485.
    Area (VOC2010+): the envelope is 1 up to recall 0.5 and 2/3 up to 1: AP = 0.5 * 1 + 0.5 * 2/3 = 0.8333."""
    gt = make_coco_gt({1: [(3, [10, 10, 50, 50], 0), (3, [100, 100, 140, 150], 0)]})
    dets = detections([([10, 10, 50, 50], 0.9, 0), ([60, 10, 90, 40], 0.8, 0), ([100, 100, 140, 150], 0.7, 0)])
    metrics, evaluator = evaluate(gt, {1: dets})
    assert metrics["VOC07_AP50"] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert metrics["VOC_AP50"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert evaluator.per_class_ap50() == {"circle": pytest.approx(5 / 6)}  # only classes with ground truth

    recall, precision = voc_pr_curve(np.array([True, False, True]), np.array([False, True, False]), num_gt=2)
    assert recall == pytest.approx([0.5, 0.5, 1.0])
    assert precision == pytest.approx([1.0, 0.5, 2 / 3])
    assert voc07_ap_11_point(recall, precision) == pytest.approx(0.8484848)
    assert voc_ap_area(recall, precision) == pytest.approx(0.8333333)


def test_voc_11_point_thresholds_are_exact_tenths():
    """Recall 3/5 = 0.6 exactly reaches the 0.6 threshold (the doubles k/10, as MATLAB's 0:0.1:1). Precision 1 up
    to recall 0.6 and nothing after: 7 of the 11 thresholds (0 .. 0.6) see precision 1, AP = 7/11.
    (np.arange(0, 1.1, 0.1) holds 0.6000000000000001, which 0.6 misses: that would give 6/11.)"""
    recall, precision = voc_pr_curve(np.array([True] * 3), np.array([False] * 3), num_gt=5)
    assert voc07_ap_11_point(recall, precision) == pytest.approx(7 / 11)
    assert voc_ap_area(recall, precision) == pytest.approx(0.6)


def test_voc_duplicate_takes_its_best_box_even_if_taken():
    """GT A = (0, 0, 40, 40), B = (10, 0, 50, 40). Detection 1 (0.9) is A exactly. Detection 2 (0.8) is
    (4, 0, 44, 40): IoU with A = 36*40 / (3200 - 1440) = 0.818, with B = 34*40 / (3200 - 1360) = 0.739. VOC gives
    it its best box, A, already taken: a FP (VOC AP = recall 0.5 at precision 1 = 0.5). COCO falls back to the free
    B: a TP, AP50 = 1. A third, exact duplicate of A (0.5) is a FP under both."""
    gt = make_coco_gt({1: [(7, [0, 0, 40, 40], 0), (7, [10, 0, 50, 40], 0)]})
    dets = detections([([0, 0, 40, 40], 0.9, 1), ([4, 0, 44, 40], 0.8, 1), ([0, 0, 40, 40], 0.5, 1)])
    metrics, _ = evaluate(gt, {1: dets})
    assert metrics["VOC_AP50"] == pytest.approx(0.5)
    assert metrics["VOC07_AP50"] == pytest.approx(6 / 11)  # thresholds 0 .. 0.5 reach recall 0.5
    assert metrics["AP50"] == pytest.approx(1.0)

    # Input order is not score order: matching must still go by score.
    is_tp, is_fp = voc_match(np.zeros(3, np.int64), np.array([0.5, 0.8, 0.9]),
                             np.array([[0, 0, 40, 40], [4, 0, 44, 40], [0, 0, 40, 40]], dtype=float),
                             np.zeros(2, np.int64), np.array([[0, 0, 40, 40], [10, 0, 50, 40]], dtype=float),
                             np.zeros(2, bool))
    assert is_tp.tolist() == [False, False, True] and is_fp.tolist() == [True, True, False]


def test_voc_difficult_box_is_neither_tp_nor_fp():
    """GT A = (10, 10, 50, 50) and a difficult (iscrowd=1) D = (80, 80, 120, 120). Detection 0.9 on D exactly:
    ignored. 0.8 on A: TP. 0.7 = (80, 80, 100, 120) overlaps D by IoU 800 / 1600 = 0.5, not > 0.5: a FP.
    The curve is (recall 1, precision 1) then (1, 0.5): both VOC APs are 1. Were the first detection a FP, the
    area AP would be 0.5."""
    gt_boxes = {1: [(3, [10, 10, 50, 50], 0), (3, [80, 80, 120, 120], 1)]}
    dets = detections([([80, 80, 120, 120], 0.9, 0), ([10, 10, 50, 50], 0.8, 0), ([80, 80, 100, 120], 0.7, 0)])
    metrics, _ = evaluate(make_coco_gt(gt_boxes), {1: dets})
    assert metrics["VOC_AP50"] == pytest.approx(1.0) and metrics["VOC07_AP50"] == pytest.approx(1.0)

    is_tp, is_fp = voc_match(np.zeros(3, np.int64), dets.scores.double().numpy(), dets.boxes_xyxy.double().numpy(),
                             np.zeros(2, np.int64), np.array([[10, 10, 50, 50], [80, 80, 120, 120]], dtype=float),
                             np.array([False, True]))
    assert is_tp.tolist() == [False, True, False] and is_fp.tolist() == [False, False, True]


def test_detections_only_match_their_own_image_and_class():
    """The same box in another image, or under another class, matches nothing. Circle: its box given in image 2
    (no circle there) at 0.8 is a FP, then its own at 0.5 a TP: recall 1 at precision 1/2, AP 1/2. Square: the
    circle's box labelled square at 0.9 is a FP, the square at 0.7 a TP: AP 1/2. (Matching across images or
    classes would make both 1.)"""
    gt = make_coco_gt({1: [(3, [10, 10, 50, 50], 0)], 2: [(7, [60, 60, 90, 90], 0)]})
    metrics, evaluator = evaluate(gt, {
        1: detections([([10, 10, 50, 50], 0.9, 1), ([10, 10, 50, 50], 0.5, 0)]),
        2: detections([([10, 10, 50, 50], 0.8, 0), ([60, 60, 90, 90], 0.7, 1)])})
    assert evaluator.per_class_ap50() == {"circle": pytest.approx(0.5), "square": pytest.approx(0.5)}
    assert metrics["VOC_AP50"] == pytest.approx(0.5) and metrics["VOC07_AP50"] == pytest.approx(0.5)


def test_empty_detections_give_zero_and_unseen_images_do_not_count():
    gt = make_coco_gt({1: [(3, [10, 10, 50, 50], 0)], 2: [(7, [60, 60, 90, 90], 0)]})
    empty = detections([])
    metrics, evaluator = evaluate(gt, {1: empty, 2: empty})
    assert metrics == dict.fromkeys(metrics, 0.0) and len(metrics) == 8
    assert evaluator.results() == [] and evaluator.per_class_ap50() == {"circle": 0.0, "square": 0.0}
    assert Evaluator(gt, CATEGORY_IDS).compute() == metrics  # nothing given at all

    # Image 2 is never given: its square is not a miss, and only the circle counts for VOC.
    metrics, evaluator = evaluate(gt, {1: detections([([10, 10, 50, 50], 0.9, 0)])})
    assert metrics["AP"] == pytest.approx(1.0) and metrics["VOC_AP50"] == pytest.approx(1.0)
    assert evaluator.coco_eval.params.imgIds == [1]


def test_update_rejects_unknown_repeated_and_out_of_range():
    gt = make_coco_gt({1: [(3, [10, 10, 50, 50], 0)]})
    evaluator = Evaluator(gt, CATEGORY_IDS)
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluator.update([5], [detections([])])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        evaluator.update([1], [detections([([0, 0, 1, 1], 0.5, 3)])])
    evaluator.update([1], [detections([])])
    with pytest.raises(ValueError, match="already given"):
        evaluator.update([1], [detections([])])
    with pytest.raises(ValueError, match="not categories of the ground truth"):
        Evaluator(gt, [3, 4])


def test_results_format_and_json_round_trip(tmp_path):
    """xyxy (10, 20, 50, 80) is [x, y, w, h] = [10, 20, 40, 60]; label 2 is category 11."""
    gt = make_coco_gt({4: [(11, [10, 20, 50, 80], 0)]})
    evaluator = Evaluator(gt, CATEGORY_IDS)
    evaluator.update([4], [detections([([10, 20, 50, 80], 0.75, 2)])])
    results = evaluator.results()
    assert results == [{"image_id": 4, "category_id": 11, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.75}]
    write_results_json(results, tmp_path / "sub" / "detections.json")
    assert json.loads((tmp_path / "sub" / "detections.json").read_text()) == results


# ------------------------------------------------------------------------ metrics: parity with references

def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 140, size=(n, 2))
    return np.concatenate((xy, xy + rng.uniform(5, 60, size=(n, 2))), axis=1)


def random_scene(seed: int, num_images: int = 12) -> tuple[COCO, dict[int, Detections]]:
    """Random ground truth (1-6 boxes of all sizes, some crowds) and detections: jittered copies of the ground
    truth (some with a wrong class), duplicates and random boxes, random scores; one image without detections."""
    rng = np.random.default_rng(seed)
    gt, dets = {}, {}
    for image_id in range(10, 10 + num_images):
        num_boxes = int(rng.integers(1, 7))
        wh = rng.uniform(4, 120, size=(num_boxes, 2))
        xy = rng.uniform(0, 1, size=(num_boxes, 2)) * (160 - wh)
        boxes = np.concatenate((xy, xy + wh), axis=1)
        labels = rng.integers(0, 3, size=num_boxes)
        crowd = rng.random(num_boxes) < 0.15
        gt[image_id] = [(CATEGORY_IDS[c], b.tolist(), int(k)) for c, b, k in zip(labels, boxes, crowd)]
        copies = np.repeat(np.arange(num_boxes), rng.integers(0, 3, size=num_boxes))
        jitter = rng.normal(0, 0.06, size=(copies.size, 4)) * np.tile(wh[copies], 2)
        det_boxes = np.concatenate((boxes[copies] + jitter, random_boxes(rng, 3)), axis=0)
        det_labels = np.concatenate((np.where(rng.random(copies.size) < 0.15, (labels[copies] + 1) % 3,
                                              labels[copies]), rng.integers(0, 3, size=3)))
        det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
        dets[image_id] = Detections(torch.from_numpy(det_boxes).float(),
                                    torch.from_numpy(rng.random(det_boxes.shape[0])).float(),
                                    torch.from_numpy(det_labels).long())
    dets[10] = detections([])
    return make_coco_gt(gt), dets


def test_coco_metrics_equal_pycocotools_run_independently():
    coco_gt, dets = random_scene(seed=0)
    metrics, evaluator = evaluate(coco_gt, dets)
    results = evaluator.results()
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iouType="bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    assert [metrics[k] for k in keys] == reference.stats[:6].tolist()
    assert 0.1 < metrics["AP"] < 0.9  # a non-trivial case: neither all hits nor all misses


def devkit_voc_aps(coco_gt: COCO, dets: dict[int, Detections]) -> tuple[float, float]:
    """The VOC devkit (py-faster-rcnn ``voc_eval``) as plain loops, without the +1, with exact-tenths thresholds:
    per class, detections by decreasing score, each takes the max-IoU ground truth of its image; difficult ->
    skipped; free -> TP and taken; taken -> FP; IoU <= 0.5 -> FP. Then the devkit's two ``voc_ap`` formulas."""
    aps_07, aps_area = [], []
    for label, category_id in enumerate(CATEGORY_IDS):
        anns = [a for a in coco_gt.anns.values() if a["category_id"] == category_id]
        num_pos = sum(1 for a in anns if not a["iscrowd"])
        if num_pos == 0:
            continue
        rows = [(float(s), image_id, b.tolist()) for image_id, d in dets.items()
                for b, s, l in zip(d.boxes_xyxy.double(), d.scores, d.labels) if int(l) == label]
        rows.sort(key=lambda r: -r[0])
        taken = set()
        tp, fp = [], []
        for _, image_id, (x1, y1, x2, y2) in rows:
            best_iou, best = -1.0, None
            for a in anns:
                if a["image_id"] != image_id:
                    continue
                gx, gy, gw, gh = a["bbox"]
                iw = max(min(x2, gx + gw) - max(x1, gx), 0.0)
                ih = max(min(y2, gy + gh) - max(y1, gy), 0.0)
                iou = iw * ih / ((x2 - x1) * (y2 - y1) + gw * gh - iw * ih)
                if iou > best_iou:
                    best_iou, best = iou, a
            if best_iou > 0.5 and best["iscrowd"]:
                outcome = (0, 0)
            elif best_iou > 0.5 and best["id"] not in taken:
                taken.add(best["id"])
                outcome = (1, 0)
            else:
                outcome = (0, 1)
            tp.append(outcome[0])
            fp.append(outcome[1])
        tp, fp = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
        rec = tp / num_pos
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps_07.append(sum(max(prec[rec >= t], default=0.0) for t in np.arange(11) / 10) / 11)
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = max(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        aps_area.append(float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])))
    return float(np.mean(aps_07)), float(np.mean(aps_area))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voc_metrics_equal_a_plain_loop_devkit(seed):
    coco_gt, dets = random_scene(seed)
    metrics, _ = evaluate(coco_gt, dets)
    ap_07, ap_area = devkit_voc_aps(coco_gt, dets)
    assert metrics["VOC07_AP50"] == pytest.approx(ap_07, abs=1e-12)
    assert metrics["VOC_AP50"] == pytest.approx(ap_area, abs=1e-12)
    assert 0.1 < metrics["VOC_AP50"] < 0.95
