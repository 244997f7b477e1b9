"""The head's candidates and the criterion's side of a dynamic assigner (``loss.assign: tal | simota | atss``).

:func:`head_candidates` lays out every (level, anchor, cell) of the head as the package docstring describes;
:func:`assign_dynamic` reads the predictions at all of them (decoded boxes and scores, no gradient), pads the truths
per image, runs the configured assigner and turns its positives into the rows of
:class:`~yolo_loss.losses.assign.LevelTargets` that the criterion reads for the static rules too: the positive's
truth box, its anchor, its cell, and the assigner's class target (soft for TAL and SimOTA). Every candidate has one
truth at most, so there are no collisions to resolve and each row is its cell's objectness row.

What each assigner reads of this anchor-based head with objectness (the methods were written for heads without it
or, for SimOTA, with it):

- TAL: the score ``sigmoid(obj) * p(class)``, the score this head ranks detections by at inference;
- SimOTA: ``sqrt(sigmoid(obj) * p(class))``, as YOLOX's cost reads its objectness and class branches;
- ATSS: the anchor boxes only.

``p(class)`` is the head's class activation (sigmoid, or softmax with a softmax class loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from yolo_loss.boxes import box_cxcywh_to_xyxy
from yolo_loss.decode import grid_xy, per_anchor_view
from yolo_loss.head import HeadSpec
from yolo_loss.losses.assign import LevelTargets, padded_truths
from yolo_loss.losses.assigners import Assignment
from yolo_loss.losses.assigners.atss import atss_assign
from yolo_loss.losses.assigners.simota import simota_assign
from yolo_loss.losses.assigners.tal import tal_assign

DYNAMIC_RULES = ("tal", "simota", "atss")


@dataclass
class Candidates:
    """Every (level, anchor, cell) of a head, flattened (the package docstring's order), in input pixels.

    Attributes:
        points: ``Tensor[N, 2]`` cell centres.
        strides: ``Tensor[N]`` the level's stride.
        anchor_wh: ``Tensor[N, 2]`` the anchor's width and height.
        anchor_boxes: ``Tensor[N, 4]`` xyxy, the anchor centred on its cell.
        level, anchor, cell_y, cell_x: ``Tensor[N]`` int64, where the candidate sits.
        level_sizes: candidates per level, in order.
    """

    points: Tensor
    strides: Tensor
    anchor_wh: Tensor
    anchor_boxes: Tensor
    level: Tensor
    anchor: Tensor
    cell_y: Tensor
    cell_x: Tensor
    level_sizes: list[int]


def head_candidates(anchors_per_level: list[Tensor], strides: tuple[int, ...],
                    grid_sizes: list[tuple[int, int]]) -> Candidates:
    """The candidates of a head with these anchors (``Tensor[A, 2]`` pixels per level), strides and grid sizes."""
    parts: dict[str, list[Tensor]] = {key: [] for key in ("points", "strides", "anchor_wh", "level", "anchor",
                                                          "cell_y", "cell_x")}
    sizes = []
    for level, (anchors, stride, (height, width)) in enumerate(zip(anchors_per_level, strides, grid_sizes)):
        num_anchors, device, dtype = anchors.shape[0], anchors.device, anchors.dtype
        grid = grid_xy(height, width, device=device, dtype=dtype).expand(num_anchors, height, width, 2)
        anchor_index = torch.arange(num_anchors, device=device).view(-1, 1, 1).expand(num_anchors, height, width)
        parts["points"].append(((grid + 0.5) * stride).reshape(-1, 2))
        parts["strides"].append(torch.full((anchor_index.numel(),), float(stride), device=device, dtype=dtype))
        parts["anchor_wh"].append(anchors[anchor_index.reshape(-1)])
        parts["level"].append(torch.full((anchor_index.numel(),), level, device=device, dtype=torch.long))
        parts["anchor"].append(anchor_index.reshape(-1))
        parts["cell_y"].append(grid[..., 1].reshape(-1).long())
        parts["cell_x"].append(grid[..., 0].reshape(-1).long())
        sizes.append(anchor_index.numel())
    flat = {key: torch.cat(values) for key, values in parts.items()}
    anchor_boxes = box_cxcywh_to_xyxy(torch.cat((flat["points"], flat["anchor_wh"]), -1))
    return Candidates(anchor_boxes=anchor_boxes, level_sizes=sizes, **flat)


@torch.no_grad()
def predictions_at_candidates(preds: list[Tensor], head: HeadSpec, anchors: list[Tensor]) -> tuple[Tensor, ...]:
    """Every candidate's decoded box and scores, detached.

    Returns:
        ``(boxes, objectness, class_probabilities)``: ``Tensor[B, N, 4]`` xyxy input pixels, ``Tensor[B, N]``
        ``sigmoid(obj)`` and ``Tensor[B, N, C]`` the head's class activation.
    """
    boxes, objectness, classes = [], [], []
    for level, (pred, level_anchors) in enumerate(zip(preds, anchors)):
        view = per_anchor_view(pred.detach(), level_anchors.shape[0]).permute(0, 1, 3, 4, 2)  # [B, A, H, W, 5 + C]
        batch, num_anchors, height, width, channels = view.shape
        grid = grid_xy(height, width, device=view.device, dtype=view.dtype)
        box = head.decode_box(view[..., :4], grid, level_anchors.view(1, num_anchors, 1, 1, 2), level)
        boxes.append(box_cxcywh_to_xyxy(box).reshape(batch, -1, 4))
        objectness.append(torch.sigmoid(view[..., 4]).reshape(batch, -1))
        classes.append(head.class_probabilities(view[..., 5:]).reshape(batch, -1, channels - 5))
    return torch.cat(boxes, 1), torch.cat(objectness, 1), torch.cat(classes, 1)


@torch.no_grad()
def assign_dynamic(rule: str, preds: list[Tensor], targets: Tensor, *, head: HeadSpec, anchors: list[Tensor],
                   img_size: tuple[int, int], params: dict[str, Any]) -> list[LevelTargets]:
    """Positives by a dynamic assigner, as one :class:`LevelTargets` per level.

    Args:
        rule: ``"tal"``, ``"simota"`` or ``"atss"``.
        preds: the raw head maps (the criterion's ``preds``).
        targets: ``Tensor[T, 6]`` rows ``(image, class, cx, cy, w, h)`` normalised to the input.
        anchors: the head's anchors per level in pixels, in the predictions' dtype.
        params: the assigner's keyword hyper-parameters (``config/components.py``, ``ASSIGNERS``).
    """
    if rule not in DYNAMIC_RULES:
        raise ValueError(f"unknown dynamic assigner {rule!r}; valid: {', '.join(DYNAMIC_RULES)}")
    batch, num_classes = preds[0].shape[0], head.num_classes
    grid_sizes = [tuple(p.shape[-2:]) for p in preds]
    candidates = head_candidates(anchors, head.strides, grid_sizes)
    boxes, labels, mask, rows = padded_truths(targets, batch, img_size)
    if rule == "atss":
        assignment = atss_assign(candidates.anchor_boxes, candidates.level_sizes, boxes, labels, mask,
                                 num_classes=num_classes, **params)
    else:
        pred_boxes, objectness, classes = predictions_at_candidates(preds, head, anchors)
        if rule == "tal":
            second_stride = head.strides[1] if head.num_levels > 1 else head.strides[0]
            assignment = tal_assign(objectness[..., None] * classes, pred_boxes, candidates.points, boxes, labels,
                                    mask, num_classes=num_classes, min_truth_side=float(second_stride), **params)
        else:
            assignment = simota_assign(torch.sqrt(objectness[..., None] * classes), pred_boxes, candidates.points,
                                       candidates.strides, boxes, labels, mask, num_classes=num_classes, **params)
    return level_targets(assignment, candidates, targets, rows, img_size, head.num_levels)


def level_targets(assignment: Assignment, candidates: Candidates, targets: Tensor, rows: Tensor,
                  img_size: tuple[int, int], num_levels: int) -> list[LevelTargets]:
    """The positives of ``assignment`` as one :class:`LevelTargets` per level, in (image, candidate) order."""
    img_h, img_w = img_size
    image, index = assignment.fg.nonzero(as_tuple=True)
    truth = rows[image, assignment.truth[image, index]]
    box = targets[truth, 2:6] * targets.new_tensor([img_w, img_h, img_w, img_h])
    levels = []
    for level in range(num_levels):
        on = candidates.level[index] == level
        at, row, level_box = index[on], truth[on], box[on]
        cell = torch.stack((candidates.cell_x[at], candidates.cell_y[at]), -1).to(targets.dtype)
        anchor_wh = candidates.anchor_wh[at].to(targets.dtype)
        levels.append(LevelTargets(
            image=image[on], anchor=candidates.anchor[at], cell_y=candidates.cell_y[at],
            cell_x=candidates.cell_x[at], truth=row,
            target_xy=level_box[:, :2] / candidates.strides[at, None].to(targets.dtype) - cell,
            target_wh=torch.log(level_box[:, 2:] / anchor_wh),
            target_box_cxcywh=level_box,
            target_cls=assignment.cls_target[image[on], at].to(targets.dtype),
            anchor_wh=anchor_wh,
            truth_area_norm=targets[row, 4] * targets[row, 5],
            objectness_row=torch.ones(at.numel(), dtype=torch.bool, device=targets.device),
        ))
    return levels
