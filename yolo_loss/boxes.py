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
from collections.abc import Callable

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


def _distance_ratio(pred_xyxy: Tensor, target_xyxy: Tensor, eps: float) -> Tensor:
    """DIoU's penalty ``rho^2 / (c^2 + eps)``, in [0, 1): ``Tensor[...]``, never negative."""
    # c^2: squared diagonal of the enclosing box; eps keeps two identical points finite.
    diagonal_sq = _enclosing_wh(pred_xyxy, target_xyxy).square().sum(-1) + eps
    pred_xyxy, target_xyxy = _upcast(pred_xyxy), _upcast(target_xyxy)
    # rho^2: squared distance between the centres; (x1 + x2)/2 differences, the halves taken once.
    centre_dist_sq = (0.5 * (pred_xyxy[..., :2] + pred_xyxy[..., 2:]
                             - target_xyxy[..., :2] - target_xyxy[..., 2:])).square().sum(-1)
    return centre_dist_sq / diagonal_sq


def _diou_loss_and_iou(pred_xyxy: Tensor, target_xyxy: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(1 - IoU + rho^2 / c^2, IoU)``: CIoU needs the IoU again for its trade-off weight."""
    inter, union = _inter_union(pred_xyxy, target_xyxy)
    iou = inter / (union + eps)
    return 1.0 - iou + _distance_ratio(pred_xyxy, target_xyxy, eps), iou


def diou_loss(pred_xyxy: Tensor, target_xyxy: Tensor, *, eps: float = 1e-7) -> Tensor:
    """``1 - DIoU = 1 - IoU + rho^2 / c^2`` (Zheng et al., "Distance-IoU Loss", AAAI 2020).

    ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``, in [0, 2). ``rho`` is the distance between
    the box centres, ``c`` the diagonal of the smallest enclosing box (``c^2 + eps`` in the division);
    equals ``torchvision.ops.distance_box_iou_loss``.

    Example: a = (0, 0, 2, 2), b = (1, 1, 3, 3): centres (1, 1) and (2, 2) so rho^2 = 2; the enclosing box
    is 3 x 3 so c^2 = 18; the loss is ``1 - 1/7 + 2/18 = 0.9683``.
    """
    return _diou_loss_and_iou(pred_xyxy, target_xyxy, eps)[0]


def _aspect_term(pred_xyxy: Tensor, target_xyxy: Tensor, eps: float) -> Tensor:
    """CIoU's ``v = 4 / pi^2 * (atan(w_gt / h_gt) - atan(w / h))^2``, heights ``+ eps`` (finite at zero height)."""
    pred_wh = pred_xyxy[..., 2:] - pred_xyxy[..., :2]
    target_wh = target_xyxy[..., 2:] - target_xyxy[..., :2]
    return (4.0 / math.pi ** 2) * (torch.atan(target_wh[..., 0] / (target_wh[..., 1] + eps))
                                   - torch.atan(pred_wh[..., 0] / (pred_wh[..., 1] + eps))).square()


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
    v = _aspect_term(pred_xyxy, target_xyxy, eps)
    with torch.no_grad():
        # alpha trades the aspect term off against overlap; the paper treats it as a constant in the gradient.
        alpha = v / (1.0 - iou + v + eps)
    return diou + alpha * v


# Alpha-IoU's powers below 1: a base below this keeps its value but has no gradient (see _power).
POWER_GRADIENT_FLOOR = 1e-20


def _power(base: Tensor, power: float) -> Tensor:
    """``base^power`` for a ``base`` in [0, 1] (negatives read as 0), with a finite gradient for every ``power > 0``.

    ``power >= 1``: ``base.clamp(min=0).pow(power)``, whose derivative ``power * base^(power - 1)`` is finite on
    [0, 1]. ``power < 1``: that derivative is infinite at 0, and ``inf * 0`` (the base's own zero derivative there,
    as for IoU = 0 of disjoint boxes, rho = 0 of concentric ones or v = 0 of equal aspect ratios) is NaN; so a base
    below :data:`POWER_GRADIENT_FLOOR` (1e-20) keeps its exact value ``base^power`` but has no gradient, and one at or
    above it has its derivative, below ``1e20`` (finite in float32 even times an AMP loss scale). What lies between 0
    and the floor is negligible: rho^2 / c^2 = 1e-20 is a centre offset of 1e-10 of the enclosing diagonal, beta v =
    1e-20 an aspect-angle difference under 2e-5 rad, and an IoU of 1e-20 does not come out of float32 pixel boxes.
    Unlike adding a small number to the base (as the authors' code does), the value is never moved.
    """
    if power >= 1.0:
        return base.clamp(min=0).pow(power)
    kept = base >= POWER_GRADIENT_FLOOR
    return torch.where(kept, base.clamp(min=POWER_GRADIENT_FLOOR).pow(power), base.detach().clamp(min=0).pow(power))


def alpha_ciou_loss(pred_xyxy: Tensor, target_xyxy: Tensor, *, power: float = 3.0, eps: float = 1e-7) -> Tensor:
    """Alpha-CIoU (He et al., "Alpha-IoU: A Family of Power Intersection over Union Losses", NeurIPS 2021):
    ``1 - IoU^a + (rho^2 / c^2)^a + (beta v)^a`` with ``beta = v / (1 - IoU + v)`` (no gradient), ``a = power``.

    ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``. The paper's form: the power on IoU and on each
    penalty term (``rho^(2a) / c^(2a)`` is the power of the normalised distance); the authors' released code raises
    the x and y distances to ``2a`` separately, which differs for ``a != 1``. ``power = 1`` is :func:`ciou_loss`
    exactly. Example: a = (0, 0, 2, 2), b = (1, 1, 3, 3) (square boxes: v = 0), a = 3:
    ``1 - (1/7)^3 + (2/18)^3 = 0.99846``.

    Every base is in [0, 1] and computed as such: ``rho^2 / c^2`` directly (recovering it as ``DIoU - 1 + IoU`` can
    give -3e-8 by float32 cancellation, and a negative number to a non-integer power is NaN). Value and gradient
    are finite for every ``power > 0``: below 1, a base under 1e-20 (IoU of disjoint boxes, the distance of concentric
    ones, v of equal aspect ratios) keeps its exact value with no gradient (:func:`_power`). The authors'
    code (Jacobi93/Alpha-IoU, ``bbox_alpha_iou``) instead adds 1e-9 to the IoU and aspect bases, which moves the
    value (by 3e-5 at IoU = 0, ``a = 0.5``). For ``power >= 1`` the operations are those of before apart from the
    distance, which only loses its cancellation error: at ``power = 3`` value and gradient agree to float rounding.
    """
    pred_xyxy, target_xyxy = _upcast(pred_xyxy), _upcast(target_xyxy)
    inter, union = _inter_union(pred_xyxy, target_xyxy)
    iou = inter / (union + eps)
    distance = _distance_ratio(pred_xyxy, target_xyxy, eps)  # rho^2 / c^2, >= 0
    v = _aspect_term(pred_xyxy, target_xyxy, eps)
    with torch.no_grad():
        beta = v / (1.0 - iou + v + eps)
    return 1.0 - _power(iou, power) + _power(distance, power) + _power(beta * v, power)


def eiou_loss(pred_xyxy: Tensor, target_xyxy: Tensor, *, eps: float = 1e-7) -> Tensor:
    """``1 - IoU + rho^2 / c^2 + (w - w_gt)^2 / C_w^2 + (h - h_gt)^2 / C_h^2`` (Zhang et al., "Focal and Efficient IOU
    Loss for Accurate Bounding Box Regression", 2021): DIoU with the aspect term of CIoU replaced by the width and
    height differences over the enclosing box's width ``C_w`` and height ``C_h``.

    ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``. Example: a = (0, 0, 2, 2), b = (1, 1, 4, 3): IoU
    1/9; centres (1, 1), (2.5, 2): rho^2 = 3.25; enclosing 4 x 3, c^2 = 25; w 2 vs 3 over 4, h 2 vs 2: the loss is
    ``1 - 1/9 + 0.13 + 1/16 = 1.0814``.
    """
    pred_xyxy, target_xyxy = _upcast(pred_xyxy), _upcast(target_xyxy)
    diou, _ = _diou_loss_and_iou(pred_xyxy, target_xyxy, eps)
    enclosing_wh = _enclosing_wh(pred_xyxy, target_xyxy)
    difference_wh = (pred_xyxy[..., 2:] - pred_xyxy[..., :2]) - (target_xyxy[..., 2:] - target_xyxy[..., :2])
    return diou + (difference_wh.square() / (enclosing_wh.square() + eps)).sum(-1)


def focal_eiou_loss(pred_xyxy: Tensor, target_xyxy: Tensor, *, gamma: float = 0.5, eps: float = 1e-7) -> Tensor:
    """Focal-EIoU (Zhang et al. 2021): ``IoU^gamma * EIoU``, the IoU as a weight (no gradient through it, as the
    paper's re-weighting of high-quality boxes): well-overlapping boxes weigh more, poor ones less.
    ``gamma = 0`` is :func:`eiou_loss`. ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``."""
    with torch.no_grad():
        weight = box_iou_pairwise(pred_xyxy, target_xyxy, eps).clamp(min=0).pow(gamma)
    return weight * eiou_loss(pred_xyxy, target_xyxy, eps=eps)


def siou_loss(pred_xyxy: Tensor, target_xyxy: Tensor, *, theta: float = 4.0, eps: float = 1e-7) -> Tensor:
    """SIoU (Gevorgyan, "SIoU Loss: More Powerful Learning for Bounding Box Regression", 2022):
    ``1 - IoU + (Delta + Omega) / 2``.

    ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``, with, for the centre offset ``(dx, dy)``:

        Lambda = sin(2 a), a the angle of the offset to the nearer axis (0 on an axis, 1 at 45 degrees)
        Delta  = sum_{t = x, y} (1 - exp(-(2 - Lambda) (d_t / C_t)^2)),   C: the enclosing box's width, height
        Omega  = sum_{t = w, h} (1 - exp(-|t - t_gt| / max(t, t_gt)))^theta

    The angle is taken from ``min(|dx|, |dy|) / (|d| + eps)``, which is below ``sin(45)``, where ``arcsin`` is
    smooth; coincident centres give a = 0. Example: a = (0, 0, 2, 2), b = (1, 1, 3, 3): IoU 1/7, the offset at 45
    degrees (Lambda = 1), Delta = 2 (1 - exp(-1/9)), Omega = 0: the loss is ``1 - 1/7 + 0.10516 = 0.96230``.
    """
    pred_xyxy, target_xyxy = _upcast(pred_xyxy), _upcast(target_xyxy)
    inter, union = _inter_union(pred_xyxy, target_xyxy)
    iou = inter / (union + eps)
    offset = 0.5 * (target_xyxy[..., :2] + target_xyxy[..., 2:] - pred_xyxy[..., :2] - pred_xyxy[..., 2:])
    distance = torch.sqrt(offset.square().sum(-1) + eps * eps)
    sin_angle = offset.abs().amin(-1) / (distance + eps)
    angle_cost = torch.sin(2.0 * torch.arcsin(sin_angle))
    enclosing_wh = _enclosing_wh(pred_xyxy, target_xyxy)
    distance_cost = (1.0 - torch.exp(-(2.0 - angle_cost)[..., None]
                                     * (offset / (enclosing_wh + eps)).square())).sum(-1)
    pred_wh, target_wh = pred_xyxy[..., 2:] - pred_xyxy[..., :2], target_xyxy[..., 2:] - target_xyxy[..., :2]
    omega = (pred_wh - target_wh).abs() / (torch.maximum(pred_wh, target_wh) + eps)
    shape_cost = (1.0 - torch.exp(-omega)).pow(theta).sum(-1)
    return 1.0 - iou + 0.5 * (distance_cost + shape_cost)


def wiou_loss(pred_xyxy: Tensor, target_xyxy: Tensor, *, iou_mean: Tensor | float, alpha: float = 1.9,
              delta: float = 3.0, eps: float = 1e-7) -> Tensor:
    """Wise-IoU v3 (Tong et al., "Wise-IoU: Bounding Box Regression Loss with Dynamic Focusing Mechanism", 2023):
    ``r * R * L_IoU`` with

        L_IoU = 1 - IoU
        R     = exp(rho^2 / (W_g^2 + H_g^2)*)            distance attention, the enclosing box's size detached
        beta  = L_IoU* / iou_mean                        the outlier degree (no gradient)
        r     = beta / (delta * alpha^(beta - delta))    non-monotonic focusing: most weight to ordinary boxes

    ``iou_mean`` is the running mean of ``L_IoU``, which the criterion keeps as its state, updated with momentum
    ``wiou_momentum`` and the current mean before it is used, as the authors' code does: once per training step over
    all levels (``wiou_update: step``, the default) or, as the authors' code called per level by a YOLOv5 loss, before
    each level's loss with that level's mean (``wiou_update: level``). ``Tensor[..., 4]`` x
    ``Tensor[..., 4]`` -> ``Tensor[...]``. Example: a = (0, 0, 2, 2), b = (1, 1, 3, 3), iou_mean 6/7: L_IoU 6/7,
    R = exp(2/18), beta = 1, r = 1 / (3 * 1.9^-2) = 1.2033: the loss is ``1.2033 * 1.1175 * 0.8571 = 1.1527``.
    """
    pred_xyxy, target_xyxy = _upcast(pred_xyxy), _upcast(target_xyxy)
    inter, union = _inter_union(pred_xyxy, target_xyxy)
    iou_loss_value = 1.0 - inter / (union + eps)
    centre = 0.5 * (target_xyxy[..., :2] + target_xyxy[..., 2:] - pred_xyxy[..., :2] - pred_xyxy[..., 2:])
    attention = torch.exp(centre.square().sum(-1) / (_enclosing_wh(pred_xyxy, target_xyxy).square().sum(-1)
                                                     + eps).detach())
    with torch.no_grad():
        beta = iou_loss_value / iou_mean
        focus = beta / (delta * torch.pow(torch.as_tensor(alpha, dtype=beta.dtype), beta - delta))
    return focus * attention * iou_loss_value


def nwd_loss(pred_xyxy: Tensor, target_xyxy: Tensor, *, constant: float = 12.8, eps: float = 1e-7) -> Tensor:
    """``1 - NWD`` (Wang et al., "A Normalized Gaussian Wasserstein Distance for Tiny Object Detection", 2021).

    ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``, in [0, 1). Each box is the 2-D Gaussian
    ``N((cx, cy), diag(w^2 / 4, h^2 / 4))``; between two such Gaussians

        W2^2 = (cx - cx_gt)^2 + (cy - cy_gt)^2 + ((w - w_gt)^2 + (h - h_gt)^2) / 4
        NWD  = exp(-sqrt(W2^2) / C)

    with ``C = constant`` in the boxes' units (input pixels here; the authors' 12.8 px is AI-TOD's average object
    size). Not an IoU: it needs no overlap, and disjoint boxes keep a gradient. The square root is taken of
    ``W2^2 + eps^2`` so that identical boxes have a zero gradient rather than ``0 / 0``; the authors' code
    (jwwangchn/NWD, ``wasserstein_loss``) adds ``eps`` itself (1e-7 px^2), which puts identical boxes at
    ``1 - exp(-sqrt(1e-7) / C) = 2.5e-5`` instead of 0. Example: a = (0, 0, 2, 2), b = (1, 1, 3, 3): W2^2 = 2,
    the loss is ``1 - exp(-sqrt(2) / 12.8) = 0.10460``.
    """
    pred_xyxy, target_xyxy = _upcast(pred_xyxy), _upcast(target_xyxy)
    centre = 0.5 * (pred_xyxy[..., :2] + pred_xyxy[..., 2:] - target_xyxy[..., :2] - target_xyxy[..., 2:])
    difference_wh = (pred_xyxy[..., 2:] - pred_xyxy[..., :2]) - (target_xyxy[..., 2:] - target_xyxy[..., :2])
    wasserstein_sq = centre.square().sum(-1) + 0.25 * difference_wh.square().sum(-1)
    return 1.0 - torch.exp(-torch.sqrt(wasserstein_sq + eps * eps) / constant)


def mpdiou_loss(pred_xyxy: Tensor, target_xyxy: Tensor, *, img_wh: tuple[float, float], eps: float = 1e-7) -> Tensor:
    """``1 - MPDIoU = 1 - IoU + d1^2 / (w^2 + h^2) + d2^2 / (w^2 + h^2)`` (Ma and Xu, "MPDIoU: A Loss for Efficient
    and Accurate Bounding Box Regression", 2023).

    ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``. ``d1``, ``d2``: the distances between the top-left
    corners and between the bottom-right corners; ``w, h = img_wh``: the INPUT image's width and height, in the
    boxes' units (input pixels: the criterion passes the batch's input size, which multi-scale training changes),
    not the enclosing box. Example: a = (0, 0, 2, 2), b = (1, 1, 3, 3), a 10 x 10 image: d1^2 = d2^2 = 2, the loss
    is ``1 - 1/7 + 4/200 = 0.87714``.
    """
    pred_xyxy, target_xyxy = _upcast(pred_xyxy), _upcast(target_xyxy)
    inter, union = _inter_union(pred_xyxy, target_xyxy)
    iou = inter / (union + eps)
    corner_dist_sq = (pred_xyxy - target_xyxy).square().sum(-1)  # d1^2 + d2^2
    return 1.0 - iou + corner_dist_sq / (float(img_wh[0]) ** 2 + float(img_wh[1]) ** 2)


def shape_iou_loss(pred_xyxy: Tensor, target_xyxy: Tensor, *, scale: float = 0.0, eps: float = 1e-7) -> Tensor:
    """``1 - Shape-IoU = 1 - IoU + distance^shape + 0.5 Omega^shape`` (Zhang and Zhang, "Shape-IoU: More Accurate
    Metric considering Bounding Box Shape and Scale", 2023, arXiv 2312.17663), with, from the TARGET's shape:

        ww = 2 w_gt^scale / (w_gt^scale + h_gt^scale),   hh = 2 h_gt^scale / (w_gt^scale + h_gt^scale)
        distance^shape = (hh (cx - cx_gt)^2 + ww (cy - cy_gt)^2) / c^2         c: the enclosing box's diagonal
        Omega^shape    = sum_{t = w, h} (1 - exp(-omega_t))^4,
                         omega_w = hh |w - w_gt| / max(w, w_gt),  omega_h = ww |h - h_gt| / max(h, h_gt)

    ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``. ``scale`` (the authors' default 0, where
    ``ww = hh = 1``) grows with the size of the data set's objects. As the authors' ``shape_iou``
    (malagoutou/Shape-IoU) with ``eps`` added to ``max(w, w_gt)`` and ``max(h, h_gt)`` (zero-width pairs) and the
    ``ww, hh`` denominator clamped at ``eps`` (a zero-size target at ``scale > 0``): no finite value changes.
    Example: a = (0, 0, 2, 2), b = (1, 1, 3, 3), any scale (square target: ww = hh = 1): rho^2 = 2, c^2 = 18,
    equal sizes: the loss is ``1 - 1/7 + 2/18 = 0.96825``.
    """
    pred_xyxy, target_xyxy = _upcast(pred_xyxy), _upcast(target_xyxy)
    inter, union = _inter_union(pred_xyxy, target_xyxy)
    iou = inter / (union + eps)
    pred_wh, target_wh = pred_xyxy[..., 2:] - pred_xyxy[..., :2], target_xyxy[..., 2:] - target_xyxy[..., :2]
    target_wh_power = target_wh.pow(scale)
    # (ww, hh): the weights of the y and the x distance (x is weighted by the target's height share, y by its width's)
    shape_weight = 2.0 * target_wh_power / target_wh_power.sum(-1, keepdim=True).clamp(min=eps)
    ww, hh = shape_weight.unbind(-1)
    offset_sq = (0.5 * (pred_xyxy[..., :2] + pred_xyxy[..., 2:] - target_xyxy[..., :2] - target_xyxy[..., 2:])).square()
    diagonal_sq = _enclosing_wh(pred_xyxy, target_xyxy).square().sum(-1) + eps
    distance = (hh * offset_sq[..., 0] + ww * offset_sq[..., 1]) / diagonal_sq
    omega = (pred_wh - target_wh).abs() / (torch.maximum(pred_wh, target_wh) + eps)
    omega = omega * torch.stack((hh, ww), -1)
    shape_cost = (1.0 - torch.exp(-omega)).pow(4).sum(-1)
    return 1.0 - iou + distance + 0.5 * shape_cost


# --- IoU modifiers: Inner-IoU and Focaler-IoU, for the box losses of the form 1 - IoU + (penalties) -------------------

def inner_iou(pred_xyxy: Tensor, target_xyxy: Tensor, *, ratio: float, eps: float = 1e-7) -> Tensor:
    """Inner-IoU (Zhang et al., "Inner-IoU: More Effective Intersection over Union Loss with Auxiliary Bounding
    Box", 2023, arXiv 2311.02877): the IoU of the auxiliary boxes, each box scaled by ``ratio`` about its centre
    (``ratio < 1``: smaller auxiliary boxes, for high-IoU samples; ``> 1``: larger, for low-IoU ones; 1: the IoU).

    ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``. Example: a = (0, 0, 2, 2), b = (1, 1, 3, 3),
    ratio 0.5: the auxiliary boxes (0.5, 0.5, 1.5, 1.5) and (1.5, 1.5, 2.5, 2.5) touch at a corner: 0;
    ratio 1.5: (-0.5, -0.5, 2.5, 2.5) and (0.5, 0.5, 3.5, 3.5): 4 / (9 + 9 - 4) = 2/7.
    """
    return box_iou_pairwise(_scaled_about_centre(pred_xyxy, ratio), _scaled_about_centre(target_xyxy, ratio), eps)


def _scaled_about_centre(boxes_xyxy: Tensor, ratio: float) -> Tensor:
    """The boxes with their width and height times ``ratio``, centres kept: ``Tensor[..., 4]`` xyxy."""
    boxes_xyxy = _upcast(boxes_xyxy)
    centre = 0.5 * (boxes_xyxy[..., :2] + boxes_xyxy[..., 2:])
    half_wh = 0.5 * (boxes_xyxy[..., 2:] - boxes_xyxy[..., :2])
    return torch.cat((centre - ratio * half_wh, centre + ratio * half_wh), -1)


def focaler_iou(iou: Tensor, *, d: float, u: float) -> Tensor:
    """Focaler-IoU (Zhang and Zhang, "Focaler-IoU: More Focused Intersection over Union Loss", 2024,
    arXiv 2401.10525): ``clamp((IoU - d) / (u - d), 0, 1)``, a linear map of ``[d, u]`` onto [0, 1] (``0 <= d < u
    <= 1``): ``d > 0`` stops pulling the samples below IoU d, ``u < 1`` those above u (the authors' code comment:
    d = 0, u = 0.95). ``Tensor[...]`` -> ``Tensor[...]``. Example: IoU 1/7 with d = 0, u = 0.5: 2/7."""
    return ((iou - d) / (u - d)).clamp(0.0, 1.0)


def modified_iou_loss(loss: Callable[..., Tensor], pred_xyxy: Tensor, target_xyxy: Tensor, *, inner_ratio: float = 1.0,
                      focaler_d: float = 0.0, focaler_u: float = 1.0, eps: float = 1e-7, **loss_keywords) -> Tensor:
    """A box loss ``L = 1 - IoU + P`` with its IoU replaced by Inner-IoU and/or Focaler-IoU: ``L + IoU - IoU'``,
    the form both papers give (Inner-IoU: ``L_Inner-X = L_X + IoU - IoU^inner``; Focaler-IoU:
    ``L_Focaler-X = L_X + IoU - IoU^focaler``; X = GIoU, DIoU, CIoU, EIoU, SIoU), as the authors' code computes it
    (malagoutou/Inner-IoU ``inner_ciou``: ``inner_iou - (rho2 / c2 + v * alpha)``, CIoU's alpha from the plain IoU).

    ``IoU' = focaler(inner(IoU))``: the IoU of the auxiliary boxes (:func:`inner_iou`, ``inner_ratio``), then
    mapped by :func:`focaler_iou` (``focaler_d``, ``focaler_u``); either at its off value (ratio 1, [0, 1]) is the
    identity. ``loss`` is called as ``loss(pred_xyxy, target_xyxy, **loss_keywords)``; only the IoU term changes:
    the penalties ``P`` keep the original boxes. ``Tensor[..., 4]`` x ``Tensor[..., 4]`` -> ``Tensor[...]``.
    Example: a = (0, 0, 2, 2), b = (1, 1, 3, 3), GIoU (1.0794), ratio 1.5 (inner IoU 2/7): ``1.0794 + 1/7 - 2/7``.
    """
    iou = box_iou_pairwise(pred_xyxy, target_xyxy, eps)
    modified = inner_iou(pred_xyxy, target_xyxy, ratio=inner_ratio, eps=eps) if inner_ratio != 1.0 else iou
    if (focaler_d, focaler_u) != (0.0, 1.0):
        modified = focaler_iou(modified, d=focaler_d, u=focaler_u)
    return loss(pred_xyxy, target_xyxy, **loss_keywords) + iou - modified
