"""SimOTA: YOLOX's simplified optimal-transport assignment (Ge et al. 2021, "YOLOX: Exceeding YOLO Series in 2021").

YOLOX's Table 2 credits it with 45.0 -> 47.3 AP on YOLOv3-DarkNet53 (640 px, COCO val). This is the rule of
``YOLOXHead.get_assignments``, ``get_geometry_constraint`` and ``simota_matching`` in
``yolox/models/yolo_head.py`` at Megvii-BaseDetection/YOLOX commit ``6ddff4824372906469a7fae2dc3206c7aa4bbaee``
(June 2025; the rule has been unchanged since ``14c62a7``, January 2023), per image:

1. Geometry. A candidate lies in a truth's centre region when its point is strictly inside the square of half-side
   ``center_radius * stride`` (1.5 strides, the candidate's own stride) around the truth's centre. This is the
   current YOLOX rule: the centre region only. (Before ``14c62a7`` it was "in the box or in a 2.5-stride centre
   region", with the penalty below on "not in both".) Candidates in no truth's region take no part at all: they
   are neither costed nor counted in the top-k below, and are never positive.
2. Cost of truth ``g`` and a remaining candidate ``n``, with ``IoU`` that of the candidate's predicted box::

       cost = BCE(p_n, one_hot(c_g)).sum over classes - iou_weight * log(IoU + 1e-8) + 1e6 * [n outside g's region]

   ``p_n`` are the ``pred_scores``: YOLOX, whose head has objectness, costs ``sqrt(sigmoid(cls) * sigmoid(obj))``,
   and it is the caller that passes that product (this function knows nothing of objectness). The class cost is
   taken in float32 (float64 stays float64) with autocast off, as YOLOX takes it.
3. Dynamic k. Truth ``g`` takes its ``k_g = max(1, int(sum of its candidate_topk largest IoUs))`` cheapest
   candidates (the top-k runs over the remaining candidates, so over ``min(candidate_topk, count)`` of them).
4. A candidate taken by several truths goes to the truth of lowest cost among all the image's truths (YOLOX takes
   the minimum over every truth, not only over those that took it; the first truth wins an exact tie).

The class target of a positive is ``one_hot(c_g) * IoU(predicted box, g)`` (YOLOX's ``pred_ious_this_matching``);
YOLOX's objectness target is ``fg``.

Several anchors per cell are simply several candidates at the same point: they share their geometry and differ
only in their predictions. (YOLOX is anchor-free, one candidate per cell.)

Where it can differ from YOLOX's code:

- Boxes. YOLOX computes the IoU from cxcywh boxes (``bboxes_iou(..., xyxy=False)``), this function from the
  xyxy boxes of the shared interface. Both are the same arithmetic on the same corners, so the values are
  bitwise equal whenever ``cx -/+ w / 2`` reproduces the corners exactly (the parity test uses such boxes);
  otherwise they differ by float rounding, which can move a candidate across an exact cost or ``int`` boundary.
- Ties. Each truth's cheapest ``k_g`` candidates come from one ``torch.topk`` per distinct ``k_g`` over the rows
  of the truths sharing it (at most ``candidate_topk`` calls, vectorised over truths and candidates), where YOLOX
  calls ``torch.topk`` once per truth. On CPU a row of a 2-D ``topk`` picks the same members among exactly equal
  costs as a 1-D ``topk`` with the same ``k``; a device whose kernels order ties differently between the two could
  pick another of several exactly equal costs at the ``k_g``-th place.
- An image whose truths all have no candidate in their regions gets no positive (YOLOX's ``topk`` would fail).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from yolo_loss.losses.assigners import Assignment

# YOLOX's constants: the IoU cost's log floor and the penalty on a candidate outside a truth's centre region
IOU_COST_EPS = 1e-8
OUTSIDE_REGION_COST = 1e6


def pairwise_iou_xyxy(a_xyxy: Tensor, b_xyxy: Tensor) -> Tensor:
    """IoU of every pair of ``Tensor[M, 4]`` and ``Tensor[K, 4]`` xyxy boxes: ``Tensor[M, K]``.

    The same operations in the same order as YOLOX's ``bboxes_iou`` (no epsilon; a pair of empty boxes would
    give NaN there, and gives 0 here).
    """
    top_left = torch.maximum(a_xyxy[:, None, :2], b_xyxy[None, :, :2])
    bottom_right = torch.minimum(a_xyxy[:, None, 2:], b_xyxy[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    area_a = (a_xyxy[:, 2:] - a_xyxy[:, :2]).prod(-1)
    area_b = (b_xyxy[:, 2:] - b_xyxy[:, :2]).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def centre_region_mask(points: Tensor, strides: Tensor, truth_xyxy: Tensor, center_radius: float) -> Tensor:
    """``Tensor[M, N]`` bool: candidate point ``n`` lies strictly inside the square of half-side
    ``center_radius * strides[n]`` around the centre of truth ``m`` (YOLOX's ``get_geometry_constraint``)."""
    truth_centre = 0.5 * (truth_xyxy[:, :2] + truth_xyxy[:, 2:])  # [M, 2]
    half_side = (strides * center_radius)[None, :, None]  # [1, N, 1]
    low = truth_centre[:, None] - half_side
    high = truth_centre[:, None] + half_side
    return torch.cat((points[None] - low, high - points[None]), dim=-1).amin(dim=-1) > 0.0


def _match_dynamic_k(cost: Tensor, iou: Tensor, candidate_topk: int) -> tuple[Tensor, Tensor]:
    """SimOTA's matching of ``M`` truths and ``K >= 1`` candidates, given ``Tensor[M, K]`` cost and IoU.

    Returns:
        ``(fg, owner)``: ``Tensor[K]`` bool, the candidate is positive; ``Tensor[K]`` int64, its truth (meaningful
        where ``fg``).
    """
    num_candidates = cost.shape[1]
    top_ious = iou.topk(min(candidate_topk, num_candidates), dim=1).values
    dynamic_k = top_ious.sum(dim=1).int().clamp(min=1)  # int() truncates, as YOLOX's
    matching = torch.zeros_like(cost, dtype=torch.bool)
    # One top-k per distinct k over the truths that share it: the members YOLOX's per-truth top-k picks, ties too
    for k in dynamic_k.unique().tolist():
        rows = (dynamic_k == k).nonzero().squeeze(1)
        chosen = cost[rows].topk(min(k, num_candidates), dim=1, largest=False).indices
        matching[rows[:, None], chosen] = True

    times_taken = matching.sum(dim=0)
    # a single match owns its column; a candidate taken twice goes to the cheapest of all truths
    owner = torch.where(times_taken > 1, cost.min(dim=0).indices, matching.to(torch.uint8).argmax(dim=0))
    return times_taken > 0, owner


@torch.no_grad()
def simota_assign(pred_scores: Tensor, pred_boxes: Tensor, points: Tensor, strides: Tensor, truth_boxes: Tensor,
                  truth_labels: Tensor, truth_mask: Tensor, *, num_classes: int, center_radius: float = 1.5,
                  candidate_topk: int = 10, iou_weight: float = 3.0) -> Assignment:
    """SimOTA assignment of a batch (YOLOX), equal to YOLOX's ``get_assignments`` (see the module docstring).

    Args:
        pred_scores: ``Tensor[B, N, C]`` the probabilities the class cost reads, in ``[0, 1]``. For a head with
            objectness, as YOLOX's, pass ``sqrt(sigmoid(cls_logit) * sigmoid(obj_logit))``.
        pred_boxes: ``Tensor[B, N, 4]`` the decoded predicted boxes, xyxy in input pixels.
        points: ``Tensor[N, 2]`` each candidate's cell centre ``((x + 0.5) * s, (y + 0.5) * s)``.
        strides: ``Tensor[N]`` each candidate's stride.
        truth_boxes: ``Tensor[B, M, 4]`` xyxy in input pixels.
        truth_labels: ``Tensor[B, M]`` int64 classes in ``[0, C)`` (read only where ``truth_mask``).
        truth_mask: ``Tensor[B, M]`` bool, ``False`` for padding.
        num_classes: ``C``.
        center_radius: half-side of the centre region, in strides of the candidate's level (YOLOX: 1.5).
        candidate_topk: how many of a truth's largest IoUs its dynamic k sums (YOLOX: 10).
        iou_weight: weight of the IoU cost ``-log(IoU + 1e-8)`` against the class cost (YOLOX: 3.0).

    Returns:
        :class:`Assignment` with ``cls_target`` ``Tensor[B, N, C]`` = ``one_hot(class) * IoU(predicted box, truth)``
        in the computation dtype: float32, or float64 when an input is float64.
    """
    batch, num_candidates, score_classes = pred_scores.shape
    if score_classes != num_classes:
        raise ValueError(f"pred_scores has {score_classes} classes, num_classes is {num_classes}")
    dtype = torch.promote_types(torch.promote_types(pred_scores.dtype, pred_boxes.dtype),
                                torch.promote_types(truth_boxes.dtype, torch.float32))
    device = pred_scores.device
    fg = torch.zeros(batch, num_candidates, dtype=torch.bool, device=device)
    truth = torch.zeros(batch, num_candidates, dtype=torch.int64, device=device)
    cls_target = torch.zeros(batch, num_candidates, num_classes, dtype=dtype, device=device)
    points, strides = points.to(dtype), strides.to(dtype)

    # F.binary_cross_entropy refuses to run under CUDA autocast; YOLOX turns it off for the same reason
    with torch.autocast(device_type=device.type, enabled=False):
        for image in range(batch):
            truth_index = truth_mask[image].nonzero().squeeze(1)  # [G] positions among the M truths
            if truth_index.numel() == 0:
                continue
            truth_xyxy = truth_boxes[image, truth_index].to(dtype)  # [G, 4]
            truth_one_hot = F.one_hot(truth_labels[image, truth_index], num_classes).to(dtype)  # [G, C]
            in_region = centre_region_mask(points, strides, truth_xyxy, center_radius)  # [G, N]
            candidates = in_region.any(dim=0).nonzero().squeeze(1)  # [K]
            if candidates.numel() == 0:
                continue
            in_region = in_region[:, candidates]

            iou = pairwise_iou_xyxy(truth_xyxy, pred_boxes[image, candidates].to(dtype))  # [G, K]
            scores = pred_scores[image, candidates].to(dtype)  # [K, C]
            num_truths, num_kept = iou.shape
            cls_cost = F.binary_cross_entropy(scores[None].expand(num_truths, -1, -1),
                                              truth_one_hot[:, None].expand(-1, num_kept, -1),
                                              reduction="none").sum(dim=-1)
            cost = (cls_cost + iou_weight * -torch.log(iou + IOU_COST_EPS)
                    + OUTSIDE_REGION_COST * (~in_region).to(dtype))

            positive, owner = _match_dynamic_k(cost, iou, candidate_topk)
            positive_index = positive.nonzero().squeeze(1)
            matched = owner[positive_index]  # [P] among the G real truths
            rows = candidates[positive_index]
            fg[image, rows] = True
            truth[image, rows] = truth_index[matched]
            cls_target[image, rows] = truth_one_hot[matched] * iou[matched, positive_index][:, None]
    return Assignment(fg=fg, truth=truth, cls_target=cls_target)
