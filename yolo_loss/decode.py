"""The one decode of YOLOv3 head outputs, shared by the loss and by inference.

A head map for one level is ``Tensor[B, A * (5 + C), H, W]`` with the channels grouped per anchor as
``tx, ty, tw, th, to, tc_0 .. tc_{C-1}``. At cell (i, j) (i along x, j along y) the box is

    bx = (i + sig(tx)) * stride        by = (j + sig(ty)) * stride
    bw = a_w * exp(tw)                 bh = a_h * exp(th)

in input pixels (YOLOv3 paper, section 2.1). ``exp`` is clamped at ``ln(1e3)`` so that no finite
input gives an infinite box.
"""

from __future__ import annotations

import math

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from yolo_loss.head import HeadSpec

MAX_LOG_WH = math.log(1e3)


def per_anchor_view(pred: Tensor, num_anchors: int) -> Tensor:
    """``Tensor[B, A * (5 + C), H, W]`` -> ``Tensor[B, A, 5 + C, H, W]`` (a view, no copy)."""
    batch, channels, height, width = pred.shape
    if channels % num_anchors:
        raise ValueError(f"head has {channels} channels, not a multiple of {num_anchors} anchors")
    return pred.view(batch, num_anchors, channels // num_anchors, height, width)


def decode_cxcywh(raw_box: Tensor, grid_xy: Tensor, anchor_wh: Tensor, stride: float) -> Tensor:
    """Decode raw ``(tx, ty, tw, th)`` to ``(cx, cy, w, h)`` in input pixels.

    Args:
        raw_box: ``Tensor[..., 4]`` raw logits.
        grid_xy: ``Tensor[..., 2]`` cell indices (i, j), broadcastable against ``raw_box``.
        anchor_wh: ``Tensor[..., 2]`` anchor size in input pixels, broadcastable.
        stride: input pixels per cell.
    """
    xy = (grid_xy + raw_box[..., :2].sigmoid()) * stride
    wh = anchor_wh * raw_box[..., 2:4].clamp(max=MAX_LOG_WH).exp()
    return torch.cat((xy, wh), dim=-1)


def grid_xy(height: int, width: int, *, device: torch.device | None = None,
            dtype: torch.dtype = torch.float32) -> Tensor:
    """``Tensor[H, W, 2]`` holding (i, j) = (column, row) of each cell."""
    rows, cols = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                                torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return torch.stack((cols, rows), dim=-1)


def decode_level(pred: Tensor, anchors_wh: Tensor, stride: float) -> tuple[Tensor, Tensor, Tensor]:
    """Decode one level's head map.

    Args:
        pred: ``Tensor[B, A * (5 + C), H, W]`` raw head output.
        anchors_wh: ``Tensor[A, 2]`` anchors of this level in input pixels.
        stride: input pixels per cell.

    Returns:
        ``boxes_cxcywh`` ``Tensor[B, A * H * W, 4]`` in input pixels, ``obj_logits`` ``Tensor[B, A * H * W]``
        and ``cls_logits`` ``Tensor[B, A * H * W, C]``, ordered anchor-major (a, j, i).
    """
    view = per_anchor_view(pred, anchors_wh.shape[0])
    batch, num_anchors, channels, height, width = view.shape
    rows = view.permute(0, 1, 3, 4, 2).reshape(batch, num_anchors * height * width, channels)
    grid = grid_xy(height, width, device=pred.device, dtype=pred.dtype).view(1, 1, height * width, 2)
    anchors = anchors_wh.to(pred).view(1, num_anchors, 1, 2)
    boxes = decode_cxcywh(rows[..., :4].view(batch, num_anchors, height * width, 4), grid, anchors, stride)
    return boxes.view(batch, -1, 4), rows[..., 4], rows[..., 5:]


def decode_predictions(preds: list[Tensor], head: HeadSpec) -> tuple[Tensor, Tensor, Tensor]:
    """Decode all levels and concatenate them: boxes ``Tensor[B, N, 4]`` cxcywh pixels, objectness probabilities
    ``Tensor[B, N]`` and class probabilities ``Tensor[B, N, C]`` by the head's class activation (independent
    sigmoids, or a softmax over the classes of each row)."""
    decoded = [decode_level(p, a, s) for p, a, s in zip(preds, head.anchors(like=preds[0]), head.strides)]
    boxes = torch.cat([d[0] for d in decoded], dim=1)
    obj = torch.cat([d[1] for d in decoded], dim=1).sigmoid()
    cls = head.class_probabilities(torch.cat([d[2] for d in decoded], dim=1))
    return boxes, obj, cls
