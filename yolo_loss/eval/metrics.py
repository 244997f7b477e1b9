"""The detection metrics of detections in original-image pixels (``yolo_loss/eval/postprocess.py`` makes them).

:class:`Evaluator` collects detections in original-image pixels and computes

- the COCO metrics ``AP, AP50, AP75, APs, APm, APl`` with pycocotools' ``COCOeval`` (bbox);
- ``VOC07_AP50``, PASCAL VOC 2007's 11-point interpolated AP at IoU 0.5, and ``VOC_AP50``, the all-points area
  under the precision envelope of VOC 2010 and later, both the mean over the classes present in the ground truth,
  with the devkit's matching rules (``VOCevaldet.m``) re-implemented vectorised in numpy (:func:`voc_match`).

IoU convention of the VOC metrics: **no +1**. The devkit measures integer pixel indices, so a box ``(1, 1, 10, 10)``
is 10 pixels wide there and its IoU adds 1 to every width and height. Our boxes are continuous, 0-based coordinates
(a box ``(0, 0, 10, 10)`` is 10 wide), as COCO's are, so we measure them as such: the same boxes give slightly
different IoUs from the devkit's for small boxes, and identical ones for boxes much larger than a pixel.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from yolo_loss.eval.postprocess import Detections

COCO_METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6], in that order
VOC_METRIC_KEYS = ("VOC07_AP50", "VOC_AP50")
VOC_IOU_THRESH = 0.5
# VOC 2007's recall thresholds 0, 0.1, ..., 1 as the doubles nearest k/10 (MATLAB's 0:0.1:1). A recall of 3/5
# then reaches the threshold 0.6; py-faster-rcnn's np.arange(0, 1.1, 0.1) holds 0.6000000000000001 and misses it.
VOC07_RECALL_THRESHOLDS = np.arange(11) / 10


def box_iou_pairs_np(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """IoU of row-aligned pairs, ``float[P, 4]`` x ``float[P, 4]`` xyxy -> ``float[P]``, without the devkit's +1.

    Two zero-area boxes have a union of 0 and are given an IoU of 0, not 0 / 0. Not
    :func:`yolo_loss.boxes.box_iou_pairwise`: that one adds an ``eps`` to the union, which would move pairs at exactly
    the devkit's strict ``> 0.5``, and the matching here runs in NumPy.
    """
    overlap_wh = (np.minimum(a_xyxy[:, 2:], b_xyxy[:, 2:]) - np.maximum(a_xyxy[:, :2], b_xyxy[:, :2])).clip(min=0)
    inter = overlap_wh[:, 0] * overlap_wh[:, 1]
    area_a = (a_xyxy[:, 2] - a_xyxy[:, 0]) * (a_xyxy[:, 3] - a_xyxy[:, 1])
    area_b = (b_xyxy[:, 2] - b_xyxy[:, 0]) * (b_xyxy[:, 3] - b_xyxy[:, 1])
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def voc_match(det_groups: np.ndarray, det_scores: np.ndarray, det_boxes_xyxy: np.ndarray,
              gt_groups: np.ndarray, gt_boxes_xyxy: np.ndarray, gt_difficult: np.ndarray, *,
              iou_thresh: float = VOC_IOU_THRESH) -> tuple[np.ndarray, np.ndarray]:
    """Label detections true or false positives by the PASCAL VOC devkit rules (``VOCevaldet.m``).

    A detection may only match a ground-truth box of the same group, an integer key of (image, class).

    1. Each detection takes the ground-truth box of its group with the highest IoU (the first one on ties,
       as ``max`` in MATLAB and ``np.argmax``), whether or not that box is already taken.
    2. If that IoU ``> iou_thresh`` (strictly, as the devkit):
       - a difficult box: the detection is ignored, neither TP nor FP;
       - otherwise, in decreasing order of score, the first detection to take the box is a TP and every later
         one a FP (a duplicate), even when it overlaps another, free box: VOC does not fall back to it (COCO does).
    3. Otherwise the detection is a FP.

    Rule 1 does not depend on the matching state, so "first by score per box" (rule 2) is a ``np.unique`` over
    the score order; nothing loops over detections. Ties in score keep the input order.

    Args:
        det_groups: ``int64[D]`` group key of each detection.
        det_scores: ``float[D]``.
        det_boxes_xyxy: ``float[D, 4]``.
        gt_groups: ``int64[G]``; gt_boxes_xyxy: ``float[G, 4]``; gt_difficult: ``bool[G]``.
        iou_thresh: the devkit's 0.5.

    Returns:
        ``is_tp`` and ``is_fp``, ``bool[D]`` in the input order; a detection that is neither is ignored.
    """
    num_det = det_scores.shape[0]
    # Pairs (detection, ground truth of its group), grouped by detection, the ground truth in input order.
    gt_order = np.argsort(gt_groups, kind="stable")
    sorted_gt_groups = gt_groups[gt_order]
    group_start = np.searchsorted(sorted_gt_groups, det_groups, side="left")
    pairs_per_det = np.searchsorted(sorted_gt_groups, det_groups, side="right") - group_start
    first_pair_of_det = np.cumsum(pairs_per_det) - pairs_per_det
    pair_det = np.repeat(np.arange(num_det), pairs_per_det)
    pair_offset = np.arange(pair_det.shape[0]) - first_pair_of_det[pair_det]
    pair_gt = gt_order[group_start[pair_det] + pair_offset]
    pair_iou = box_iou_pairs_np(det_boxes_xyxy[pair_det], gt_boxes_xyxy[pair_gt])

    has_gt = pairs_per_det > 0
    best_iou = np.full(num_det, -1.0)
    if pair_det.shape[0]:
        # Each detection's pairs are one contiguous run, so a segmented max is a reduceat over the runs' starts.
        best_iou[has_gt] = np.maximum.reduceat(pair_iou, first_pair_of_det[has_gt])
    is_best_pair = pair_iou == best_iou[pair_det]
    dets_with_best, first_best = np.unique(pair_det[is_best_pair], return_index=True)
    best_gt = np.full(num_det, -1, dtype=np.int64)
    best_gt[dets_with_best] = pair_gt[np.flatnonzero(is_best_pair)[first_best]]

    matched = best_iou > iou_thresh
    ignored = np.zeros(num_det, dtype=bool)
    ignored[matched] = gt_difficult[best_gt[matched]]
    claims = matched & ~ignored
    score_order = np.argsort(-det_scores, kind="stable")
    claims_by_score = score_order[claims[score_order]]
    _, first_claim = np.unique(best_gt[claims_by_score], return_index=True)
    is_tp = np.zeros(num_det, dtype=bool)
    is_tp[claims_by_score[first_claim]] = True
    return is_tp, ~is_tp & ~ignored


def voc_pr_curve(is_tp: np.ndarray, is_fp: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision after each counted detection of one class.

    Args:
        is_tp, is_fp: ``bool[D]`` in decreasing order of score; detections that are neither (ignored) are dropped,
            which gives the same AP as the devkit's repeated points.
        num_gt: the class's non-difficult ground-truth boxes (> 0).

    Returns:
        ``recall`` and ``precision``, ``float[D']``: ``TP_k / num_gt`` and ``TP_k / (TP_k + FP_k)``.
    """
    counted = is_tp | is_fp
    tp_cumulative = np.cumsum(is_tp[counted], dtype=np.float64)
    fp_cumulative = np.cumsum(is_fp[counted], dtype=np.float64)
    return tp_cumulative / num_gt, tp_cumulative / (tp_cumulative + fp_cumulative)


def _precision_envelope(precision: np.ndarray) -> np.ndarray:
    """``float[D]``: the best precision at this point or any later one (higher recall)."""
    return np.maximum.accumulate(precision[::-1])[::-1]


def voc07_ap_11_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """PASCAL VOC 2007 AP: ``(1/11) * sum over t in {0, 0.1, ..., 1} of max(precision[recall >= t])`` (0 if none).

    ``recall`` is non-decreasing (as :func:`voc_pr_curve` gives it), so the first point with ``recall >= t`` is a
    ``searchsorted`` and the max over the later points is the precision envelope there.
    """
    if recall.shape[0] == 0:
        return 0.0
    envelope = _precision_envelope(precision)
    first_reaching = np.searchsorted(recall, VOC07_RECALL_THRESHOLDS, side="left")
    reached = first_reaching < recall.shape[0]
    return float(envelope[first_reaching[reached]].sum() / VOC07_RECALL_THRESHOLDS.shape[0])


def voc_ap_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """PASCAL VOC 2010+ AP: the area under the precision envelope, ``sum_k (r_k - r_{k-1}) * max(p_j, j >= k)``.

    With ``r_0 = 0``; the devkit's sentinel points (0, 0) and (1, 0) add nothing to this sum.
    """
    return float(np.sum(np.diff(recall, prepend=0.0) * _precision_envelope(precision)))


@dataclass
class _VocClassAP:
    ap_11_point: float
    ap_area: float


@dataclass
class VocMatches:
    """Every detection of an :class:`Evaluator` judged by the VOC rules at IoU 0.5, as its ``VOC_AP50`` judges it.

    Attributes:
        labels, scores: ``int64[D]``, ``float64[D]`` of each detection.
        is_tp, is_fp: ``bool[D]``; a detection on a difficult (crowd) box is neither.
        num_gt: ``int64[C]`` non-difficult ground-truth boxes per class in the images seen.
    """

    labels: np.ndarray
    scores: np.ndarray
    is_tp: np.ndarray
    is_fp: np.ndarray
    num_gt: np.ndarray


class Evaluator:
    """Accumulates detections per image and computes the COCO and VOC metrics against a COCO ground truth.

    Only the images given to :meth:`update` are evaluated (an evaluation cut short does not count the images it
    never saw as misses). Ground-truth boxes with ``iscrowd=1`` (COCO crowds, VOC ``difficult``) are ignored by both
    metrics: a detection on one is neither a true nor a false positive.

    Attributes:
        summary_text: pycocotools' printed summary of the last :meth:`compute`.
        coco_eval: the last ``COCOeval`` (for per-class or per-area precision arrays), None before.
    """

    def __init__(self, coco_gt: COCO, category_ids: list[int]) -> None:
        """
        Args:
            coco_gt: the ground truth; boxes ``[x, y, w, h]`` in original-image pixels.
            category_ids: ``category_ids[label]`` is the COCO category id of contiguous class index ``label``.
        """
        self.coco_gt = coco_gt
        self.category_ids = [int(c) for c in category_ids]
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"category_ids has duplicates: {self.category_ids}")
        unknown = sorted(set(self.category_ids) - set(coco_gt.getCatIds()))
        if unknown:
            raise ValueError(f"category ids {unknown} are not categories of the ground truth")
        self.summary_text = ""
        self.coco_eval: COCOeval | None = None

        # The VOC ground truth as arrays, in annotation order (the devkit's tie-break among equal IoUs).
        label_of_category = {category_id: label for label, category_id in enumerate(self.category_ids)}
        annotations = [a for a in coco_gt.anns.values() if a["category_id"] in label_of_category]
        self._gt_image_ids = np.array([a["image_id"] for a in annotations], dtype=np.int64)
        self._gt_labels = np.array([label_of_category[a["category_id"]] for a in annotations], dtype=np.int64)
        xywh = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
        self._gt_boxes_xyxy = np.concatenate((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), axis=1)
        self._gt_difficult = np.array([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool)

        self._seen_image_ids: set[int] = set()
        self._det_image_ids: list[np.ndarray] = []
        self._det_boxes_xyxy: list[np.ndarray] = []
        self._det_scores: list[np.ndarray] = []
        self._det_labels: list[np.ndarray] = []
        self._voc_cache: VocMatches | None = None

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def update(self, image_ids: list[int], detections: list[Detections]) -> None:
        """Add the detections of some images, boxes xyxy in **original-image** pixels.

        An image may be given once; one given with no detections still counts (its ground truth are misses).
        """
        if len(image_ids) != len(detections):
            raise ValueError(f"{len(image_ids)} image ids but {len(detections)} detections")
        for image_id, det in zip(image_ids, detections):
            image_id = int(image_id)
            if image_id not in self.coco_gt.imgs:
                raise ValueError(f"image id {image_id} is not in the ground truth")
            if image_id in self._seen_image_ids:
                raise ValueError(f"image id {image_id} was already given (a padded or repeating sampler?)")
            boxes = det.boxes_xyxy.detach().to("cpu", torch.float64).numpy().reshape(-1, 4)
            scores = det.scores.detach().to("cpu", torch.float64).numpy().reshape(-1)
            labels = det.labels.detach().to("cpu", torch.int64).numpy().reshape(-1)
            if not boxes.shape[0] == scores.shape[0] == labels.shape[0]:
                raise ValueError(f"image {image_id}: {boxes.shape[0]} boxes, {scores.shape[0]} scores, "
                                 f"{labels.shape[0]} labels")
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"image {image_id}: labels must be in [0, {self.num_classes}), "
                                 f"got {labels.min()}..{labels.max()}")
            if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
                raise ValueError(f"image {image_id}: non-finite boxes or scores")
            self._seen_image_ids.add(image_id)
            self._det_image_ids.append(np.full(labels.shape[0], image_id, dtype=np.int64))
            self._det_boxes_xyxy.append(boxes)
            self._det_scores.append(scores)
            self._det_labels.append(labels)
        self._voc_cache = None

    def _gathered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All detections: image ids ``int64[D]``, boxes ``float64[D, 4]`` xyxy, scores ``[D]``, labels ``[D]``."""
        if not self._det_scores:
            return (np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
        return (np.concatenate(self._det_image_ids), np.concatenate(self._det_boxes_xyxy),
                np.concatenate(self._det_scores), np.concatenate(self._det_labels))

    def results(self) -> list[dict[str, Any]]:
        """The detections in COCO results format: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.

        A new list of new dicts each call (pycocotools' ``loadRes`` writes into the dicts it is given).
        """
        image_ids, boxes_xyxy, scores, labels = self._gathered()
        boxes_xywh = np.concatenate((boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]), axis=1)
        category_ids = np.asarray(self.category_ids, dtype=np.int64)[labels]
        return [{"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}
                for image_id, category_id, box, score in zip(image_ids.tolist(), category_ids.tolist(),
                                                             boxes_xywh.tolist(), scores.tolist())]

    def compute(self) -> dict[str, float]:
        """``AP, AP50, AP75, APs, APm, APl`` (pycocotools) and ``VOC07_AP50, VOC_AP50`` (:func:`voc_match`).

        No detections at all gives 0 for every metric. Otherwise the COCO values are pycocotools' as they are,
        including its -1 for an area range (or the whole set) without ground truth. The VOC values are the mean
        over the classes with non-difficult ground truth in the seen images, 0 when there is none.
        """
        return self.coco_metrics() | self.voc_metrics()

    def coco_metrics(self) -> dict[str, float]:
        """``AP, AP50, AP75, APs, APm, APl`` by pycocotools (see :meth:`compute`)."""
        results = self.results()
        if not results:
            # pycocotools' loadRes cannot take an empty list; with nothing detected every AP is 0 anyway.
            self.summary_text = "no detections: every metric is 0\n"
            self.coco_eval = None
            return dict.fromkeys(COCO_METRIC_KEYS, 0.0)
        return self._coco_metrics(results)

    def voc_metrics(self) -> dict[str, float]:
        """``VOC07_AP50, VOC_AP50``: the means over the classes of :meth:`voc_matches` (see :meth:`compute`)."""
        per_class = self._voc_per_class()
        if not per_class:
            return dict.fromkeys(VOC_METRIC_KEYS, 0.0)
        return {"VOC07_AP50": float(np.mean([c.ap_11_point for c in per_class.values()])),
                "VOC_AP50": float(np.mean([c.ap_area for c in per_class.values()]))}

    def per_class_ap50(self) -> dict[str | int, float]:
        """VOC all-points AP at IoU 0.5 (``VOC_AP50``) of each class present in the ground truth.

        Keyed by the category's name in ``coco_gt``, or its id where the category has no name or shares it.
        """
        names = [str(self.coco_gt.cats[c].get("name", "")) for c in self.category_ids]
        per_class = self._voc_per_class()
        return {(name if name and names.count(name) == 1 else self.category_ids[label]): per_class[label].ap_area
                for label, name in enumerate(names) if label in per_class}

    def _coco_metrics(self, results: list[dict[str, Any]]) -> dict[str, float]:
        # pycocotools prints progress from loadRes, evaluate and accumulate: silenced; the summary is kept.
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = self.coco_gt.loadRes(results)
            coco_eval = COCOeval(self.coco_gt, coco_dt, iouType="bbox")
            coco_eval.params.imgIds = sorted(self._seen_image_ids)
            coco_eval.params.catIds = sorted(self.category_ids)
            coco_eval.evaluate()
            coco_eval.accumulate()
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            coco_eval.summarize()
        self.summary_text = summary.getvalue()
        self.coco_eval = coco_eval
        return {key: float(value) for key, value in zip(COCO_METRIC_KEYS, coco_eval.stats[:6])}

    def detections(self, image_id: int) -> Detections:
        """The detections given for one image (boxes xyxy in original-image pixels), in decreasing order of score.

        Raises:
            KeyError: the image was not given to :meth:`update`.
        """
        image_id = int(image_id)
        if image_id not in self._seen_image_ids:
            raise KeyError(f"image id {image_id} has not been evaluated")
        image_ids, boxes_xyxy, scores, labels = self._gathered()
        mine = np.flatnonzero(image_ids == image_id)
        mine = mine[np.argsort(-scores[mine], kind="stable")]
        return Detections(torch.from_numpy(boxes_xyxy[mine]), torch.from_numpy(scores[mine]),
                          torch.from_numpy(labels[mine]))

    def voc_matches(self) -> VocMatches:
        """Every detection labelled by :func:`voc_match` against the ground truth of the images seen (cached):
        what ``VOC07_AP50``, ``VOC_AP50``, :meth:`per_class_ap50` and the PR curves are computed from."""
        if self._voc_cache is not None:
            return self._voc_cache
        seen = np.array(sorted(self._seen_image_ids), dtype=np.int64)
        in_seen = np.isin(self._gt_image_ids, seen)
        gt_labels, gt_difficult = self._gt_labels[in_seen], self._gt_difficult[in_seen]
        # A group is (image, class); dense image indices keep the key small whatever the COCO ids are.
        gt_groups = np.searchsorted(seen, self._gt_image_ids[in_seen]) * self.num_classes + gt_labels
        det_image_ids, det_boxes_xyxy, det_scores, det_labels = self._gathered()
        det_groups = np.searchsorted(seen, det_image_ids) * self.num_classes + det_labels
        is_tp, is_fp = voc_match(det_groups, det_scores, det_boxes_xyxy, gt_groups,
                                 self._gt_boxes_xyxy[in_seen], gt_difficult)
        num_gt = np.bincount(gt_labels[~gt_difficult], minlength=self.num_classes)
        self._voc_cache = VocMatches(det_labels, det_scores, is_tp, is_fp, num_gt)
        return self._voc_cache

    def _voc_per_class(self) -> dict[int, _VocClassAP]:
        """Both VOC APs of every class label with non-difficult ground truth in the seen images."""
        matches = self.voc_matches()
        # By class, then decreasing score (np.lexsort is stable: ties keep the order voc_match used).
        order = np.lexsort((-matches.scores, matches.labels))
        class_bounds = np.searchsorted(matches.labels[order], np.arange(self.num_classes + 1))
        per_class = {}
        for label in np.flatnonzero(matches.num_gt).tolist():
            rows = order[class_bounds[label]:class_bounds[label + 1]]
            recall, precision = voc_pr_curve(matches.is_tp[rows], matches.is_fp[rows], int(matches.num_gt[label]))
            per_class[label] = _VocClassAP(voc07_ap_11_point(recall, precision), voc_ap_area(recall, precision))
        return per_class


def write_results_json(results: list[dict[str, Any]], path: str | Path) -> None:
    """Write :meth:`Evaluator.results` as a COCO results JSON file (what the COCO evaluation server takes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Non-finite numbers are not JSON: update() refuses them, so allow_nan=False only guards other callers.
    path.write_text(json.dumps(results, allow_nan=False))
