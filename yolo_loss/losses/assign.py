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
from yolo_loss.config.components import MULTI_ANCHOR_IOU_THRESH, RATIO_ANCHOR_T, STATIC_ASSIGN_RULES
from yolo_loss.decode import grid_xy

ASSIGN_RULES = STATIC_ASSIGN_RULES


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


def anchor_matches(truth_wh: Tensor, anchors_wh: Tensor, rule: str, *,
                   iou_thresh: float = MULTI_ANCHOR_IOU_THRESH, anchor_t: float = RATIO_ANCHOR_T) -> Tensor:
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
                   rule: str = "best_anchor", iou_thresh: float = MULTI_ANCHOR_IOU_THRESH,
                   anchor_t: float = RATIO_ANCHOR_T, neighbour_cells: bool = False,
                   collisions: str = "merge") -> list[LevelTargets]:
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
    """The truth boxes padded into ``Tensor[B, T, 4]`` xyxy input pixels (T = most truths in one image): the boxes of
    :func:`padded_truths`. Padding rows are zero-size boxes, whose IoU with anything is 0, so they never pass an
    ignore threshold."""
    return padded_truths(targets, batch_size, img_size)[0]


def padded_truths(targets: Tensor, batch_size: int, img_size: tuple[int, int]) -> tuple[Tensor, ...]:
    """The truths of each image, padded to the most in one image, in the order of ``targets``' rows.

    Returns:
        ``(boxes, labels, mask, rows)``: ``Tensor[B, M, 4]`` xyxy input pixels, ``Tensor[B, M]`` int64 classes,
        ``Tensor[B, M]`` bool (``False`` on padding, which comes after an image's truths) and ``Tensor[B, M]``
        int64 the row of ``targets`` (-1 on padding).
    """
    img_h, img_w = img_size
    image = targets[:, 0].long()
    counts = torch.bincount(image, minlength=batch_size)
    most = int(counts.max()) if targets.shape[0] else 0
    order = torch.sort(image, stable=True).indices
    slot = torch.arange(order.numel(), device=targets.device) - (torch.cumsum(counts, 0) - counts)[image[order]]
    rows = torch.full((batch_size, most), -1, dtype=torch.long, device=targets.device)
    rows[image[order], slot] = order
    mask = rows >= 0
    safe = rows.clamp(min=0)
    box = targets[safe, 2:6] * targets.new_tensor([img_w, img_h, img_w, img_h])
    boxes = torch.where(mask[..., None], box_cxcywh_to_xyxy(box), torch.zeros_like(box))
    labels = torch.where(mask, targets[safe, 1].long(), torch.zeros_like(safe))
    return boxes, labels, mask, rows


# The ignore rule compares a box only with the truths it could pass the threshold with. In real arithmetic, for
# boxes A and B (the truth) whose centres lie d apart in x, IoU(A, B) <= wB / (wB + 2d), so IoU > t needs
# d < (1 - t) / (2t) * wB (the same in y): with the overlaps ox, oy and oy <= hA, hB, oy * (wA + wB - ox) <=
# wA hA + wB hB - ox oy, so IoU = ox oy / (wA hA + wB hB - ox oy) <= ox / (wA + wB - ox); and ox <= (wA + wB) / 2 - d,
# so wA + wB - ox >= ox + 2d and IoU <= ox / (ox + 2d) <= wB / (wB + 2d) (ox <= wB). The bound is tight (A: B widened
# by 2d on one side). At darknet's 0.7 a box centre must lie in the middle 43% of the truth's width and height; at
# 0.5 anywhere inside it. The float IoU differs from the real IoU of the same float corners by a few units in the
# last place, and a box's float corners are centred on its decoded centre to within one: the window is widened by
# IGNORE_WINDOW_SLACK of the coordinates' magnitude (at least 16 units in the last place of the dtype), far more
# than that needs, so a pair outside it cannot pass the float comparison either. Every box's centre lies within its
# own cell widened by the decode's margin (darknet: bx = (i + sig(tx)) * stride, margin 0; scale_x_y s: (s - 1) / 2;
# YOLOv5: 0.5; the prior rule's anchors sit at the cell centres), so only the cells whose widened extent meets a
# truth's window can hold a box that the truth makes ignored. Below SPARSE_IGNORE_MIN_THRESH the window spans more
# than 4.5 truth widths either side and every pair is compared.
SPARSE_IGNORE_MIN_THRESH = 0.1
IGNORE_WINDOW_SLACK = 2.0 ** -10
IGNORE_IOU_EPS = 1e-7  # box_iou_pairwise's default, which the all-pairs rule uses
IGNORE_CHUNK = 32768  # (truth, cell) pairs at a time


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

    From ``thresh >= 0.1`` (darknet's 0.5 and 0.7, the paper's 0.5) a truth is compared only with the boxes of
    the cells that can hold a centre near enough to its own to pass the threshold (see
    :data:`SPARSE_IGNORE_MIN_THRESH`), with the very arithmetic of :func:`_ignore_mask_all_pairs` (the IoU of
    :func:`~yolo_loss.boxes.box_iou_pairwise`, strict ``>``): the same mask, bit for bit, as comparing all
    ``B * A * H * W * T`` pairs, at a fraction of the work (boxes of non-negative size, as decoded ones are).
    Below it, with an unbounded margin, or with a truth that is not finite or has a negative size (whose NaN IoU
    would hide the other truths of its image from the all-pairs maximum), every pair is compared.
    """
    if boxes_cxcywh.dim() == 4:
        boxes_cxcywh = boxes_cxcywh.unsqueeze(0)
    truths = _upcast(truths_xyxy.reshape(-1, 4))
    if (not thresh >= SPARSE_IGNORE_MIN_THRESH or math.isinf(margin)
            or not bool((truths.isfinite().all() & (truths[:, 2:] >= truths[:, :2]).all()))):
        return _ignore_mask_all_pairs(boxes_cxcywh, truths_xyxy, thresh)
    batch, most = truths_xyxy.shape[:2]
    num_anchors, height, width = boxes_cxcywh.shape[1:4]
    mask = torch.zeros(batch, num_anchors, height, width, dtype=torch.bool, device=truths_xyxy.device)
    # A truth of no width or height overlaps nothing (IoU 0): padding rows and degenerate truths are skipped.
    real = ((truths[:, 2] > truths[:, 0]) & (truths[:, 3] > truths[:, 1])).nonzero().squeeze(1)
    if real.numel() == 0:
        return mask
    truths, image = truths.index_select(0, real), torch.div(real, most, rounding_mode="floor")
    precision = max(_machine_epsilon(boxes_cxcywh.dtype), _machine_epsilon(truths_xyxy.dtype))
    first, span = _candidate_cells(truths, thresh, stride, margin, (height, width), precision)
    keep = (span > 0).all(1).nonzero().squeeze(1)  # truths whose window meets the grid
    if keep.numel() == 0:
        return mask
    truths, image, first, span = (t.index_select(0, keep) for t in (truths, image, first, span))
    shared = boxes_cxcywh.shape[0] != batch  # the prior rule's boxes have no batch
    pair_box, pair_truth = _candidate_pairs(first, span, None if shared else image, num_anchors, height, width)
    _mark_hits(mask, boxes_cxcywh, truths, pair_box, pair_truth, image if shared else None, thresh)
    return mask


def _candidate_cells(truths: Tensor, thresh: float, stride: int, margin: float, grid: tuple[int, int],
                     precision: float) -> tuple[Tensor, Tensor]:
    """Each truth's window of candidate centres, (centre - reach, centre + reach) per axis, and the cells whose
    closed widened extent meets it, i from floor(lo / s - m) to ceil(hi / s + m) - 1, clipped to the grid:
    ``first`` ``Tensor[T', 2]`` (x, y) and ``span`` ``Tensor[T', 2]`` (cells across, down; 0 off the grid).
    In float64: the truths are few."""
    height, width = grid
    lo, hi = truths[:, :2].double(), truths[:, 2:].double()
    centre, size = (lo + hi) * 0.5, hi - lo
    slack = max(IGNORE_WINDOW_SLACK, 16.0 * precision) * (stride + lo.abs() + hi.abs() + size / thresh)
    reach = (size * ((1.0 - thresh) / (2.0 * thresh))).clamp(min=0.0) + slack
    limit = centre.new_tensor([width, height])
    first = torch.floor((centre - reach) / stride - margin).clamp(min=0.0).minimum(limit).long()
    last = torch.ceil((centre + reach) / stride + margin).clamp(min=0.0).minimum(limit).long() - 1
    return first, (last - first + 1).clamp(min=0)


def _candidate_pairs(first: Tensor, span: Tensor, image: Tensor | None, num_anchors: int, height: int,
                     width: int) -> tuple[Tensor, Tensor]:
    """Every (truth, cell) pair of the truths' cell ranges (each at least one cell across and down), without a
    Python loop: ``Tensor[pairs]`` flat index of the cell's box of anchor 0 (into ``[B, A, H, W]``, or ``[A, H, W]``
    with ``image`` None) and ``Tensor[pairs]`` the truth. First the (truth, row) pairs, few, then the cells of each
    row, a run of consecutive flat indices: a cumulative sum of ones that jumps at each row's first cell (much
    cheaper than repeat_interleave on the many pairs)."""
    device = first.device
    rows_truth = torch.repeat_interleave(torch.arange(first.shape[0], device=device), span[:, 1])  # [R]
    row_start = (torch.cumsum(span[:, 1], 0) - span[:, 1]).index_select(0, rows_truth)
    row_y = first[:, 1].index_select(0, rows_truth) + torch.arange(rows_truth.numel(), device=device) - row_start
    row_box = row_y * width + first[:, 0].index_select(0, rows_truth)  # the row's first box (anchor 0)
    if image is not None:
        row_box += image.index_select(0, rows_truth) * (num_anchors * height * width)
    across = span[:, 0].index_select(0, rows_truth)  # [R], all >= 1
    pair_start = torch.cumsum(across, 0) - across
    total = int(pair_start[-1] + across[-1])
    pair_box = torch.ones(total, dtype=torch.long, device=device)
    pair_box[pair_start] = torch.cat((row_box[:1], row_box[1:] - (row_box[:-1] + across[:-1] - 1)))
    pair_truth = torch.zeros(total, dtype=torch.long, device=device)
    pair_truth[pair_start] = torch.cat((rows_truth[:1], rows_truth[1:] - rows_truth[:-1]))
    return torch.cumsum(pair_box, 0), torch.cumsum(pair_truth, 0)


def _mark_hits(mask: Tensor, boxes_cxcywh: Tensor, truths: Tensor, pair_box: Tensor, pair_truth: Tensor,
               image: Tensor | None, thresh: float) -> None:
    """Set ``mask`` where a (box, truth) pair's IoU passes ``thresh``, for the boxes of all anchors of each pair's
    cell; ``image`` (the truths' images) where the boxes are the prior rule's, shared by the batch.

    The IoU exactly as :func:`_ignore_mask_all_pairs` computes it (box_cxcywh_to_xyxy, then the IoU of
    box_iou_pairwise), chunk by chunk so that the temporaries stay in the cache, laid out ``[A, pairs]`` so that
    the truth broadcasts along the outer dimension."""
    num_anchors, height, width = boxes_cxcywh.shape[1:4]
    plane, device, total = height * width, pair_box.device, pair_box.numel()
    box_rows = _packed_rows(boxes_cxcywh.reshape(-1, 4))
    x1, y1, x2, y2 = truths.unbind(1)
    truth_planes = torch.stack((x1, y1, x2, y2, (x2 - x1) * (y2 - y1)))  # [5, T'], the area as box_iou_pairwise's
    anchor_offset = torch.arange(num_anchors, device=device)[:, None] * plane
    chunk = IGNORE_CHUNK if device.type == "cpu" else total  # on an accelerator, one launch per operation
    for start in range(0, total, chunk):
        chunk_box = pair_box[start:start + chunk]
        box_index = (chunk_box[None, :] + anchor_offset).view(-1)  # [A * pairs]
        box = box_rows.index_select(0, box_index).view(boxes_cxcywh.dtype).view(num_anchors, -1, 4)
        x1, y1, x2, y2 = _corners(box)  # [A, pairs] each
        truth = truth_planes.index_select(1, pair_truth[start:start + chunk])  # [5, pairs]
        overlap_w = torch.minimum(x2, truth[2]).sub_(torch.maximum(x1, truth[0])).clamp_(min=0)
        overlap_h = torch.minimum(y2, truth[3]).sub_(torch.maximum(y1, truth[1])).clamp_(min=0)
        inter = overlap_w.mul_(overlap_h)
        union = torch.add((x2 - x1).mul_(y2 - y1), truth[4]).sub_(inter).add_(IGNORE_IOU_EPS)
        hit = (inter.div_(union) > thresh).view(-1).nonzero().squeeze(1)
        if hit.numel():
            flat = box_index.index_select(0, hit)
            if image is not None:
                pair = start + hit % chunk_box.numel()
                flat += image.index_select(0, pair_truth.index_select(0, pair)) * (num_anchors * plane)
            mask.view(-1)[flat] = True


def _packed_rows(rows: Tensor) -> Tensor:
    """``Tensor[N, 4]`` float32 rows on the CPU as ``Tensor[N]`` complex128, the same bytes: ``index_select`` copies
    one 16-byte element about twice as fast as a row of four floats (a copy: bit for bit). Other rows as they are."""
    if rows.dtype == torch.float32 and rows.is_contiguous() and rows.device.type == "cpu":
        return rows.view(torch.complex128).view(-1)
    return rows


def _machine_epsilon(dtype: torch.dtype) -> float:
    """The machine epsilon of a floating dtype; integer boxes become float32 corners."""
    return torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps


def _ignore_mask_all_pairs(boxes_cxcywh: Tensor, truths_xyxy: Tensor, thresh: float) -> Tensor:
    """:func:`ignore_mask` by comparing every box with every truth of its image (``Tensor[B or 1, A, H, W, 4]``)."""
    batch, most = truths_xyxy.shape[:2]
    spatial = boxes_cxcywh.shape[1:4]
    if most == 0:
        return torch.zeros(batch, *spatial, dtype=torch.bool, device=truths_xyxy.device)
    boxes = box_cxcywh_to_xyxy(boxes_cxcywh).reshape(boxes_cxcywh.shape[0], -1, 1, 4)
    best = box_iou_pairwise(boxes, truths_xyxy[:, None], eps=IGNORE_IOU_EPS).amax(-1)  # [B, A*H*W]
    return (best > thresh).view(batch, *spatial)


def _upcast(tensor: Tensor) -> Tensor:
    """Half-precision boxes in float32, as :func:`~yolo_loss.boxes.box_iou_pairwise` computes their IoU."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def _corners(boxes_cxcywh: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``Tensor[..., 4]`` cxcywh -> x1, y1, x2, y2, each ``Tensor[...]``, with the arithmetic of
    :func:`~yolo_loss.boxes.box_cxcywh_to_xyxy` (in the boxes' dtype), half precision then upcast as
    :func:`~yolo_loss.boxes.box_iou_pairwise` does."""
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    half_w, half_h = 0.5 * w, 0.5 * h
    return tuple(_upcast(corner) for corner in (cx - half_w, cy - half_h, cx + half_w, cy + half_h))


def anchor_boxes_at_cells(anchors_wh: Tensor, stride: int, height: int, width: int) -> Tensor:
    """Each anchor placed at each cell centre: ``Tensor[A, H, W, 4]`` cxcywh input pixels (the paper's ignore rule)."""
    centres = (grid_xy(height, width, device=anchors_wh.device, dtype=anchors_wh.dtype) + 0.5) * stride
    num_anchors = anchors_wh.shape[0]
    return torch.cat((centres.expand(num_anchors, height, width, 2),
                      anchors_wh.view(num_anchors, 1, 1, 2).expand(num_anchors, height, width, 2)), dim=-1)
