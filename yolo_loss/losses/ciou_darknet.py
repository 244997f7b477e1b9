"""AlexeyAB's darknet CIoU box deltas: the gradient YOLOv4 actually trains with, beside the true CIoU gradient.

AB darknet (``src/yolo_layer.c`` ``delta_yolo_box``, ``src/box.c`` ``dx_box_iou``) does not differentiate its CIoU.
It writes the box deltas by hand, in the coordinates of the box normalised to the input (``x = bx / net_w``), and
applies them to the raw outputs directly:

    delta_tx = n * dx,   delta_ty = n * dy,   delta_tw = n * dw * exp(tw),   delta_th = n * dh * exp(th)

with ``n = iou_normalizer`` (yolov4.cfg 0.07) and ``(dx, dy, dw, dh)`` from ``dx_box_iou``: the IoU's derivative
over the corners (mapped to ``x, y, w, h`` without the halves of the chain rule), a centre-distance term whose
enclosing-box part has the opposite sign of the derivative of ``-rho^2 / c^2``, and the aspect term
``alpha * 8 / pi^2 (atan(w_gt / h_gt) - atan(w / h)) * (h, -w)``; where the boxes do not overlap, only the distance
and aspect terms remain. Neither the sigmoid's derivative nor the ``1 / grid`` of ``x = (i + sig(tx)) / grid``
reaches ``tx``, and the ``2 - w * h`` scale is not applied to IoU losses.

:func:`ciou_darknet_loss` is the component ``loss.box: ciou_darknet``: its value is ``1 - CIoU`` (what TensorBoard
shows, as for ``ciou``), and its gradient with respect to the raw ``tx, ty, tw, th`` is ``-delta`` per unit weight,
so that ``loss.weights.box: 0.07`` with ``reduction: sum_per_image`` gives ``B * dL/dt = -delta`` exactly as AB's
darknet does. Not reproduced: ``max_delta`` (yolov4.cfg 5), which clips each delta; use ``train.grad_clip``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from yolo_loss.boxes import ciou_loss


def darknet_ciou_delta(pred_cxcywh: Tensor, truth_cxcywh: Tensor) -> Tensor:
    """``dx_box_iou(pred, truth, CIOU)`` of AB's ``src/box.c``, vectorised: ``Tensor[..., 4]`` x ``Tensor[..., 4]``
    ``(x, y, w, h)`` normalised to the input -> ``Tensor[..., 4]`` ``(dx, dy, dw, dh)``, the direction that raises
    the CIoU. Float32 as in C (the ``atan`` terms in float64, as C's ``atan`` of a float is a double); a zero
    predicted width or height is read as 1 first, as ``delta_yolo_box`` does."""
    pred, truth = pred_cxcywh.float(), truth_cxcywh.float()
    px, py, pw, ph = pred.unbind(-1)
    pw, ph = torch.where(pw == 0, torch.ones_like(pw), pw), torch.where(ph == 0, torch.ones_like(ph), ph)
    tx, ty, tw, th = truth.unbind(-1)
    top, bot, left, right = py - ph / 2, py + ph / 2, px - pw / 2, px + pw / 2
    p_t, p_b = torch.minimum(top, bot), torch.maximum(top, bot)
    p_l, p_r = torch.minimum(left, right), torch.maximum(left, right)
    t_t, t_b, t_l, t_r = ty - th / 2, ty + th / 2, tx - tw / 2, tx + tw / 2

    area = (p_b - p_t) * (p_r - p_l)
    inter_h = torch.minimum(p_b, t_b) - torch.maximum(p_t, t_t)
    inter_w = torch.minimum(p_r, t_r) - torch.maximum(p_l, t_l)
    inter = inter_w * inter_h
    union = area + (t_b - t_t) * (t_r - t_l) - inter
    dist = (px - tx) * (px - tx) + (py - ty) * (py - ty)
    zero = torch.zeros_like(px)

    # d(IoU) over the four sides: the intersection moves with a side only where that side is the inner one.
    d_area = (-(p_r - p_l), p_r - p_l, -(p_b - p_t), p_b - p_t)  # t, b, l, r
    d_inter = (torch.where(p_t > t_t, -inter_w, zero), torch.where(p_b < t_b, inter_w, zero),
               torch.where(p_l > t_l, -inter_h, zero), torch.where(p_r < t_r, inter_h, zero))
    sides = [torch.where(union > 0, (union * di - inter * (da - di)) / (union * union), zero)
             for da, di in zip(d_area, d_inter)]
    d_t = torch.where(top < bot, sides[0], sides[1])
    d_b = torch.where(top < bot, sides[1], d_t)
    d_l = torch.where(left < right, sides[2], sides[3])
    d_r = torch.where(left < right, sides[3], d_l)

    enclosing_w = torch.maximum(px + pw / 2, tx + tw / 2) - torch.minimum(px - pw / 2, tx - tw / 2)
    enclosing_h = torch.maximum(py + ph / 2, ty + th / 2) - torch.minimum(py - ph / 2, ty - th / 2)
    c2 = enclosing_w * enclosing_w + enclosing_h * enclosing_h
    one = torch.ones_like(px)
    dcw_dx = torch.where(p_r > t_r, one, zero) - torch.where(p_l < t_l, one, zero)
    dcw_dw = torch.where(p_r > t_r, 0.5 * one, zero) - torch.where(p_l < t_l, -0.5 * one, zero)
    dch_dy = torch.where(p_b > t_b, one, zero) - torch.where(p_t < t_t, one, zero)
    dch_dh = torch.where(p_b > t_b, 0.5 * one, zero) - torch.where(p_t < t_t, -0.5 * one, zero)

    # C's order of evaluation: the ratios in float, atan and the constants in double, each result stored as float.
    atan_diff = torch.atan((tw / th).double()) - torch.atan((pw / ph).double())
    aspect = (4 / (math.pi * math.pi) * atan_diff * atan_diff).float()
    alpha = (aspect.double() / ((1 - inter / union + aspect).double() + 0.000001)).float()
    aspect_dw = (8 / (math.pi * math.pi) * atan_diff * ph.double()).float()
    aspect_dh = (-8 / (math.pi * math.pi) * atan_diff * pw.double()).float()

    c4 = c2 * c2
    distance = (((2 * (tx - px) * c2 - (2 * enclosing_w * dcw_dx) * dist) / c4),
                ((2 * (ty - py) * c2 - (2 * enclosing_h * dch_dy) * dist) / c4),
                (2 * enclosing_w * dcw_dw) * dist / c4 + alpha * aspect_dw,
                (2 * enclosing_h * dch_dh) * dist / c4 + alpha * aspect_dh)
    overlap = (d_l + d_r, d_t + d_b, d_r - d_l, d_b - d_t)
    disjoint = (inter_w <= 0) | (inter_h <= 0)
    out = [torch.where(disjoint, far, torch.where(c2 > 0, near + far, near)) for near, far in zip(overlap, distance)]
    return torch.stack(out, -1)


class _RawBoxDelta(torch.autograd.Function):
    """Zero in the forward pass; in the backward pass, ``-grad * delta`` to the raw box outputs."""

    @staticmethod
    def forward(ctx, raw_box: Tensor, delta: Tensor) -> Tensor:
        ctx.save_for_backward(delta)
        return raw_box.new_zeros(raw_box.shape[:-1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        (delta,) = ctx.saved_tensors
        return -grad[..., None] * delta.to(grad), None


def ciou_darknet_loss(pred_xyxy: Tensor, target_xyxy: Tensor, *, raw_box: Tensor, img_wh: tuple[float, float],
                      eps: float = 1e-7) -> Tensor:
    """``1 - CIoU`` in value; AB darknet's hand-written CIoU deltas in gradient (module docstring).

    Args:
        pred_xyxy, target_xyxy: ``Tensor[P, 4]`` decoded prediction and truth, input pixels (darknet's decode).
        raw_box: ``Tensor[P, 4]`` the raw ``tx, ty, tw, th`` the prediction was decoded from: the only input that
            receives a gradient.
        img_wh: the input's width and height in pixels (darknet's ``net.w, net.h``).
    """
    scale = pred_xyxy.new_tensor([img_wh[0], img_wh[1], img_wh[0], img_wh[1]])
    with torch.no_grad():
        pred = _cxcywh(pred_xyxy.detach()) / scale
        delta = darknet_ciou_delta(pred, _cxcywh(target_xyxy) / scale)
        delta = delta * torch.cat((torch.ones_like(delta[..., :2]), raw_box[..., 2:4].detach().float().exp()), -1)
        delta = torch.nan_to_num(delta, nan=0.0, posinf=0.0, neginf=0.0)  # darknet's fix_nan_inf
    return ciou_loss(pred_xyxy.detach(), target_xyxy, eps=eps) + _RawBoxDelta.apply(raw_box, delta)


def _cxcywh(boxes_xyxy: Tensor) -> Tensor:
    return torch.cat(((boxes_xyxy[..., :2] + boxes_xyxy[..., 2:]) / 2, boxes_xyxy[..., 2:] - boxes_xyxy[..., :2]), -1)
