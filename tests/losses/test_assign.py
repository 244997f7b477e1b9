"""The ignore rule's fast path (:func:`ignore_mask`, which compares a truth only with the cells near its centre)
against the all-pairs rule it must equal bit for bit: empty images, truths on and past the image edge, huge and
degenerate boxes, exact ties at the threshold, several levels, batches of 1 and 64, the prior rule's shared boxes,
mixed dtypes, and the criterion's loss and gradient with either rule."""

from __future__ import annotations

import math

import pytest
import torch

from yolo_loss.boxes import box_cxcywh_to_xyxy, box_iou_pairwise
from yolo_loss.config.schema import YOLOV3_ANCHORS, LossConfig
from yolo_loss.decode import STRIDES
from yolo_loss.head import HeadSpec, class_activation
from yolo_loss.losses import assign as assign_module
from yolo_loss.losses import criterion as criterion_module
from yolo_loss.losses.assign import (_ignore_mask_all_pairs, anchor_boxes_at_cells, ignore_mask,
                                     truths_per_image)
from yolo_loss.losses.criterion import build_criterion



def grid(height: int, width: int) -> torch.Tensor:
    """``Tensor[H, W, 2]`` (i, j) of each cell."""
    return torch.stack(torch.meshgrid(torch.arange(width), torch.arange(height), indexing="xy"), -1).float()


def random_truths(gen: torch.Generator, batch: int, per_image: int, img: int) -> torch.Tensor:
    """``targets`` rows ``(image, class, cx, cy, w, h)``: sizes from 1% to 90% of the image, some partly outside,
    images with different numbers of truths, the last without any (in a batch of several)."""
    rows = []
    for b in range(batch):
        n = 0 if b == batch - 1 > 0 else 1 + (b * 7 + per_image) % per_image
        wh = torch.rand(n, 2, generator=gen) * 0.89 + 0.01
        cxcy = torch.rand(n, 2, generator=gen) * 1.2 - 0.1
        rows.append(torch.cat((torch.full((n, 1), float(b)), torch.zeros(n, 1), cxcy, wh), 1))
    return torch.cat(rows)


def boxes_near_truths(gen: torch.Generator, truths_xyxy: torch.Tensor, anchors: int, stride: int, size: int,
                      margin: float = 0.0) -> torch.Tensor:
    """Decoded-like boxes ``Tensor[B, A, H, W, 4]``, each centre in its cell widened by ``margin`` (some on its
    border), most sized like a truth of its image (some huge), so that many IoUs land near every threshold."""
    batch, most = truths_xyxy.shape[:2]
    cells = size // stride
    offsets = torch.rand(batch, anchors, cells, cells, 2, generator=gen) * (1 + 2 * margin) - margin
    offsets[:, 0, ::3] = -margin  # on the widened border
    offsets[:, 1, :, ::4] = 1.0 + margin
    centres = (grid(cells, cells) + offsets) * stride
    truth_wh = (truths_xyxy[..., 2:] - truths_xyxy[..., :2]).clamp(min=1.0)  # [B, T, 2]
    if most:
        pick = torch.randint(0, most, (batch, anchors, cells, cells), generator=gen)
        like = torch.gather(truth_wh, 1, pick.view(batch, -1, 1).expand(-1, -1, 2)).view(batch, anchors, cells,
                                                                                          cells, 2)
    else:
        like = torch.full((batch, anchors, cells, cells, 2), 20.0)
    sizes = like * torch.exp(torch.randn(batch, anchors, cells, cells, 2, generator=gen) * 0.15)
    sizes[:, -1, ::5, ::5] = 1e3 * size  # huge: exp(tw) at darknet's clamp
    return torch.cat((centres, sizes), -1)


def snap_onto_truths(boxes: torch.Tensor, truths_xyxy: torch.Tensor, stride: int) -> None:
    """Copy each truth onto the box of its centre's cell (IoU 1), where that cell is on the grid."""
    cells = boxes.shape[2]
    for b in range(truths_xyxy.shape[0]):
        for t, box in enumerate(truths_xyxy[b]):
            cxcywh = torch.cat(((box[:2] + box[2:]) / 2, box[2:] - box[:2]))
            i, j = (cxcywh[:2] / stride).floor().long().tolist()
            if 0 <= i < cells and 0 <= j < cells and cxcywh[2] > 0:
                boxes[b, t % boxes.shape[1], j, i] = cxcywh


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("thresh", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_equals_all_pairs_on_every_level(batch: int, thresh: float) -> None:
    """Random truths (some past the image edge, one image without any), boxes sized like them (some huge, some on
    their cell's border, some copying a truth): the fast mask is the all-pairs mask on all three levels."""
    gen = torch.Generator().manual_seed(batch * 100 + int(thresh * 10))
    img = 128
    targets = random_truths(gen, batch, 6, img)
    truths = truths_per_image(targets, batch, (img, img))
    ignored = 0
    for stride in STRIDES:
        boxes = boxes_near_truths(gen, truths, 3, stride, img)
        snap_onto_truths(boxes, truths, stride)
        expected = _ignore_mask_all_pairs(boxes, truths, thresh)
        assert torch.equal(ignore_mask(boxes, truths, thresh, stride), expected)
        assert batch == 1 or not expected[-1].any()  # the image without truths
        ignored += int(expected.sum())
    assert ignored >= 3 * batch // 2  # the cases really occur


@pytest.mark.parametrize("margin", [0.5, 0.05])
def test_equals_all_pairs_with_a_margin(margin: float) -> None:
    """YOLOv5's decode (margin 0.5) and scale_x_y 1.1 (0.05): centres outside their cell, some on the border of
    the widened cell."""
    gen = torch.Generator().manual_seed(int(margin * 100))
    img, batch = 96, 8
    truths = truths_per_image(random_truths(gen, batch, 5, img), batch, (img, img))
    for stride in STRIDES:
        boxes = boxes_near_truths(gen, truths, 3, stride, img, margin)
        for thresh in (0.5, 0.7):
            expected = _ignore_mask_all_pairs(boxes, truths, thresh)
            assert torch.equal(ignore_mask(boxes, truths, thresh, stride, margin), expected)


@pytest.mark.parametrize("thresh", [0.5, 0.7])
def test_exact_ties_at_the_threshold(thresh: float) -> None:
    """IoU exactly at the threshold (not ignored: the rule is strict) and one unit in the last place either side,
    inside the window of candidate centres and on its very edge (a box that is the truth widened by 2d on one
    side, d = (1 - t) / (2t) of its width, has IoU t; its centre lies d from the truth's). Boxes and truths are
    on cell borders. The float IoUs of these pairs are checked to really tie."""
    stride, cells = 8, 16
    # truth 16..72 x 16..72 (56 = 14 * 4 px: d = 12 at 0.7, 28 at 0.5); cell borders every 8 px
    truth = torch.tensor([16.0, 16.0, 72.0, 72.0])
    wide = 56.0 * (1.0 - thresh) / thresh  # how much wider a box with IoU t is
    ratio = torch.tensor(thresh, dtype=torch.float32)
    tall = float(56.0 * ratio)  # a box 56 x (56 t) inside the truth: IoU t
    candidates = [
        (16.0, 16.0, 72.0 + wide, 72.0),  # widened to the right: centre on the window's edge
        (16.0 - wide, 16.0, 72.0, 72.0),  # to the left
        (16.0, 16.0, 72.0, 72.0 + wide),  # downwards
        (16.0, 16.0, 72.0, 16.0 + tall),  # inside, IoU t
    ]
    rows = []
    for x1, y1, x2, y2 in candidates:
        for nudge in (-1, 0, 1):  # one unit in the last place smaller, exact, larger
            far = torch.nextafter(torch.tensor(x2), torch.tensor(x2 + nudge)) if nudge else torch.tensor(x2)
            rows.append(torch.tensor([x1, y1, float(far), y2]))
            far = torch.nextafter(torch.tensor(y2), torch.tensor(y2 + nudge)) if nudge else torch.tensor(y2)
            rows.append(torch.tensor([x1, y1, x2, float(far)]))
    xyxy = torch.stack(rows)
    ious = box_iou_pairwise(xyxy, truth[None])
    assert (ious == ratio).sum() >= 4 and (ious > ratio).any()  # exact ties, and their neighbours
    boxes = torch.zeros(1, len(rows), cells, cells, 4)
    boxes[..., 2:] = 1.0  # tiny boxes elsewhere
    boxes[..., :2] = (grid(cells, cells) + 0.5) * stride
    cxcywh = torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1)
    for k, box in enumerate(cxcywh):  # each in the cell of its centre (a centre on a border: either cell)
        for i, j in ((box[0] / stride).floor(), (box[1] / stride).floor()), ((box[0] / stride).ceil() - 1,
                                                                             (box[1] / stride).ceil() - 1):
            boxes[0, k, int(j), int(i)] = box
    truths = truth.view(1, 1, 4)
    expected = _ignore_mask_all_pairs(boxes, truths, thresh)
    assert torch.equal(ignore_mask(boxes, truths, thresh, stride), expected)
    assert expected.any()


def test_dyadic_grid_of_ties() -> None:
    """Boxes and truths on a quarter-pixel lattice give exactly representable IoUs; each truth's left and top
    halves (IoU 0.5 exactly) sit in the cells of their centres. At 0.5 and 0.7 the fast and all-pairs masks agree,
    with truths flush with the image edges."""
    gen = torch.Generator().manual_seed(5)
    stride, cells, batch = 8, 8, 16
    lattice = lambda *shape: torch.randint(0, 4 * cells * stride, shape, generator=gen).float() / 4  # noqa: E731
    corners = torch.sort(lattice(batch, 4, 2, 2), dim=2).values  # [B, T, (lo, hi), (x, y)]
    truths = corners.view(batch, 4, 4)[..., [0, 2, 1, 3]]  # x1, y1, x2, y2
    truths[:, 0] = torch.tensor([0.0, 0.0, cells * stride, cells * stride])  # the whole image
    truths[:, 1, :2] = 0.0  # flush with the top-left corner
    truths = truths.contiguous()
    centres = (grid(cells, cells) + torch.randint(0, 5, (batch, 3, cells, cells, 2), generator=gen) / 4) * stride
    wh = (torch.randint(1, 4 * cells * stride, (batch, 3, cells, cells, 2), generator=gen) / 4).float()
    boxes = torch.cat((centres, wh), -1)
    snap_onto_truths(boxes, truths, stride)
    for b in range(batch):
        for t, (x1, y1, x2, y2) in enumerate(truths[b].tolist()):
            for anchor, half in ((1, (x1, y1, (x1 + x2) / 2, y2)), (2, (x1, y1, x2, (y1 + y2) / 2))):
                cxcywh = torch.tensor([(half[0] + half[2]) / 2, (half[1] + half[3]) / 2, half[2] - half[0],
                                       half[3] - half[1]])
                i, j = (cxcywh[:2] / stride).floor().long().clamp(0, cells - 1).tolist()
                if (t + b) % 2:  # half of them
                    boxes[b, anchor, j, i] = cxcywh
    xyxy = box_cxcywh_to_xyxy(boxes).view(batch, -1, 1, 4)
    ious = box_iou_pairwise(xyxy, truths[:, None])
    assert (ious == 0.5).sum() >= 1
    for thresh in (0.5, 0.7):
        assert torch.equal(ignore_mask(boxes, truths, thresh, stride), _ignore_mask_all_pairs(boxes, truths, thresh))


def test_no_truths_and_degenerate_truths() -> None:
    """A batch without truths ignores nothing; zero-size truths (padding) are skipped; a truth of negative size
    or a non-finite one sends the mask to the all-pairs rule, whose NaN IoU it reproduces; NaN boxes (a diverged
    network) are never ignored, in either rule."""
    gen = torch.Generator().manual_seed(2)
    stride, cells, batch = 16, 6, 3
    boxes = boxes_near_truths(gen, torch.zeros(batch, 0, 4), 3, stride, stride * cells)
    empty = torch.zeros(batch, 0, 4)
    assert not ignore_mask(boxes, empty, 0.5, stride).any()
    assert ignore_mask(boxes, empty, 0.5, stride).shape == (batch, 3, cells, cells)
    truths = truths_per_image(random_truths(gen, batch, 4, stride * cells), batch, (stride * cells,) * 2)
    boxes = boxes_near_truths(gen, truths, 3, stride, stride * cells)
    snap_onto_truths(boxes, truths, stride)
    boxes[1, 0, 0, 0] = float("nan")
    for special in (None, [2.0, 2.0, 2.0, 9.0], [9.0, 2.0, 2.0, 9.0], [float("inf"), 0.0, 1.0, 1.0]):
        changed = truths.clone()
        if special is not None:
            changed[2, 0] = torch.tensor(special)
        for thresh in (0.5, 0.7):
            expected = _ignore_mask_all_pairs(boxes, changed, thresh)
            assert torch.equal(ignore_mask(boxes, changed, thresh, stride), expected)
            assert not expected[1, 0, 0, 0]


def test_prior_boxes_shared_by_the_batch() -> None:
    """The paper's rule: anchor boxes at the cell centres, one set for the whole batch, at each level."""
    gen = torch.Generator().manual_seed(4)
    img, batch = 416, 5
    truths = truths_per_image(random_truths(gen, batch, 8, img), batch, (img, img))
    for level, stride in enumerate(STRIDES):
        anchors = torch.tensor(YOLOV3_ANCHORS[3 * level:3 * level + 3], dtype=torch.float32)
        prior = anchor_boxes_at_cells(anchors, stride, img // stride, img // stride)
        for thresh in (0.3, 0.5, 0.7):
            expected = _ignore_mask_all_pairs(prior.unsqueeze(0), truths, thresh)
            assert torch.equal(ignore_mask(prior, truths, thresh, stride), expected)


@pytest.mark.parametrize("box_dtype, truth_dtype", [(torch.float32, torch.float64), (torch.float64, torch.float32),
                                                    (torch.float16, torch.float32), (torch.bfloat16, torch.float32)])
def test_mixed_and_half_precision(box_dtype: torch.dtype, truth_dtype: torch.dtype) -> None:
    """Boxes and truths of other dtypes are promoted (half precision upcast) as the all-pairs rule does; boxes
    that require grad are read without it."""
    gen = torch.Generator().manual_seed(6)
    img, batch, stride = 64, 4, 8
    truths = truths_per_image(random_truths(gen, batch, 5, img), batch, (img, img))
    boxes = boxes_near_truths(gen, truths, 3, stride, img)
    snap_onto_truths(boxes, truths, stride)
    boxes = boxes.to(box_dtype).requires_grad_()
    truths = truths.to(truth_dtype)
    for thresh in (0.5, 0.7):
        expected = _ignore_mask_all_pairs(boxes.detach(), truths, thresh)
        assert expected.any()
        assert torch.equal(ignore_mask(boxes, truths, thresh, stride), expected)


@pytest.mark.parametrize("preset, truth_px", [(dict(ignore="prediction", ignore_thresh=0.7), 64.0),
                                              (dict(ignore="prediction", ignore_thresh=0.5), 64.0),
                                              (dict(ignore="prior", ignore_thresh=0.5), 40.0)])
def test_criterion_loss_and_gradient_as_with_all_pairs(monkeypatch, preset, truth_px) -> None:
    """The criterion gives the same loss and gradient, bit for bit, with the all-pairs rule in place of the fast
    one: the mask has no gradient and is the same mask. Every predicted box is about 64 px square and so are the
    truths (40 px for the prior rule: two of the largest anchors pass 0.5), so that many negatives are ignored."""
    img, batch, num_classes = 128, 8, 4
    gen = torch.Generator().manual_seed(8)
    anchors = [torch.tensor(YOLOV3_ANCHORS[3 * k:3 * k + 3], dtype=torch.float32) * img / 416 for k in range(3)]
    cfg = LossConfig(**preset)
    head = HeadSpec.from_anchors(anchors, strides=STRIDES, num_classes=num_classes,
                                 class_activation=class_activation(cfg.cls))
    criterion = build_criterion(cfg, head)
    targets = random_truths(gen, batch, 6, img)
    targets[:, 2:4] = targets[:, 2:4].clamp(0.01, 0.99)  # centres on the image, as the data gives them
    targets[:, 1] = torch.randint(0, num_classes, (targets.shape[0],), generator=gen).float()
    targets[:, 4:6] = truth_px / img * torch.exp(0.05 * torch.randn(targets.shape[0], 2, generator=gen))
    preds = []
    for level, stride in enumerate(STRIDES):
        raw = 0.3 * torch.randn(batch, 3, 5 + num_classes, img // stride, img // stride, generator=gen)
        raw[:, :, 2:4] += torch.log(64.0 / anchors[level]).view(1, 3, 2, 1, 1)
        preds.append(raw.view(batch, -1, img // stride, img // stride).requires_grad_())

    def loss_and_grads():
        for p in preds:
            p.grad = None
        result = criterion(preds, targets, img)
        result.total.backward()
        return result, [p.grad.clone() for p in preds]

    fast, fast_grads = loss_and_grads()
    calls = []

    def all_pairs(boxes, truths, thresh, stride, margin=0.0):
        calls.append(stride)
        return _ignore_mask_all_pairs(boxes if boxes.dim() == 5 else boxes.unsqueeze(0), truths, thresh)

    monkeypatch.setattr(criterion_module, "ignore_mask", all_pairs)
    slow, slow_grads = loss_and_grads()
    assert calls == list(STRIDES)
    assert torch.equal(fast.total, slow.total)
    assert torch.equal(fast.diagnostics["ignored"], slow.diagnostics["ignored"])
    assert fast.diagnostics["ignored"].sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(fast_grads, slow_grads))


def test_below_the_sparse_threshold_and_unbounded_margin_compare_every_pair() -> None:
    """At thresh 0.05 (below :data:`SPARSE_IGNORE_MIN_THRESH`) and with the linear decode's unbounded margin the
    rule is the all-pairs one."""
    gen = torch.Generator().manual_seed(9)
    img, batch, stride = 64, 3, 16
    truths = truths_per_image(random_truths(gen, batch, 3, img), batch, (img, img))
    boxes = boxes_near_truths(gen, truths, 3, stride, img)
    assert torch.equal(ignore_mask(boxes, truths, 0.05, stride), _ignore_mask_all_pairs(boxes, truths, 0.05))
    assert torch.equal(ignore_mask(boxes, truths, 0.7, stride, math.inf), _ignore_mask_all_pairs(boxes, truths, 0.7))


def place_in_cells(pairs_box_xyxy: torch.Tensor, stride: int, cells: int) -> torch.Tensor:
    """One image per box: ``Tensor[K, 1, cells, cells, 4]`` with the box in the cell of its centre and tiny boxes
    (which pass no threshold) elsewhere."""
    count = pairs_box_xyxy.shape[0]
    boxes = torch.zeros(count, 1, cells, cells, 4, dtype=pairs_box_xyxy.dtype)
    boxes[..., :2] = (grid(cells, cells) + 0.5) * stride
    boxes[..., 2:] = 1e-3
    cxcywh = torch.cat(((pairs_box_xyxy[:, :2] + pairs_box_xyxy[:, 2:]) / 2,
                        pairs_box_xyxy[:, 2:] - pairs_box_xyxy[:, :2]), 1)
    cell = (cxcywh[:, :2] / stride).floor().long().clamp(0, cells - 1)
    boxes[torch.arange(count), 0, cell[:, 1], cell[:, 0]] = cxcywh
    return boxes


@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7, 0.9])
def test_centres_on_the_edge_of_the_window(thresh: float) -> None:
    """A box that is its truth widened by 2d on one side (left, right, up or down) has IoU wT / (wT + 2d): with
    d from 0.9 to 1.1 times the window's half width (1 - t) / (2t) * wT its IoU is just above or below t and its
    centre right at the window's edge. A window any narrower than the bound would miss the first ones."""
    gen = torch.Generator().manual_seed(int(thresh * 10))
    stride, cells, count = 8, 24, 400
    size = torch.rand(count, 2, generator=gen) * 40 + 4
    lo = torch.rand(count, 2, generator=gen) * (cells * stride - size) * 0.5 + size
    truth = torch.cat((lo, lo + size), 1)
    fraction = 1.0 + torch.linspace(-0.1, 0.1, count)[torch.randperm(count, generator=gen)]
    axis = torch.randint(0, 2, (count,), generator=gen)
    side = torch.randint(0, 2, (count,), generator=gen)  # 0: widen the low side, 1: the high side
    widen = 2 * fraction * size[torch.arange(count), axis] * (1 - thresh) / (2 * thresh)
    box = truth.clone()
    column = axis + 2 * side
    box[torch.arange(count), column] += torch.where(side == 1, widen, -widen)
    boxes = place_in_cells(box, stride, cells)
    truths = truth.view(count, 1, 4)
    expected = _ignore_mask_all_pairs(boxes, truths, thresh)
    assert 0.3 * count < expected.sum() < 0.7 * count
    assert torch.equal(ignore_mask(boxes, truths, thresh, stride), expected)


@pytest.mark.parametrize("thresh", [0.5, 0.7])
def test_pairs_that_only_the_exact_arithmetic_decides(thresh: float) -> None:
    """Among many (box, truth) pairs within a few units in the last place of the threshold, the ones whose
    outcome changes with the order of the union's terms, without the 1e-7 (sub-pixel truths), or with the
    division-free comparison inter * (1 + t) > t * (area_a + area_b): the fast rule decides each as the
    all-pairs rule does, so it computes the IoU with the very same float operations."""
    gen = torch.Generator().manual_seed(int(thresh * 10) + 1)
    count = 200_000
    size = torch.exp(torch.rand(count, 2, generator=gen) * 7 - 4)  # 0.02 to 20 px: the 1e-7 matters below ~1
    lo = torch.rand(count, 2, generator=gen) * 40 + size
    truth = torch.cat((lo, lo + size), 1)
    # a box inside the truth, its full width and a fraction of its height: IoU = that fraction
    height = size[:, 1] * thresh * (1 + (torch.rand(count, generator=gen) - 0.5) * 1e-5)
    box = truth.clone()
    box[:, 3] = box[:, 1] + height
    shift = torch.rand(count, generator=gen) * (size[:, 1] - height)
    box[:, 1] += shift
    box[:, 3] += shift
    box = box_cxcywh_to_xyxy(torch.cat(((box[:, :2] + box[:, 2:]) / 2, box[:, 2:] - box[:, :2]), 1))
    exact = box_iou_pairwise(box, truth) > thresh
    ow = (torch.minimum(box[:, 2], truth[:, 2]) - torch.maximum(box[:, 0], truth[:, 0])).clamp(min=0)
    oh = (torch.minimum(box[:, 3], truth[:, 3]) - torch.maximum(box[:, 1], truth[:, 1])).clamp(min=0)
    inter = ow * oh
    area_a = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    area_b = (truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1])
    others = [inter / (area_a + (area_b - inter) + 1e-7) > thresh, inter / (area_a + area_b - inter) > thresh,
              inter * (1 + thresh) > thresh * (area_a + area_b)]
    chosen = torch.zeros(count, dtype=torch.bool)
    for other in others:
        differs = other != exact
        assert differs.any()  # each alternative arithmetic decides some pair otherwise
        chosen |= differs
    box, truth = box[chosen][:300], truth[chosen][:300]
    boxes = place_in_cells(box, 8, 8)
    truths = truth.view(-1, 1, 4)
    expected = _ignore_mask_all_pairs(boxes, truths, thresh)
    assert expected.any() and not expected.all()
    assert torch.equal(ignore_mask(boxes, truths, thresh, 8), expected)


def test_a_negative_truth_whose_nan_iou_hides_a_match() -> None:
    """A truth of negative width whose area cancels a box's area and the 1e-7 exactly makes that box's IoU 0 / 0
    = NaN, so the all-pairs maximum is NaN and the box is not ignored although it copies another truth (IoU
    A / (A + 1e-7) = 0.13 for this sub-pixel box, over 0.1): the fast rule gives the same, as it sends such truths
    to the all-pairs rule."""
    eps = torch.tensor(1e-7).item()  # as float32
    area = 2.0 ** -26  # A + 1e-7 is exact in float32
    box = torch.tensor([[20.0, 0.0, 21.0, area]])  # its corners and area exact after the round trip
    cxcywh = torch.cat(((box[:, :2] + box[:, 2:]) / 2, box[:, 2:] - box[:, :2]), 1)
    boxes = torch.zeros(1, 1, 4, 4, 4)
    boxes[..., :2] = (grid(4, 4) + 0.5) * 8
    boxes[0, 0, 0, 2] = cxcywh[0]
    copy = box_cxcywh_to_xyxy(cxcywh)[0]
    truths = torch.stack((copy, torch.tensor([10.0, 0.0, 9.0, area + eps]))).view(1, 2, 4)
    iou = box_iou_pairwise(box_cxcywh_to_xyxy(boxes[0, 0, 0, 2]), truths[0])
    assert iou[0] > 0.1 and iou[1].isnan()
    expected = _ignore_mask_all_pairs(boxes, truths, 0.1)
    assert not expected.any()
    assert torch.equal(ignore_mask(boxes, truths, 0.1, 8), expected)
    assert ignore_mask(boxes, truths[:, :1], 0.1, 8)[0, 0, 0, 2]  # without it, the copy is ignored


def test_small_chunks(monkeypatch) -> None:
    """The pairs are compared a chunk at a time: chunks of 5 pairs (the last one shorter) give the same masks,
    for decoded boxes and for the prior rule's shared ones."""
    monkeypatch.setattr(assign_module, "IGNORE_CHUNK", 5)
    gen = torch.Generator().manual_seed(11)
    img, batch, stride = 64, 4, 16
    truths = truths_per_image(random_truths(gen, batch, 4, img), batch, (img, img))
    boxes = boxes_near_truths(gen, truths, 3, stride, img)
    snap_onto_truths(boxes, truths, stride)
    prior = anchor_boxes_at_cells(torch.tensor([[20.0, 30.0], [40.0, 40.0], [60.0, 50.0]]), stride, 4, 4)
    for thresh in (0.3, 0.5, 0.7):
        expected = _ignore_mask_all_pairs(boxes, truths, thresh)
        assert expected.any()
        assert torch.equal(ignore_mask(boxes, truths, thresh, stride), expected)
        assert torch.equal(ignore_mask(prior, truths, thresh, stride),
                           _ignore_mask_all_pairs(prior.unsqueeze(0), truths, thresh))
