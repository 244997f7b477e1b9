"""The decode of YOLO head outputs, shared by the loss and by inference.

A head map for one level is ``Tensor[B, A * (5 + C), H, W]`` with the channels grouped per anchor as
``tx, ty, tw, th, to, tc_0 .. tc_{C-1}``. At cell (i, j) (i along x, j along y) the box in input pixels is, by
the head description's rule (:class:`~yolo_loss.head.HeadSpec` ``decode``, ``scale_x_y``):

    darknet (YOLOv3 paper, section 2.1; AlexeyAB's darknet adds scale_x_y = s, 1 by default):
        bx = (i + s * sig(tx) - (s - 1) / 2) * stride       bw = a_w * exp(tw)
    yolov5 (ultralytics YOLOv5 and its YOLOv3):
        bx = (i + 2 * sig(tx) - 0.5) * stride               bw = a_w * (2 * sig(tw))^2
    linear (the YOLOv3 paper's "linear x, y predictions instead of logistic", section 5, which it says lost
    "a couple points" of mAP):
        bx = (i + tx) * stride                              bw = a_w * exp(tw)

and the same in y. ``exp`` is clamped at ``ln(1e3)`` so that no finite input gives an infinite box. A centre can
lie outside its cell by :func:`centre_margin` cells (0 for darknet's rule with s = 1, any distance for the linear
rule), which the ignore rule needs to know; :func:`xy_sigmoid_target` inverts the centre's decode for the x, y
terms (for the linear rule: the target of ``tx`` itself, which only ``loss.xy=mse_linear`` regresses).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from yolo_loss.config.schema import DECODE_RULES, EXP_WH_RULES

STRIDES = (8, 16, 32)  # the three levels' strides in input pixels: P3, P4, P5 (YOLOv3's)


MAX_LOG_WH = math.log(1e3)


def per_anchor_view(pred: Tensor, num_anchors: int) -> Tensor:
    """``Tensor[B, A * (5 + C), H, W]`` -> ``Tensor[B, A, 5 + C, H, W]`` (a view, no copy)."""
    batch, channels, height, width = pred.shape
    if channels % num_anchors:
        raise ValueError(f"head has {channels} channels, not a multiple of {num_anchors} anchors")
    return pred.view(batch, num_anchors, channels // num_anchors, height, width)


def decode_cxcywh(raw_box: Tensor, grid_xy: Tensor, anchor_wh: Tensor, stride: float, *, rule: str = "darknet",
                  scale_x_y: float = 1.0) -> Tensor:
    """Decode raw ``(tx, ty, tw, th)`` to ``(cx, cy, w, h)`` in input pixels by ``rule`` (module docstring).

    Args:
        raw_box: ``Tensor[..., 4]`` raw logits.
        grid_xy: ``Tensor[..., 2]`` cell indices (i, j), broadcastable against ``raw_box``.
        anchor_wh: ``Tensor[..., 2]`` anchor size in input pixels, broadcastable.
        stride: input pixels per cell.
        rule: ``"darknet"``, ``"yolov5"`` or ``"linear"``.
        scale_x_y: AlexeyAB's ``scale_x_y`` of this level (darknet's rule only).
    """
    if rule == "yolov5":
        xy = (grid_xy + (2.0 * raw_box[..., :2].sigmoid() - 0.5)) * stride
        wh = anchor_wh * (2.0 * raw_box[..., 2:4].sigmoid()).square()
        return torch.cat((xy, wh), dim=-1)
    if rule not in EXP_WH_RULES:
        raise ValueError(f"decode rule {rule!r}; valid: {', '.join(DECODE_RULES)}")
    offset = raw_box[..., :2] if rule == "linear" else raw_box[..., :2].sigmoid()
    if scale_x_y != 1.0:
        offset = scale_x_y * offset - 0.5 * (scale_x_y - 1.0)
    xy = (grid_xy + offset) * stride
    wh = anchor_wh * raw_box[..., 2:4].clamp(max=MAX_LOG_WH).exp()
    return torch.cat((xy, wh), dim=-1)


def centre_margin(rule: str, scale_x_y: float = 1.0) -> float:
    """How far, in cells, a decoded centre can lie outside its own cell: ``(s - 1) / 2`` under darknet's rule,
    0.5 under YOLOv5's (``2 sig - 0.5`` spans ``[-0.5, 1.5]``), unbounded (``inf``) under the linear rule."""
    if rule == "linear":
        return math.inf
    return 0.5 if rule == "yolov5" else 0.5 * (scale_x_y - 1.0)


def xy_sigmoid_target(offset: Tensor, rule: str, scale_x_y: float = 1.0) -> Tensor:
    """The ``sig(tx), sig(ty)`` that decodes onto a truth centre at cell offset ``offset`` (``Tensor[..., 2]``,
    the centre in cells minus the cell index): the target of the x, y terms. The offset itself for darknet's rule
    with s = 1; ``(offset + (s - 1) / 2) / s`` with ``scale_x_y``; ``(offset + 0.5) / 2`` for YOLOv5's rule
    (a neighbour cell's offset is in ``[-0.5, 0)`` or ``[1, 1.5)``: its target stays in ``[0, 1)``). The linear
    rule has no sigmoid: the offset is the target of ``tx`` itself."""
    if rule == "yolov5":
        return (offset + 0.5) / 2.0
    if scale_x_y != 1.0:
        return (offset + 0.5 * (scale_x_y - 1.0)) / scale_x_y
    return offset


def grid_xy(height: int, width: int, *, device: torch.device | None = None,
            dtype: torch.dtype = torch.float32) -> Tensor:
    """``Tensor[H, W, 2]`` holding (i, j) = (column, row) of each cell."""
    rows, cols = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                                torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return torch.stack((cols, rows), dim=-1)


def decode_level(pred: Tensor, anchors_wh: Tensor, stride: float, *, rule: str = "darknet",
                 scale_x_y: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Decode one level's head map.

    Args:
        pred: ``Tensor[B, A * (5 + C), H, W]`` raw head output.
        anchors_wh: ``Tensor[A, 2]`` anchors of this level in input pixels.
        stride: input pixels per cell.
        rule, scale_x_y: as :func:`decode_cxcywh`.

    Returns:
        ``boxes_cxcywh`` ``Tensor[B, A * H * W, 4]`` in input pixels, ``obj_logits`` ``Tensor[B, A * H * W]``
        and ``cls_logits`` ``Tensor[B, A * H * W, C]``, ordered anchor-major (a, j, i).
    """
    view = per_anchor_view(pred, anchors_wh.shape[0])
    batch, num_anchors, channels, height, width = view.shape
    rows = view.permute(0, 1, 3, 4, 2).reshape(batch, num_anchors * height * width, channels)
    grid = grid_xy(height, width, device=pred.device, dtype=pred.dtype).view(1, 1, height * width, 2)
    anchors = anchors_wh.to(pred).view(1, num_anchors, 1, 2)
    boxes = decode_cxcywh(rows[..., :4].view(batch, num_anchors, height * width, 4), grid, anchors, stride,
                          rule=rule, scale_x_y=scale_x_y)
    return boxes.view(batch, -1, 4), rows[..., 4], rows[..., 5:]
