"""Target assignment: which (level, anchor, cell) is positive for which truth, and which negatives are ignored.

Assignment is a ``no_grad`` step that returns named index tensors (:class:`LevelTargets`); the criterion reads
the predictions at those indices. Three rules (see ``loss-reference.md``):

- ``best_anchor`` (YOLOv3 paper and darknet): the single anchor of all nine with the highest shape IoU
  (boxes centred at the origin; strict greater-than, so the first anchor wins ties) is the only positive.
- ``multi_anchor`` (AlexeyAB's darknet, ``iou_thresh``): the best anchor, plus every anchor whose shape IoU
  exceeds ``iou_thresh``.
- ``ratio`` (ultralytics YOLOv3/v5, ``anchor_t``): every anchor with ``max(w/a_w, a_w/w, h/a_h, a_h/h) < anchor_t``;
  a truth that fits no anchor has no positive, as in ultralytics.

A truth's positives sit in the cell of its centre; with ``neighbour_cells`` (YOLOv5, which needs its decode) also
in the two neighbouring cells nearest the centre.

Collisions (two truths on the same level, cell and anchor) follow darknet's ``yolo_layer.c`` by default
(``collisions: merge``): the box targets of the later truth (later in the ``targets`` rows) overwrite the earlier;
objectness stays 1; the class targets are the union of both classes (multi-hot). ``collisions: keep`` is
ultralytics': each truth stays its own positive row, and the cell's objectness target is written by the last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from yolo_loss.boxes import box_cxcywh_to_xyxy, box_iou_pairwise
from yolo_loss.decode import grid_xy

ASSIGN_RULES = ("best_anchor", "multi_anchor", "ratio")


@dataclass
class LevelTargets:
    """The positives of one level, one row per positive (level, image, anchor, cell).

    Attributes:
        image, anchor, cell_y, cell_x: ``Tensor[P]`` int64 indices into the level's ``[B, A, H, W]`` grid.
        truth: ``Tensor[P]`` int64 row of ``targets`` whose box this positive regresses to (the later truth
            on a collision).
        target_xy: ``Tensor[P, 2]`` cell offsets ``(cx / stride - i, cy / stride - j)``: in ``[0, 1]`` for the
            centre's own cell, in ``[-0.5, 0)`` or ``[1, 1.5)`` for a neighbour cell (YOLOv5).
        target_wh: ``Tensor[P, 2]`` ``ln(w / a_w), ln(h / a_h)``.
        target_box_cxcywh: ``Tensor[P, 4]`` the truth box in input pixels.
        target_cls: ``Tensor[P, C]`` multi-hot class targets (the union on a collision).
        anchor_wh: ``Tensor[P, 2]`` the anchor size in input pixels.
        truth_area_norm: ``Tensor[P]`` ``w * h`` of the truth as a fraction of the input area (for ``2 - w * h``).
        objectness_row: ``Tensor[P]`` bool: the row whose objectness target is its cell's (every row, unless
            collisions are kept: then one row per cell).
    """

    image: Tensor
    anchor: Tensor
    cell_y: Tensor
    cell_x: Tensor
    truth: Tensor
    target_xy: Tensor
    target_wh: Tensor
    target_box_cxcywh: Tensor
    target_cls: Tensor
    anchor_wh: Tensor
    truth_area_norm: Tensor
    objectness_row: Tensor

    @property
    def num_positives(self) -> int:
        return self.image.numel()


def shape_iou(wh_a: Tensor, wh_b: Tensor) -> Tensor:
    """IoU of boxes of sizes ``Tensor[N, 2]`` and ``Tensor[M, 2]`` centred at the same point: ``Tensor[N, M]``."""
    inter = torch.minimum(wh_a[:, None], wh_b[None]).prod(-1)
    union = wh_a.prod(-1)[:, None] + wh_b.prod(-1)[None] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def anchor_matches(truth_wh: Tensor, anchors_wh: Tensor, rule: str, *, iou_thresh: float = 0.213,
                   anchor_t: float = 4.0) -> Tensor:
    """Which of all anchors each truth is assigned to: ``Tensor[N, K]`` bool.

    Args:
        truth_wh: ``Tensor[N, 2]`` truth sizes in input pixels.
        anchors_wh: ``Tensor[K, 2]`` all anchors of all levels in input pixels.
    """
    if rule == "ratio":
        ratio = truth_wh[:, None] / anchors_wh[None]
        return torch.maximum(ratio, 1.0 / ratio).amax(-1) < anchor_t
    ious = shape_iou(truth_wh, anchors_wh)
    # torch.argmax returns the first maximal index, i.e. darknet's strict '>' tie rule.
    best = torch.zeros_like(ious, dtype=torch.bool)
    if truth_wh.shape[0]:
        best[torch.arange(truth_wh.shape[0], device=truth_wh.device), ious.argmax(-1)] = True
    if rule == "best_anchor":
        return best
    if rule == "multi_anchor":
        return best | (ious > iou_thresh)
    raise ValueError(f"unknown assignment rule {rule!r}; valid: {', '.join(ASSIGN_RULES)}")


# YOLOv5's neighbour cells (ultralytics ComputeLoss.build_targets), in its order: the centre's own cell, then the
# cell to the left, above, to the right, below, each as an offset subtracted from the centre in cells.
NEIGHBOUR_OFFSETS = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (-0.5, 0.0), (0.0, -0.5))
COLLISION_RULES = ("merge", "keep")


@torch.no_grad()
def assign_targets(targets: Tensor, *, num_classes: int, anchors_per_level: list[Tensor],
                   strides: tuple[int, ...], grid_sizes: list[tuple[int, int]], img_size: tuple[int, int],
                   rule: str = "best_anchor", iou_thresh: float = 0.213, anchor_t: float = 4.0,
                   neighbour_cells: bool = False, collisions: str = "merge") -> list[LevelTargets]:
    """Assign truths to (level, anchor, cell) positives.

    Args:
        targets: ``Tensor[N, 6]`` rows ``(image index, class index, cx, cy, w, h)``, box normalised to the input.
        anchors_per_level: one ``Tensor[A, 2]`` per level, input pixels.
        grid_sizes: ``(H, W)`` of each level's map.
        img_size: ``(height, width)`` of the network input in pixels.
        neighbour_cells: also the two neighbouring cells nearest the centre (YOLOv5): the cell to the left where
            the centre is in the left half of its cell and not in the first column, else the one to the right
            where it is in the right half and not in the last column; the same in y.
        collisions: ``"merge"`` (darknet, the module docstring) or ``"keep"`` (ultralytics: every (truth, anchor,
            cell) is its own positive with its own class; ``objectness_row`` marks, per cell, the last one in
            ultralytics' order (neighbour offset, anchor, truth), whose IoU sets the cell's objectness target).

    Returns:
        One :class:`LevelTargets` per level.
    """
    if collisions not in COLLISION_RULES:
        raise ValueError(f"collisions {collisions!r}; valid: {', '.join(COLLISION_RULES)}")
    device, dtype = targets.device, targets.dtype
    img_h, img_w = img_size
    image = targets[:, 0].long()
    label = targets[:, 1].long()
    box_cxcywh = targets[:, 2:6] * targets.new_tensor([img_w, img_h, img_w, img_h])
    all_anchors = torch.cat(anchors_per_level).to(device=device, dtype=dtype)
    matches = anchor_matches(box_cxcywh[:, 2:], all_anchors, rule, iou_thresh=iou_thresh, anchor_t=anchor_t)
    truth_idx, anchor_idx = matches.nonzero(as_tuple=True)  # sorted by truth row, so later truths come later

    levels = []
    first_anchor = 0
    for anchors, stride, grid in zip(anchors_per_level, strides, grid_sizes):
        num_anchors = anchors.shape[0]
        on_level = (anchor_idx >= first_anchor) & (anchor_idx < first_anchor + num_anchors)
        truth, anchor = truth_idx[on_level], anchor_idx[on_level] - first_anchor
        first_anchor += num_anchors
        truth, anchor, cell_x, cell_y, order = _cells(box_cxcywh, truth, anchor, stride, grid, neighbour_cells,
                                                      num_anchors, targets.shape[0])
        levels.append(_level_targets(targets, box_cxcywh, image, label, truth, anchor, cell_x, cell_y, order,
                                     anchors.to(device=device, dtype=dtype), stride, grid, num_classes, collisions))
    return levels


def _cells(box_cxcywh: Tensor, truth: Tensor, anchor: Tensor, stride: int, grid: tuple[int, int],
           neighbour_cells: bool, num_anchors: int, num_truths: int) -> tuple[Tensor, ...]:
    """The (truth, anchor) matches of one level with their cells: the centre's, and with ``neighbour_cells`` the
    neighbours (:data:`NEIGHBOUR_OFFSETS`); ``order`` ranks the rows as ultralytics orders them."""
    height, width = grid
    centre = box_cxcywh[truth, :2] / stride
    if not neighbour_cells:
        cell_x = centre[:, 0].floor().long().clamp(0, width - 1)
        cell_y = centre[:, 1].floor().long().clamp(0, height - 1)
        return truth, anchor, cell_x, cell_y, anchor * num_truths + truth
    inverse = centre.new_tensor([width, height]) - centre
    near_low = (centre % 1 < 0.5) & (centre > 1)  # left, above
    near_high = (inverse % 1 < 0.5) & (inverse > 1)  # right, below
    use = torch.stack((torch.ones_like(near_low[:, 0]), near_low[:, 0], near_low[:, 1], near_high[:, 0],
                       near_high[:, 1]))  # [5, P]
    offsets = centre.new_tensor(NEIGHBOUR_OFFSETS)
    rows = []
    for k in range(len(NEIGHBOUR_OFFSETS)):
        pick = use[k]
        cell = (centre[pick] - offsets[k]).long()  # truncation, as ultralytics (the centre is not negative)
        order = (k * num_anchors + anchor[pick]) * num_truths + truth[pick]
        rows.append((truth[pick], anchor[pick], cell[:, 0].clamp(0, width - 1), cell[:, 1].clamp(0, height - 1),
                     order))
    return tuple(torch.cat(parts) for parts in zip(*rows))


def _level_targets(targets: Tensor, box_cxcywh: Tensor, image: Tensor, label: Tensor, truth: Tensor,
                   anchor: Tensor, cell_x: Tensor, cell_y: Tensor, order: Tensor, anchors: Tensor, stride: int,
                   grid: tuple[int, int], num_classes: int, collisions: str) -> LevelTargets:
    """One level's :class:`LevelTargets` from its (truth, anchor, cell) rows, collisions resolved."""
    height, width = grid
    num_anchors = anchors.shape[0]
    device, dtype = targets.device, targets.dtype
    img = image[truth]
    flat = ((img * num_anchors + anchor) * height + cell_y) * width + cell_x
    cells, slot = torch.unique(flat, return_inverse=True)
    # Per cell, the row last in order: darknet's later truth, ultralytics' last write of the objectness target.
    last = torch.full((cells.numel(),), -1, dtype=torch.long, device=device)
    last.scatter_reduce_(0, slot, order, reduce="amax")
    is_last = order == last[slot]
    if collisions == "merge":  # one positive per cell: the last row's box and the union of the classes
        owner = torch.empty(cells.numel(), dtype=torch.long, device=device)
        owner[slot[is_last]] = torch.arange(truth.numel(), device=device)[is_last]
        target_cls = torch.zeros(cells.numel(), num_classes, dtype=dtype, device=device)
        target_cls[slot, label[truth]] = 1.0
        truth, anchor, cell_x, cell_y, img = (t[owner] for t in (truth, anchor, cell_x, cell_y, img))
        objectness_row = torch.ones(cells.numel(), dtype=torch.bool, device=device)
    else:  # every row a positive, in ultralytics' order
        rank = torch.argsort(order)
        truth, anchor, cell_x, cell_y, img, objectness_row = (t[rank] for t in (truth, anchor, cell_x, cell_y, img,
                                                                                is_last))
        target_cls = torch.zeros(truth.numel(), num_classes, dtype=dtype, device=device)
        target_cls[torch.arange(truth.numel(), device=device), label[truth]] = 1.0
    box = box_cxcywh[truth]
    anchor_wh = anchors[anchor]
    return LevelTargets(
        image=img, anchor=anchor, cell_y=cell_y, cell_x=cell_x, truth=truth,
        target_xy=box[:, :2] / stride - torch.stack((cell_x, cell_y), -1).to(dtype),
        target_wh=torch.log(box[:, 2:] / anchor_wh),
        target_box_cxcywh=box,
        target_cls=target_cls,
        anchor_wh=anchor_wh,
        truth_area_norm=targets[truth, 4] * targets[truth, 5],
        objectness_row=objectness_row,
    )


def truths_per_image(targets: Tensor, batch_size: int, img_size: tuple[int, int]) -> Tensor:
    """Pad the truth boxes into ``Tensor[B, T, 4]`` xyxy input pixels (T = most truths in one image).

    Padding rows are zero-size boxes, whose IoU with anything is 0, so they never pass an ignore threshold.
    """
    img_h, img_w = img_size
    image = targets[:, 0].long()
    counts = torch.bincount(image, minlength=batch_size)
    most = int(counts.max()) if targets.shape[0] else 0
    padded = targets.new_zeros(batch_size, most, 4)
    if most:
        order = torch.sort(image, stable=True).indices
        start = torch.cumsum(counts, 0) - counts
        sorted_image = image[order]
        rank = torch.arange(order.numel(), device=targets.device) - start[sorted_image]
        box = targets[order, 2:6] * targets.new_tensor([img_w, img_h, img_w, img_h])
        padded[sorted_image, rank] = box_cxcywh_to_xyxy(box)
    return padded


# IoU > t >= 0.5 is only possible when the box's centre lies strictly inside the truth: a centre outside puts at
# least half of the box outside the truth, so IoU <= |A & B| / |A| <= 1/2. Every box's centre lies within its own
# cell widened by the decode's margin (darknet: bx = (i + sig(tx)) * stride, margin 0; scale_x_y s: (s - 1) / 2;
# YOLOv5: 0.5; the prior rule's anchors sit at the cell centres), so from this threshold up only the cells whose
# widened extent meets a truth can be ignored because of it.
SPARSE_IGNORE_MIN_THRESH = 0.5


@torch.no_grad()
def ignore_mask(boxes_cxcywh: Tensor, truths_xyxy: Tensor, thresh: float, stride: int, margin: float = 0.0
                ) -> Tensor:
    """Negatives to ignore: ``max_t IoU(box, truth_t) > thresh`` over the truths of the box's image.

    Args:
        boxes_cxcywh: ``Tensor[B, A, H, W, 4]`` (decoded predictions for darknet's rule) or ``Tensor[A, H, W, 4]``
            (anchor boxes at cell centres for the paper's rule), input pixels; each box's centre must lie in its
            cell widened by ``margin`` cells, ``[(i - margin) * stride, (i + 1 + margin) * stride]`` (the decode
            guarantees it: :func:`yolo_loss.decode.centre_margin`).
        truths_xyxy: ``Tensor[B, T, 4]`` from :func:`truths_per_image`.
        stride: input pixels per cell.
        margin: how far, in cells, a centre can lie outside its cell.

    Returns:
        ``Tensor[B, A, H, W]`` bool.

    For ``thresh >= 0.5`` (darknet's 0.5 and 0.7, the paper's 0.5) only the (box, truth) pairs whose cell the
    truth covers are compared (see :data:`SPARSE_IGNORE_MIN_THRESH`), which gives the same mask as comparing all
    ``B * A * H * W * T`` pairs at a fraction of the work; below 0.5, or with an unbounded margin, every pair is
    compared.
    """
    if boxes_cxcywh.dim() == 4:
        boxes_cxcywh = boxes_cxcywh.unsqueeze(0)
    if thresh < SPARSE_IGNORE_MIN_THRESH or math.isinf(margin):  # the linear decode: a centre can be anywhere
        return _ignore_mask_all_pairs(boxes_cxcywh, truths_xyxy, thresh)
    batch, most = truths_xyxy.shape[:2]
    num_anchors, height, width = boxes_cxcywh.shape[1:4]
    mask = torch.zeros(batch, num_anchors, height, width, dtype=torch.bool, device=truths_xyxy.device)
    if most == 0:
        return mask

    # Per truth, the cells whose closed widened extent meets the open truth box: i from floor(x1 / s - m) to
    # ceil(x2 / s + m) - 1.
    truths = truths_xyxy.reshape(-1, 4)
    image = torch.arange(batch, device=truths.device).repeat_interleave(most)
    first = torch.floor(truths[:, :2] / stride - margin).long()
    last = torch.ceil(truths[:, 2:] / stride + margin).long() - 1
    first = torch.maximum(first, first.new_zeros(()))
    last = torch.minimum(last, last.new_tensor([width - 1, height - 1]))
    span = (last - first + 1).clamp(min=0)  # [T', 2] cells across, down; 0 for padding rows
    cells = span[:, 0] * span[:, 1]
    total = int(cells.sum())
    if total == 0:
        return mask

    # Enumerate every (truth, covered cell) pair without a Python loop, as flat indices into the [B, A, H, W]
    # boxes; the anchors of a cell broadcast. index_select throughout: much faster on CPU than indexing with
    # several index tensors.
    truth = torch.repeat_interleave(torch.arange(truths.shape[0], device=truths.device), cells, output_size=total)
    cell = torch.arange(total, device=truths.device) - (torch.cumsum(cells, 0) - cells).index_select(0, truth)
    across = span[:, 0].index_select(0, truth)
    cell_x = first[:, 0].index_select(0, truth) + cell % across
    cell_y = first[:, 1].index_select(0, truth) + cell // across
    plane = height * width
    within_image = ((cell_y * width + cell_x)[:, None]
                    + torch.arange(num_anchors, device=truths.device) * plane)  # [pairs, A]
    flat = image.index_select(0, truth)[:, None] * (num_anchors * plane) + within_image
    box_flat = flat if boxes_cxcywh.shape[0] == batch else within_image  # the prior rule's boxes have no batch
    # Corners and area once per box, as planes [x1, y1, x2, y2, area] (each one contiguous, which the elementwise
    # kernels below need to be fast), then gathered: a box is compared with every truth covering its cell.
    box = _planes(box_cxcywh_to_xyxy(boxes_cxcywh).reshape(-1, 4)).index_select(1, box_flat.view(-1))
    box = box.view(5, total, num_anchors)
    truth_box = _planes(truths).index_select(1, truth)[:, :, None]  # [5, pairs, 1]
    overlap_w = (torch.minimum(box[2], truth_box[2]) - torch.maximum(box[0], truth_box[0])).clamp_(min=0)
    overlap_h = (torch.minimum(box[3], truth_box[3]) - torch.maximum(box[1], truth_box[1])).clamp_(min=0)
    # IoU > t  <=>  inter > t * (area_a + area_b - inter)  <=>  inter * (1 + t) > t * (area_a + area_b)
    hit = overlap_w.mul_(overlap_h).mul_(1.0 + thresh) > (box[4] + truth_box[4]).mul_(thresh)
    mask.view(-1)[flat[hit]] = True
    return mask


def _ignore_mask_all_pairs(boxes_cxcywh: Tensor, truths_xyxy: Tensor, thresh: float) -> Tensor:
    """:func:`ignore_mask` by comparing every box with every truth of its image (``Tensor[B or 1, A, H, W, 4]``)."""
    batch, most = truths_xyxy.shape[:2]
    spatial = boxes_cxcywh.shape[1:4]
    if most == 0:
        return torch.zeros(batch, *spatial, dtype=torch.bool, device=truths_xyxy.device)
    boxes = box_cxcywh_to_xyxy(boxes_cxcywh).reshape(boxes_cxcywh.shape[0], -1, 1, 4)
    best = box_iou_pairwise(boxes, truths_xyxy[:, None]).amax(-1)  # [B, A*H*W]
    return (best > thresh).view(batch, *spatial)


def _planes(boxes_xyxy: Tensor) -> Tensor:
    """``Tensor[N, 4]`` xyxy -> ``Tensor[5, N]``: x1, y1, x2, y2 and the area, one contiguous row each."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(1)
    return torch.stack((x1, y1, x2, y2, (x2 - x1) * (y2 - y1)))


def anchor_boxes_at_cells(anchors_wh: Tensor, stride: int, height: int, width: int) -> Tensor:
    """Each anchor placed at each cell centre: ``Tensor[A, H, W, 4]`` cxcywh input pixels (the paper's ignore rule)."""
    centres = (grid_xy(height, width, device=anchors_wh.device, dtype=anchors_wh.dtype) + 0.5) * stride
    num_anchors = anchors_wh.shape[0]
    return torch.cat((centres.expand(num_anchors, height, width, 2),
                      anchors_wh.view(num_anchors, 1, 1, 2).expand(num_anchors, height, width, 2)), dim=-1)
