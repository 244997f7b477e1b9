"""Task-aligned assignment (TAL): TOOD's assigner as YOLOv8 and later ultralytics detectors run it.

Feng et al., "TOOD: Task-aligned One-stage Object Detection", ICCV 2021. Every candidate whose point lies inside a
truth box is scored against that truth by the alignment metric

    t = s^alpha * u^beta

with ``s`` the predicted probability of the truth's class and ``u`` the overlap of the predicted box with the truth;
each truth takes the ``topk`` candidates of highest ``t`` among those inside it, a candidate taken by several truths
keeps one, and the class target of a positive is soft: ``t`` normalised per truth so that the truth's best positive
gets the best overlap among its positives,

    cls_target = t * max_{positives of g} u / (max_{positives of g} t + eps).

This module equals ``TaskAlignedAssigner`` in ``ultralytics/utils/tal.py`` of ultralytics 8.4.190 (the PyPI
release; ``tests/losses/test_tal.py`` runs that file's own code against this one) with the arguments of its
``v8DetectionLoss``: ``topk=10, alpha=0.5, beta=6.0, eps=1e-9`` and strides 8, 16, 32. Two details of that
version are easy to miss. The overlap ``u`` is ultralytics' CIoU (``bbox_iou(truth, pred, xywh=False,
CIoU=True)``, its own ``eps=1e-7`` conventions) clamped at 0, not the IoU of the paper. And before the inside test
a truth side shorter than the second stride (16 px) is widened to it about the box centre, so that a small truth
still has candidates (``min_truth_side``; 0 gives the rule of older ultralytics versions, which test the box as
given, up to one ulp).

With this project's anchor-based head the ``A`` anchors of a cell are simply ``A`` candidates at the same point:
their predicted boxes and scores differ, so the metric ranks them like any other candidates.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from yolo_loss.losses.assigners import Assignment

# ultralytics' select_candidates_in_gts has its own margin, independent of the normalisation eps: a point must be
# more than this inside every side.
INSIDE_MARGIN = 1e-9
# ultralytics' bbox_iou default.
CIOU_EPS = 1e-7


def ciou_ultralytics(truth_xyxy: Tensor, pred_xyxy: Tensor, *, eps: float = CIOU_EPS) -> Tensor:
    """CIoU of pairs as ultralytics' ``bbox_iou(truth, pred, xywh=False, CIoU=True)`` computes it.

    ``Tensor[P, 4]`` x ``Tensor[P, 4]`` (xyxy) -> ``Tensor[P]``, with heights ``h + eps`` in the areas and the aspect
    ratios, ``union + eps``, ``c^2 + eps`` and ``alpha = v / (1 - IoU + v + eps)``. ``yolo_loss.boxes.ciou_loss`` is the
    same quantity but not the same bits (its areas use ``h`` without ``eps`` and it returns ``1 - CIoU``); the
    assignment compares metrics for equality in top-k and argmax, so the reference's float arithmetic is kept here,
    in its order of operations.
    """
    t_x1, t_y1, t_x2, t_y2 = truth_xyxy.unbind(-1)
    p_x1, p_y1, p_x2, p_y2 = pred_xyxy.unbind(-1)
    t_w, t_h = t_x2 - t_x1, t_y2 - t_y1 + eps
    p_w, p_h = p_x2 - p_x1, p_y2 - p_y1 + eps
    inter = ((torch.minimum(t_x2, p_x2) - torch.maximum(t_x1, p_x1)).clamp(min=0)
             * (torch.minimum(t_y2, p_y2) - torch.maximum(t_y1, p_y1)).clamp(min=0))
    union = t_w * t_h + p_w * p_h - inter + eps
    iou = inter / union
    enclosing_w = torch.maximum(t_x2, p_x2) - torch.minimum(t_x1, p_x1)
    enclosing_h = torch.maximum(t_y2, p_y2) - torch.minimum(t_y1, p_y1)
    diagonal_sq = enclosing_w.pow(2) + enclosing_h.pow(2) + eps
    centre_dist_sq = ((p_x1 + p_x2 - t_x1 - t_x2).pow(2) + (p_y1 + p_y2 - t_y1 - t_y2).pow(2)) / 4
    v = (4 / math.pi ** 2) * ((p_w / p_h).atan() - (t_w / t_h).atan()).pow(2)
    alpha = v / (1 - iou + v + eps)
    return iou - (centre_dist_sq / diagonal_sq + v * alpha)


def points_inside_truths(points: Tensor, truth_boxes: Tensor, truth_mask: Tensor, *,
                         min_truth_side: float) -> Tensor:
    """Which candidate points lie strictly inside which truth: ``Tensor[B, M, N]`` bool.

    Args:
        points: ``Tensor[N, 2]`` candidate points (x, y), input pixels.
        truth_boxes: ``Tensor[B, M, 4]`` xyxy.
        truth_mask: ``Tensor[B, M]`` bool; only real truths are widened (padding is tested as given).
        min_truth_side: a real truth's side shorter than this is widened to it about the box centre.
    """
    # ultralytics goes through (cx, cy, w, h) and back for every box, widened or not; the round trip is kept
    # because it can move a corner by one ulp, which decides a point that lies on the edge.
    centre = (truth_boxes[..., :2] + truth_boxes[..., 2:]) / 2
    size = truth_boxes[..., 2:] - truth_boxes[..., :2]
    size = torch.where((size < min_truth_side) & truth_mask[..., None], size.new_tensor(min_truth_side), size)
    half = size / 2
    top_left, bottom_right = (centre - half)[:, :, None], (centre + half)[:, :, None]  # [B, M, 1, 2]
    inside = (points - top_left > INSIDE_MARGIN) & (bottom_right - points > INSIDE_MARGIN)  # [B, M, N, 2]
    return inside.all(-1)


@torch.no_grad()
def tal_assign(pred_scores: Tensor, pred_boxes: Tensor, points: Tensor, truth_boxes: Tensor, truth_labels: Tensor,
               truth_mask: Tensor, *, num_classes: int, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
               eps: float = 1e-9, min_truth_side: float = 16.0) -> Assignment:
    """Task-aligned assignment of a batch (the module docstring; ultralytics ``TaskAlignedAssigner.forward``).

    Args:
        pred_scores: ``Tensor[B, N, C]`` class probabilities (after the sigmoid), detached.
        pred_boxes: ``Tensor[B, N, 4]`` decoded predicted boxes, xyxy input pixels, detached.
        points: ``Tensor[N, 2]`` candidate points (cell centres), input pixels.
        truth_boxes: ``Tensor[B, M, 4]`` xyxy input pixels, padded.
        truth_labels: ``Tensor[B, M]`` int64 class indices (any value on padding).
        truth_mask: ``Tensor[B, M]`` bool, ``False`` on padding.
        num_classes: ``C``.
        topk: positives a truth takes at most (``min(topk, N)`` when there are fewer candidates, where
            ultralytics' ``torch.topk`` raises).
        alpha, beta: the powers of the class probability and the overlap in the alignment metric.
        eps: added to each truth's largest metric before dividing by it.
        min_truth_side: the inside test widens shorter truth sides to this (ultralytics' ``stride_val``: the
            second of the head's strides, 16 for 8, 16, 32); 0 tests the boxes as given.

    Returns:
        :class:`Assignment`. ``fg``: the candidate is inside its truth (after the widening), among the truth's
        ``topk`` by metric, and, if several truths took it, assigned to the one of highest CIoU with its predicted
        box, taken over every real truth that contains its point (ultralytics' rule: not only over those that took
        it; truth 0, whatever it is, when all of those CIoUs are 0, and then its class target is 0). ``truth``:
        that truth's index. ``cls_target``: ``Tensor[B, N, C]`` in the dtype of ``pred_scores * pred_boxes``, the
        normalised metric on the truth's class.
    """
    batch, num_candidates, classes = pred_scores.shape
    num_truths = truth_boxes.shape[1]
    if classes != num_classes:
        raise ValueError(f"pred_scores has {classes} classes, num_classes is {num_classes}")
    device = pred_scores.device
    metric_dtype = torch.result_type(pred_scores, pred_boxes)
    if num_truths == 0 or num_candidates == 0:
        return Assignment(fg=torch.zeros(batch, num_candidates, dtype=torch.bool, device=device),
                          truth=torch.zeros(batch, num_candidates, dtype=torch.long, device=device),
                          cls_target=pred_scores.new_zeros(batch, num_candidates, classes, dtype=metric_dtype))
    truth_mask = truth_mask.bool()

    # Metric of every (image, truth, candidate) whose point is inside a real truth; 0 elsewhere. Computed on the
    # pairs only, as ultralytics does (cheaper, and the same elementwise kernels on the same values).
    inside = points_inside_truths(points, truth_boxes, truth_mask, min_truth_side=min_truth_side)
    candidate_pair = inside & truth_mask[:, :, None]  # [B, M, N]
    image, truth, candidate = candidate_pair.nonzero(as_tuple=True)
    pair_scores = pred_scores[image, candidate, truth_labels[image, truth]]
    pair_overlaps = ciou_ultralytics(truth_boxes[image, truth], pred_boxes[image, candidate]).clamp(min=0)
    overlaps = pred_boxes.new_zeros(batch, num_truths, num_candidates)
    overlaps[image, truth, candidate] = pair_overlaps
    metric = torch.zeros(batch, num_truths, num_candidates, dtype=metric_dtype, device=device)
    metric[image, truth, candidate] = pair_scores.pow(alpha) * pair_overlaps.pow(beta)

    # Each real truth's top-k candidates by metric (ties among zeros broken by torch.topk, as in ultralytics); a
    # candidate in the top-k but outside the truth is not a positive.
    top_index = metric.topk(min(topk, num_candidates), dim=-1).indices  # [B, M, k]
    in_topk = torch.zeros_like(candidate_pair).scatter_(-1, top_index, True)
    positive = in_topk & candidate_pair  # [B, M, N]

    # A candidate taken by several truths keeps only the truth of highest overlap (argmax: the first on ties).
    taken_by_several = positive.sum(1) > 1  # [B, N]
    best_truth = overlaps.argmax(1)  # [B, N]
    is_best = torch.zeros_like(positive).scatter_(1, best_truth[:, None], True)
    positive = torch.where(taken_by_several[:, None], is_best, positive)

    fg = positive.any(1)
    assigned = torch.where(fg, positive.to(torch.uint8).argmax(1), 0)  # [B, N]

    # Soft class target: per truth, metric * (best overlap of its positives) / (best metric of its positives + eps).
    metric = metric * positive
    best_metric = metric.amax(-1, keepdim=True)  # [B, M, 1]
    best_overlap = (overlaps * positive).amax(-1, keepdim=True)
    normalised = (metric * best_overlap / (best_metric + eps)).amax(1)  # [B, N]; one truth per positive column
    label = truth_labels.gather(1, assigned).clamp(min=0)  # ultralytics clamps padding labels too
    one_hot = torch.zeros(batch, num_candidates, classes, dtype=metric_dtype, device=device)
    one_hot.scatter_(-1, label[..., None], 1)
    return Assignment(fg=fg, truth=assigned, cls_target=one_hot * (fg[..., None] * normalised[..., None]))
