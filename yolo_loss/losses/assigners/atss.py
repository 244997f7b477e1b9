"""ATSS: adaptive training sample selection (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free
Detection via Adaptive Training Sample Selection", CVPR 2020), as mmdetection's ``ATSSAssigner``.

ATSS reads no predictions: which anchors are positive follows from the anchor boxes and the truths alone, with
one hyper-parameter ``topk``. In YOLOv6's comparison of assigners (arXiv 2209.02976, Table 6, YOLOv6-N) it is the
weakest of the three here: ATSS 32.5, SimOTA 34.5, TAL 35.0 AP.

The rule, per image and per truth (equal to ``mmdet/models/task_modules/assigners/atss_assigner.py`` of
open-mmlab/mmdetection at commit ``adc8ffa53beac76c08ec39719853f18e378d5184``, ``alpha=None``, IoU by
``BboxOverlaps2D``; checked by ``tests/losses/test_atss.py``, which runs that file):

1. ``IoU`` of every anchor box with the truth, mmdetection's ``bbox_overlaps``: ``inter / max(union, 1e-6)``.
2. The Euclidean distance between the anchor box's centre and the truth box's centre.
3. On each level, the ``min(topk, level size)`` anchors closest to the truth's centre are its candidates
   (``torch.topk(largest=False)``; among equidistant anchors, such as the ``A`` anchors of one cell, which ones
   make the cut is ``torch.topk``'s choice, as in mmdetection).
4. The truth's threshold is ``mean + std`` of its candidates' IoUs, ``std`` torch's default unbiased estimator
   (divisor ``K - 1`` over the ``K`` candidates of all levels; a single candidate gives ``NaN``, and no positive).
5. A candidate is positive when its ``IoU >= threshold`` and its anchor's centre lies inside the truth by more
   than 0.01 px: ``min(cx - x1, cy - y1, x2 - cx, y2 - cy) > 0.01`` (an absolute margin in pixels).
6. An anchor positive for several truths goes to the one of those with the highest IoU (the others are filled
   with ``-inf``; equal IoUs go to the lowest truth index, ``torch.max``'s tie rule).

mmdetection's ``ignore_iof_thr`` (ignored truth boxes) is off by default and not implemented here; neither is DDOD's
``alpha`` cost. The class target is one-hot.

mmyolo's ``BatchATSSAssigner`` (``mmyolo/models/task_modules/assigners/batch_atss_assigner.py``, a port of YOLOv6's
``yolov6/assigners/atss_assigner.py``, used with YOLOv6's anchor-free head) differs:

- its anchors are not the head's: each point gets a square box of side ``5 * stride`` (``cell_half_size =
  stride * 2.5``);
- the threshold test is strict, ``IoU > mean + std``;
- the centre-inside test uses a margin of ``1e-9`` rather than 0.01 px;
- an anchor claimed by several truths goes to ``argmax`` of its IoU over *all* the image's truths (padding
  included), not only over those that selected it, so it can end up with a truth for which it was no candidate;
- its class target is soft: one-hot times the IoU of the *predicted* box with the assigned truth, when the
  predictions are passed (so it does read predictions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from yolo_loss.losses.assigners import Assignment

# mmdetection's margin (pixels) by which a positive's anchor centre must lie inside its truth.
CENTRE_MARGIN = 0.01
# mmdetection's bbox_overlaps clamps the union from below by this.
UNION_EPS = 1e-6


def _box_centres(boxes_xyxy: Tensor) -> Tensor:
    """``Tensor[..., 4]`` xyxy -> ``Tensor[..., 2]`` centres ``((x1 + x2) / 2, (y1 + y2) / 2)``."""
    return (boxes_xyxy[..., :2] + boxes_xyxy[..., 2:]) / 2


def _anchor_truth_iou(anchor_boxes: Tensor, truth_boxes: Tensor) -> Tensor:
    """IoU of every anchor with every truth, as mmdetection's ``bbox_overlaps`` (``mode='iou'``) computes it.

    Args:
        anchor_boxes: ``Tensor[N, 4]`` xyxy.
        truth_boxes: ``Tensor[B, M, 4]`` xyxy.

    Returns:
        ``Tensor[B, N, M]``: ``inter / max(union, 1e-6)``, the union ``area_a + area_t - inter`` in that order.
    """
    anchors = anchor_boxes[None, :, None]  # [1, N, 1, 4]
    truths = truth_boxes[:, None]  # [B, 1, M, 4]
    overlap_wh = (torch.minimum(anchors[..., 2:], truths[..., 2:])
                  - torch.maximum(anchors[..., :2], truths[..., :2])).clamp(min=0)
    inter = overlap_wh[..., 0] * overlap_wh[..., 1]
    area_anchor = (anchors[..., 2] - anchors[..., 0]) * (anchors[..., 3] - anchors[..., 1])
    area_truth = (truths[..., 2] - truths[..., 0]) * (truths[..., 3] - truths[..., 1])
    return inter / (area_anchor + area_truth - inter).clamp(min=UNION_EPS)


@torch.no_grad()
def atss_assign(anchor_boxes: Tensor, level_sizes: Sequence[int], truth_boxes: Tensor, truth_labels: Tensor,
                truth_mask: Tensor, *, num_classes: int, topk: int = 9) -> Assignment:
    """Assign truths to candidates by ATSS (mmdetection's ``ATSSAssigner``; the rule is in the module docstring).

    Args:
        anchor_boxes: ``Tensor[N, 4]`` xyxy input pixels, the candidates' anchor boxes in the package's layout
            (level, then anchor, then cell); the ``A`` anchors of a cell are ``A`` candidates of its level.
        level_sizes: the number of candidates of each level, in order; they sum to ``N``.
        truth_boxes: ``Tensor[B, M, 4]`` xyxy input pixels, padded to ``M`` per image.
        truth_labels: ``Tensor[B, M]`` int64 class indices (any value where padding).
        truth_mask: ``Tensor[B, M]`` bool, ``False`` for padding; padding is never matched and changes nothing.
        num_classes: ``C``, the width of ``cls_target``.
        topk: the candidates per level and truth (mmdetection's configs: 9).

    Returns:
        :class:`Assignment` with ``fg``, ``truth`` (index into the image's ``M`` truths) and a one-hot
        ``cls_target`` ``Tensor[B, N, C]`` of ``truth_boxes``' dtype.
    """
    num_anchors = anchor_boxes.shape[0]
    batch, max_truths = truth_mask.shape
    if sum(level_sizes) != num_anchors:
        raise ValueError(f"level_sizes {list(level_sizes)} sum to {sum(level_sizes)}, not to the {num_anchors} "
                         "anchor boxes")
    device = anchor_boxes.device
    fg = torch.zeros(batch, num_anchors, dtype=torch.bool, device=device)
    truth = torch.zeros(batch, num_anchors, dtype=torch.long, device=device)
    cls_target = torch.zeros(batch, num_anchors, num_classes, dtype=truth_boxes.dtype, device=device)
    if max_truths == 0 or num_anchors == 0 or not truth_mask.any():
        return Assignment(fg=fg, truth=truth, cls_target=cls_target)

    iou = _anchor_truth_iou(anchor_boxes, truth_boxes)  # [B, N, M]
    anchor_centres = _box_centres(anchor_boxes)  # [N, 2]
    # The square root is kept (rather than ranking squared distances) so that ties, and so topk's picks, are
    # exactly mmdetection's.
    distance = (anchor_centres[None, :, None] - _box_centres(truth_boxes)[:, None]).pow(2).sum(-1).sqrt()

    candidates_per_level = []
    start = 0
    for size in level_sizes:
        nearest = distance[:, start:start + size].topk(min(topk, size), dim=1, largest=False).indices
        candidates_per_level.append(nearest + start)
        start += size
    candidates = torch.cat(candidates_per_level, dim=1)  # [B, K, M]: anchor indices, distinct per (image, truth)

    candidate_iou = iou.gather(1, candidates)  # [B, K, M]
    threshold = candidate_iou.mean(1) + candidate_iou.std(1)  # [B, M]
    is_positive = candidate_iou >= threshold[:, None]

    centres = anchor_centres[candidates]  # [B, K, M, 2]
    margins = torch.cat([centres - truth_boxes[:, None, :, :2], truth_boxes[:, None, :, 2:] - centres], dim=-1)
    is_positive &= margins.amin(-1) > CENTRE_MARGIN
    is_positive &= truth_mask[:, None, :]

    # Each anchor's IoU with the truths it is positive for, -inf elsewhere; the best of those wins.
    positive_iou = torch.full_like(iou, float("-inf"))
    positive_iou.scatter_(1, candidates, candidate_iou.masked_fill(~is_positive, float("-inf")))
    best_iou, best_truth = positive_iou.max(dim=2)  # [B, N]
    fg = best_iou > float("-inf")
    truth = torch.where(fg, best_truth, torch.zeros_like(best_truth))
    labels = torch.where(fg, truth_labels.gather(1, truth), torch.zeros_like(truth))
    cls_target = F.one_hot(labels, num_classes).to(truth_boxes.dtype) * fg[..., None]
    return Assignment(fg=fg, truth=truth, cls_target=cls_target)
