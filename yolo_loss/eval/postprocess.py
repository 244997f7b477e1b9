"""Inference post-processing: raw head maps to per-image detections, as darknet's YOLOv3 makes them for its mAP
validation (``validate_detector_map``: ``get_yolo_detections`` then ``do_nms_sort``).

- ``score = objectness * class probability``, the class probability by the head's class activation
  (:class:`~yolo_loss.head.HeadSpec`: a sigmoid per class, or a softmax over the classes for a model trained with
  one), multi-label: every class whose score exceeds ``conf_thresh`` gives its own detection of the same box
  (darknet keeps ``prob[j] = obj * p_j`` when it is ``> thresh``);
- NMS per image and class with suppression at ``IoU > nms_iou`` (darknet ``do_nms_sort``, torchvision ``nms``);
- the ``max_det`` highest-scoring detections of each image are kept (COCO evaluates at most 100 per image).

The metrics of the detections are :mod:`yolo_loss.eval.metrics`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from yolo_loss.boxes import box_cxcywh_to_xyxy
from yolo_loss.head import decode_predictions
from yolo_loss.head import HeadSpec

MAX_CANDIDATES = 3000  # per image, before NMS (eval.max_candidates)


@dataclass
class Detections:
    """The detections of one image, in decreasing order of score.

    Attributes:
        boxes_xyxy: ``Tensor[n, 4]`` (x1, y1, x2, y2): network-input pixels out of :func:`postprocess`,
            original-image pixels when given to :meth:`Evaluator.update`.
        scores: ``Tensor[n]`` objectness * class probability, in ``(conf_thresh, 1]``.
        labels: ``Tensor[n]`` int64 contiguous class index in ``[0, C)``.
    """

    boxes_xyxy: Tensor
    scores: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@torch.no_grad()
def postprocess(preds: list[Tensor], head: HeadSpec, *, conf_thresh: float, nms_iou: float, max_det: int,
                max_candidates: int = MAX_CANDIDATES) -> list[Detections]:
    """Decode, score, NMS and keep the best ``max_det`` per image: darknet's YOLOv3 inference.

    Args:
        preds: per level ``Tensor[B, A * (5 + C), H, W]`` raw head maps (logits), in the order of ``head.strides``.
        head: what they mean (anchors, strides, class activation), as the model was trained.
        conf_thresh: a (box, class) pair is a candidate when ``obj * p_class > conf_thresh``.
        nms_iou: a candidate is suppressed by a higher-scoring one of the same image and class when their
            IoU ``> nms_iou``.
        max_det: at most this many detections per image, the highest scoring.
        max_candidates: at most this many (box, class) candidates per image go to NMS, the highest scoring: an
            untrained model, whose scores all sit near the threshold, would otherwise send every cell and class
            (hundreds of thousands per image) through NMS. mmdetection's YOLOv3 keeps 1000 predictions (nms_pre);
            on the main job's model the metrics are the same with 1000, 3000 or 30000 (docs/speed.md, "Evaluation").

    Returns:
        One :class:`Detections` per image, boxes xyxy in input pixels (not clipped to the image: the letterbox
        padding makes the input border meaningless; clip when mapping back to the original image).

    All candidates of the batch go through one :func:`grouped_nms` call keyed by ``image * C + class``; the per-image
    top-k is vectorised too, so the only Python-level work is splitting the kept rows into B views.
    """
    boxes_cxcywh, obj_prob, cls_prob = decode_predictions(preds, head)
    batch, _, num_classes = cls_prob.shape
    # Gate rows on objectness before forming scores: obj * p <= obj, so a row with obj <= conf_thresh cannot give
    # a detection, and most rows of a trained model fall here, which spares building the [B, N, C] score tensor.
    # Non-finite boxes (a diverged model) would poison NMS, so they are dropped with them.
    row_is_candidate = (obj_prob > conf_thresh) & torch.isfinite(boxes_cxcywh).all(dim=-1)
    row_image, row_index = row_is_candidate.nonzero(as_tuple=True)
    row_scores = obj_prob[row_image, row_index, None] * cls_prob[row_image, row_index]  # [R, C]
    cand_row, cand_label = (row_scores > conf_thresh).nonzero(as_tuple=True)
    cand_image = row_image[cand_row]
    cand_scores = row_scores[cand_row, cand_label]
    if cand_scores.numel() > max_candidates:
        keep = _best_of_each_image(cand_image, cand_scores, batch, max_candidates)
        cand_row, cand_label, cand_image, cand_scores = (cand_row[keep], cand_label[keep], cand_image[keep],
                                                          cand_scores[keep])
    cand_boxes_xyxy = box_cxcywh_to_xyxy(boxes_cxcywh[cand_image, row_index[cand_row]])

    # One NMS for the whole batch: the (image, class) key keeps boxes of other images and classes from suppressing.
    keep = grouped_nms(cand_boxes_xyxy, cand_scores, cand_image * num_classes + cand_label, nms_iou)
    # keep is in decreasing score: the best max_det of each image, grouped by image in that order.
    keep = keep[_top_per_image(cand_image[keep], cand_scores[keep], batch, max_det, scores_sorted=True)]
    counts = torch.bincount(cand_image[keep], minlength=batch).tolist()
    return [Detections(boxes, scores, labels) for boxes, scores, labels in zip(
        cand_boxes_xyxy[keep].split(counts), cand_scores[keep].split(counts), cand_label[keep].split(counts))]


# Up to this many boxes one torchvision batched_nms call (boxes of different groups moved apart) is fastest.
GROUPED_NMS_ONE_CALL = 1000


def grouped_nms(boxes_xyxy: Tensor, scores: Tensor, groups: Tensor, iou_thresh: float) -> Tensor:
    """NMS within each group (``torchvision.ops.batched_nms``'s result): indices of the kept boxes, by decreasing
    score.

    ``batched_nms`` on the CPU, above 1000 boxes, runs one NMS per group, each after a full-length ``groups == g``
    mask: O(boxes x groups), 2 s for a batch of 32 images x 80 classes x 3000 candidates. Here the boxes are sorted
    by group once and each group's NMS sees only its own slice: the same result, one pass over the boxes.

    Args:
        boxes_xyxy: ``Tensor[N, 4]``. scores: ``Tensor[N]``. groups: ``Tensor[N]`` int64 keys.
        iou_thresh: a box is suppressed by a higher-scoring one of its group with IoU ``> iou_thresh``.
    """
    if boxes_xyxy.shape[0] <= GROUPED_NMS_ONE_CALL:
        return batched_nms(boxes_xyxy, scores, groups, iou_thresh)
    order = torch.sort(groups, stable=True).indices
    sizes = torch.unique_consecutive(groups[order], return_counts=True)[1].tolist()
    keep = torch.cat([members[nms(boxes_xyxy[members], scores[members], iou_thresh)]
                      for members in order.split(sizes)])
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def _best_of_each_image(image: Tensor, scores: Tensor, batch: int, k: int) -> Tensor:
    """Indices of the ``k`` highest ``scores`` of each image, grouped by image, for ``image`` (``Tensor[N]`` in
    ``[0, batch)``) in non-decreasing order, as ``nonzero`` leaves the candidates. One ``topk`` over a
    ``[batch, most candidates of an image]`` table: no sort of all N (2 s for the 16 M candidates of 32
    untrained 80-class images)."""
    per_image = torch.bincount(image, minlength=batch)
    first_of_image = torch.cumsum(per_image, dim=0) - per_image
    rank_in_image = torch.arange(image.numel(), device=image.device) - first_of_image[image]
    table = scores.new_full((batch, int(per_image.max())), -math.inf)
    table[image, rank_in_image] = scores
    top = table.topk(min(k, table.shape[1]), dim=1, sorted=False).indices  # [batch, k] columns
    return (first_of_image[:, None] + top)[top < per_image[:, None]]


def _top_per_image(image: Tensor, scores: Tensor, batch: int, k: int, *, scores_sorted: bool = False) -> Tensor:
    """Indices of the ``k`` highest ``scores`` of each image (``image``: ``Tensor[N]`` in ``[0, batch)``),
    grouped by image in increasing order and by decreasing score inside each image; vectorised, no loop."""
    order = torch.arange(scores.numel(), device=scores.device) if scores_sorted else (
        torch.sort(scores, descending=True, stable=True).indices)
    # A stable sort by image keeps the score order inside each image, so each image's first k rows are its best.
    order = order[torch.sort(image[order], stable=True).indices]
    sorted_image = image[order]
    per_image = torch.bincount(sorted_image, minlength=batch)
    first_of_image = torch.cumsum(per_image, dim=0) - per_image
    rank_in_image = torch.arange(order.numel(), device=order.device) - first_of_image[sorted_image]
    return order[rank_in_image < k]
