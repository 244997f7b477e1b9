"""Box formats and the IoU family of box losses.

The internal box format is ``xyxy`` (corners ``x1, y1, x2, y2`` with ``x1 <= x2`` and ``y1 <= y2``);
``cxcywh`` (centre, width, height) is what the head decodes to, and the two converters below are the only
place the formats change.

Every function is elementwise over the leading dimensions and broadcasts them, so ``a[:, None]`` against
``b[None]`` gives the ``N x M`` matrix. No weights and no reduction are applied here: the criterion does that.
The losses are built by composition, as torchvision's ``ops/giou_loss.py``, ``diou_loss.py`` and
``ciou_loss.py`` are: one intersection/union helper, IoU on it, GIoU and DIoU on IoU plus the enclosing box,
CIoU on DIoU. With ``eps=1e-7`` the values equal torchvision's; unlike torchvision (which divides by ``h``
directly), CIoU's aspect ratio is ``w / (h + eps)`` so that zero-height boxes keep finite gradients
(ultralytics does the same).

Degenerate boxes (zero area, disjoint, identical, one inside the other) give finite values and gradients.
Integer and half-precision boxes are computed in float32, since areas in input pixels (416^2 = 173056)
overflow float16.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes_cxcywh: Tensor) -> Tensor:
    """``Tensor[..., 4]`` (cx, cy, w, h) -> ``Tensor[..., 4]`` (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes_xyxy: Tensor) -> Tensor:
    """``Tensor[..., 4]`` (x1, y1, x2, y2) -> ``Tensor[..., 4]`` (cx, cy, w, h)."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    return torch.stack((0.5 * (x1 + x2), 0.5 * (y1 + y2), x2 - x1, y2 - y1), dim=-1)


def _upcast(boxes: Tensor) -> Tensor:
    # Areas in pixels squared overflow float16 and integer division truncates: compute those in float32.
    return boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()


def _inter_union(a_xyxy: Tensor, b_xyxy: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection and union areas of broadcastable ``Tensor[..., 4]`` xyxy pairs, each ``Tensor[...]``.

    The overlap widths are clamped at 0, so disjoint boxes give an intersection of exactly 0 and no gradient
    through it (the same values and gradients as torchvision's masked ``_loss_inter_union``).
    """
    a_xyxy, b_xyxy = _upcast(a_xyxy), _upcast(b_xyxy)
    overlap_wh = (torch.minimum(a_xyxy[..., 2:], b_xyxy[..., 2:])
                  - torch.maximum(a_xyxy[..., :2], b_xyxy[..., :2])).clamp(min=0)
    inter = overlap_wh[..., 0] * overlap_wh[..., 1]
    area_a = (a_xyxy[..., 2] - a_xyxy[..., 0]) * (a_xyxy[..., 3] - a_xyxy[..., 1])
    area_b = (b_xyxy[..., 2] - b_xyxy[..., 0]) * (b_xyxy[..., 3] - b_xyxy[..., 1])
    return inter, area_a + area_b - inter


def _enclosing_wh(a_xyxy: Tensor, b_xyxy: Tensor) -> Tensor:
    """``Tensor[..., 2]`` width and height of the smallest box enclosing both boxes of each pair."""
    a_xyxy, b_xyxy = _upcast(a_xyxy), _upcast(b_xyxy)
    return torch.maximum(a_xyxy[..., 2:], b_xyxy[..., 2:]) - torch.minimum(a_xyxy[..., :2], b_xyxy[..., :2])


def box_iou_pairwise(a_xyxy: Tensor, b_xyxy: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of broadcastable pairs: ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``.

    ``IoU = |A & B| / (|A | B| + eps)``; the ``eps`` makes two zero-area boxes give 0 rather than 0 / 0.
    ``box_iou_pairwise(a[:, None], b[None])`` is ``torchvision.ops.box_iou(a, b)`` (``Tensor[N, M]``).

    Example: a = (0, 0, 2, 2), b = (1, 1, 3, 3): intersection 1, union 4 + 4 - 1 = 7, IoU = 1/7.
    """
    inter, union = _inter_union(a_xyxy, b_xyxy)
    return inter / (union + eps)


def iou_loss(pred_xyxy: Tensor, target_xyxy: Tensor, *, eps: float = 1e-7) -> Tensor:
    """``1 - IoU``: ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``.

    Its gradient is zero for disjoint boxes (the motivation for GIoU and DIoU).
    """
    return 1.0 - box_iou_pairwise(pred_xyxy, target_xyxy, eps)


def log_iou_loss(pred_xyxy: Tensor, target_xyxy: Tensor, *, eps: float = 1e-7) -> Tensor:
    """``-ln IoU`` (UnitBox; Yu et al., "UnitBox: An Advanced Object Detection Network", 2016).

    ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``. IoU is clamped at ``eps`` so that disjoint
    boxes give ``-ln eps`` (16.1 for 1e-7) with zero gradient instead of ``inf``.

    Example: a = (0, 0, 2, 2), b = (1, 1, 3, 3): ``-ln(1/7) = ln 7 = 1.9459``.
    """
    return -box_iou_pairwise(pred_xyxy, target_xyxy, eps).clamp(min=eps).log()


def giou_loss(pred_xyxy: Tensor, target_xyxy: Tensor, *, eps: float = 1e-7) -> Tensor:
    """``1 - GIoU`` (Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019).

    ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``, in [0, 2).
    ``GIoU = IoU - (|C| - |A | B|) / (|C| + eps)`` with ``C`` the smallest enclosing box; equals
    ``torchvision.ops.generalized_box_iou_loss``.

    Example: a = (0, 0, 2, 2), b = (1, 1, 3, 3): C is 3 x 3 = 9, union 7, so
    ``GIoU = 1/7 - (9 - 7)/9 = -0.0794`` and the loss is 1.0794.
    """
    inter, union = _inter_union(pred_xyxy, target_xyxy)
    iou = inter / (union + eps)
    enclosing_wh = _enclosing_wh(pred_xyxy, target_xyxy)
    enclosing_area = enclosing_wh[..., 0] * enclosing_wh[..., 1]
    return 1.0 - (iou - (enclosing_area - union) / (enclosing_area + eps))


def _diou_loss_and_iou(pred_xyxy: Tensor, target_xyxy: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(1 - IoU + rho^2 / c^2, IoU)``: CIoU needs the IoU again for its trade-off weight."""
    inter, union = _inter_union(pred_xyxy, target_xyxy)
    iou = inter / (union + eps)
    # c^2: squared diagonal of the enclosing box; eps keeps two identical points finite.
    diagonal_sq = _enclosing_wh(pred_xyxy, target_xyxy).square().sum(-1) + eps
    pred_xyxy, target_xyxy = _upcast(pred_xyxy), _upcast(target_xyxy)
    # rho^2: squared distance between the centres; (x1 + x2)/2 differences, the halves taken once.
    centre_dist_sq = (0.5 * (pred_xyxy[..., :2] + pred_xyxy[..., 2:]
                             - target_xyxy[..., :2] - target_xyxy[..., 2:])).square().sum(-1)
    return 1.0 - iou + centre_dist_sq / diagonal_sq, iou


def diou_loss(pred_xyxy: Tensor, target_xyxy: Tensor, *, eps: float = 1e-7) -> Tensor:
    """``1 - DIoU = 1 - IoU + rho^2 / c^2`` (Zheng et al., "Distance-IoU Loss", AAAI 2020).

    ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``, in [0, 2). ``rho`` is the distance between
    the box centres, ``c`` the diagonal of the smallest enclosing box (``c^2 + eps`` in the division);
    equals ``torchvision.ops.distance_box_iou_loss``.

    Example: a = (0, 0, 2, 2), b = (1, 1, 3, 3): centres (1, 1) and (2, 2) so rho^2 = 2; the enclosing box
    is 3 x 3 so c^2 = 18; the loss is ``1 - 1/7 + 2/18 = 0.9683``.
    """
    return _diou_loss_and_iou(pred_xyxy, target_xyxy, eps)[0]


def ciou_loss(pred_xyxy: Tensor, target_xyxy: Tensor, *, eps: float = 1e-7) -> Tensor:
    """``1 - CIoU = 1 - IoU + rho^2 / c^2 + alpha * v`` (Zheng et al., "Distance-IoU Loss", AAAI 2020).

    ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``, with

        v     = 4 / pi^2 * (atan(w_gt / h_gt) - atan(w / h))^2
        alpha = v / (1 - IoU + v + eps)        (no gradient, as in torchvision and ultralytics)

    Heights get ``+ eps`` inside the ratios so that a zero-height box has a finite gradient (``atan(w / 0)``
    has the value pi/2 but a NaN gradient). Equals ``torchvision.ops.complete_box_iou_loss`` up to that eps.
    When the two aspect ratios are equal, ``v = 0`` and CIoU is DIoU.
    """
    pred_xyxy, target_xyxy = _upcast(pred_xyxy), _upcast(target_xyxy)
    diou, iou = _diou_loss_and_iou(pred_xyxy, target_xyxy, eps)
    pred_wh = pred_xyxy[..., 2:] - pred_xyxy[..., :2]
    target_wh = target_xyxy[..., 2:] - target_xyxy[..., :2]
    v = (4.0 / math.pi ** 2) * (torch.atan(target_wh[..., 0] / (target_wh[..., 1] + eps))
                                - torch.atan(pred_wh[..., 0] / (pred_wh[..., 1] + eps))).square()
    with torch.no_grad():
        # alpha trades the aspect term off against overlap; the paper treats it as a constant in the gradient.
        alpha = v / (1.0 - iou + v + eps)
    return diou + alpha * v

