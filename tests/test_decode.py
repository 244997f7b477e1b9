"""The shared decode: hand-computed boxes, anchor-major ordering, the exp clamp, level concatenation and an
encode/decode round trip."""

from __future__ import annotations

import math

import pytest
import torch

from yolo_loss.decode import (MAX_LOG_WH, centre_margin, decode_cxcywh, decode_level, grid_xy, per_anchor_view,
                               xy_sigmoid_target)
from yolo_loss.head import HeadSpec, decode_predictions

ANCHORS = torch.tensor([[10.0, 13.0], [20.0, 30.0]])  # A = 2


def head_map(num_anchors: int, num_classes: int, height: int, width: int, batch: int = 1,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A zero ``Tensor[B, A * (5 + C), H, W]`` head map; :func:`set_raw` writes one anchor's channels at a cell."""
    return torch.zeros(batch, num_anchors * (5 + num_classes), height, width, dtype=dtype)


def set_raw(pred: torch.Tensor, num_anchors: int, *, anchor: int, row: int, col: int, values: list[float],
            image: int = 0) -> None:
    per_anchor_view(pred, num_anchors)[image, anchor, :len(values), row, col] = torch.tensor(values, dtype=pred.dtype)


def test_decode_level_hand_values():
    """Stride 8, anchor 1 (20 x 30), row j = 1, column i = 2 of a 2 x 3 map, with
    tx = 0, ty = ln 3, tw = ln 2, th = 0, to = 1.5, tc = (-2, 3):
    cx = (2 + sig(0)) * 8 = 20, cy = (1 + sig(ln 3)) * 8 = (1 + 3/4) * 8 = 14, w = 20 * 2 = 40, h = 30 * 1 = 30;
    its row is a * H * W + j * W + i = 6 + 3 + 2 = 11. An all-zero cell (anchor 0, row 0, column 0, row index 0)
    decodes to (4, 4, 10, 13)."""
    pred = head_map(2, 2, height=2, width=3)
    set_raw(pred, 2, anchor=1, row=1, col=2, values=[0.0, math.log(3.0), math.log(2.0), 0.0, 1.5, -2.0, 3.0])
    boxes, obj_logits, cls_logits = decode_level(pred, ANCHORS, stride=8)
    assert boxes.shape == (1, 12, 4) and obj_logits.shape == (1, 12) and cls_logits.shape == (1, 12, 2)
    assert torch.allclose(boxes[0, 11], torch.tensor([20.0, 14.0, 40.0, 30.0]))
    assert obj_logits[0, 11] == 1.5
    assert torch.equal(cls_logits[0, 11], torch.tensor([-2.0, 3.0]))
    assert torch.allclose(boxes[0, 0], torch.tensor([4.0, 4.0, 10.0, 13.0]))
    # Only row 11 was set: every other objectness and class logit stays 0.
    assert torch.count_nonzero(obj_logits) == 1 and torch.count_nonzero(cls_logits) == 2


def test_decode_level_is_anchor_major():
    """Write the code ``100 a + 10 j + i`` into each objectness channel (and ``-code`` into class 0 of image 1):
    the decoded rows must read the codes in (a, j, i) order, and the box centres must walk the grid the same way."""
    num_anchors, height, width = 2, 3, 4
    pred = head_map(num_anchors, 1, height, width, batch=2)
    view = per_anchor_view(pred, num_anchors)
    expected = []
    for a in range(num_anchors):
        for j in range(height):
            for i in range(width):
                code = 100.0 * a + 10.0 * j + i
                view[0, a, 4, j, i] = code
                view[1, a, 5, j, i] = -code
                expected.append((code, i, j, a))
    boxes, obj_logits, cls_logits = decode_level(pred, ANCHORS, stride=16)
    codes = torch.tensor([e[0] for e in expected])
    assert torch.equal(obj_logits[0], codes)
    assert torch.equal(cls_logits[1, :, 0], -codes)
    # Raw box values are 0, so each centre is the middle of its cell and each size its anchor's.
    centres = torch.tensor([[(i + 0.5) * 16, (j + 0.5) * 16] for _, i, j, _ in expected])
    sizes = torch.stack([ANCHORS[a] for *_, a in expected])
    assert torch.allclose(boxes[0], torch.cat((centres, sizes), dim=1))
    assert torch.equal(boxes[0], boxes[1])


def test_grid_xy_is_column_then_row():
    grid = grid_xy(2, 3)
    assert grid.shape == (2, 3, 2)
    assert grid[1, 2].tolist() == [2.0, 1.0]  # (i, j) = (column 2, row 1)


def test_exp_is_clamped():
    """tw = 1e4 would overflow exp; the clamp at ln(1e3) gives w = 1000 a_w, finite, with a finite gradient."""
    raw = head_map(2, 1, height=1, width=1)
    set_raw(raw, 2, anchor=0, row=0, col=0, values=[0.0, 0.0, 1e4, 1e4])
    raw.requires_grad_()
    boxes, _, _ = decode_level(raw, ANCHORS, stride=32)
    assert torch.isfinite(boxes).all()
    assert math.isclose(MAX_LOG_WH, math.log(1e3))
    assert torch.allclose(boxes[0, 0, 2:], ANCHORS[0] * 1e3, rtol=1e-5)
    boxes.sum().backward()
    assert torch.isfinite(raw.grad).all()


def test_channels_not_a_multiple_of_the_anchors_are_rejected():
    with pytest.raises(ValueError, match="not a multiple of 3 anchors"):
        per_anchor_view(torch.zeros(1, 16, 2, 2), 3)


def test_decode_predictions_concatenates_levels_and_applies_sigmoid():  # a sigmoid head
    """Two levels, 2 x 2 at stride 8 (A * H * W = 8 rows) and 1 x 1 at stride 16 (2 rows): a value set at anchor 1
    of the second level lands at row 8 + 1 = 9, after all rows of the first level."""
    anchors = [ANCHORS, ANCHORS * 2]
    first, second = head_map(2, 3, 2, 2), head_map(2, 3, 1, 1)
    set_raw(first, 2, anchor=0, row=1, col=1, values=[0.0, 0.0, 0.0, 0.0, math.log(3.0), 0.0, 0.0, 2.0])
    set_raw(second, 2, anchor=1, row=0, col=0, values=[0.0, 0.0, math.log(0.5), 0.0, -math.log(3.0), 5.0])
    boxes, obj, cls = decode_predictions([first, second], HeadSpec.from_anchors(anchors, strides=(8, 16),
                                                                                num_classes=3))
    assert boxes.shape == (1, 10, 4) and obj.shape == (1, 10) and cls.shape == (1, 10, 3)
    # First level, anchor 0, row 1, column 1: row 3; sig(ln 3) = 0.75, sig(2) for class 2.
    assert torch.allclose(boxes[0, 3], torch.tensor([12.0, 12.0, 10.0, 13.0]))
    assert math.isclose(float(obj[0, 3]), 0.75, rel_tol=1e-6)
    assert math.isclose(float(cls[0, 3, 2]), 1 / (1 + math.exp(-2.0)), rel_tol=1e-6)
    # Second level, anchor 1 (40 x 60): centre (0.5 * 16, 0.5 * 16), w = 40 * 0.5; sig(-ln 3) = 0.25.
    assert torch.allclose(boxes[0, 9], torch.tensor([8.0, 8.0, 20.0, 60.0]))
    assert math.isclose(float(obj[0, 9]), 0.25, rel_tol=1e-6)
    assert math.isclose(float(cls[0, 9, 0]), 1 / (1 + math.exp(-5.0)), rel_tol=1e-6)
    # Every untouched row has probability sig(0) = 0.5.
    untouched = torch.ones(10, dtype=torch.bool)
    untouched[[3, 9]] = False
    assert torch.equal(obj[0, untouched], torch.full((8,), 0.5))


def test_encode_decode_round_trip():
    """For random boxes, encode as in target assignment: cell (i, j) = floor(c / stride), tx = logit(cx / stride - i),
    tw = ln(w / a_w); decoding gives the box back."""
    gen = torch.Generator().manual_seed(0)
    stride, height, width = 16, 5, 7
    anchors = torch.tensor([[30.0, 61.0], [62.0, 45.0], [59.0, 119.0]], dtype=torch.float64)
    pred = head_map(3, 0, height, width, batch=2, dtype=torch.float64)
    view = per_anchor_view(pred, 3)
    cells_taken: set[tuple[int, int, int, int]] = set()
    expected = []
    while len(expected) < 12:
        image, anchor = int(torch.randint(2, (1,), generator=gen)), int(torch.randint(3, (1,), generator=gen))
        cx, cy = (torch.rand(2, generator=gen, dtype=torch.float64) * torch.tensor([width, height]) * stride).tolist()
        w, h = (torch.rand(2, generator=gen, dtype=torch.float64) * 150 + 2).tolist()
        i, j = math.floor(cx / stride), math.floor(cy / stride)
        if (image, anchor, j, i) in cells_taken:
            continue
        cells_taken.add((image, anchor, j, i))
        gx, gy = cx / stride - i, cy / stride - j
        view[image, anchor, :4, j, i] = torch.tensor([
            math.log(gx / (1 - gx)), math.log(gy / (1 - gy)),
            math.log(w / anchors[anchor, 0]), math.log(h / anchors[anchor, 1])], dtype=torch.float64)
        expected.append((image, anchor * height * width + j * width + i, [cx, cy, w, h]))
    boxes, _, _ = decode_level(pred, anchors, stride)
    for image, row, box in expected:
        assert torch.allclose(boxes[image, row], torch.tensor(box, dtype=torch.float64), rtol=1e-10, atol=1e-9)


def test_yolov5_and_scale_x_y_decode_hand_values():
    """Stride 8, cell (2, 1), anchor (20, 30), tx = 0, ty = ln 3, tw = 0, th = ln 3:
    YOLOv5: cx = (2 + 2 * 0.5 - 0.5) * 8 = 20, cy = (1 + 2 * 0.75 - 0.5) * 8 = 16, w = 20 * (2 * 0.5)^2 = 20,
    h = 30 * 1.5^2 = 67.5; darknet with scale_x_y 1.2: cx = (2 + 1.2 * 0.5 - 0.1) * 8 = 20,
    cy = (1 + 1.2 * 0.75 - 0.1) * 8 = 14.4, w = 20, h = 90."""
    raw = torch.tensor([0.0, math.log(3.0), 0.0, math.log(3.0)])
    cell, anchor = torch.tensor([2.0, 1.0]), torch.tensor([20.0, 30.0])
    torch.testing.assert_close(decode_cxcywh(raw, cell, anchor, 8, rule="yolov5"),
                               torch.tensor([20.0, 16.0, 20.0, 67.5]))
    torch.testing.assert_close(decode_cxcywh(raw, cell, anchor, 8, scale_x_y=1.2),
                               torch.tensor([20.0, 14.4, 20.0, 90.0]))
    head = HeadSpec.from_anchors([ANCHORS], strides=(8,), num_classes=2, decode="yolov5")
    pred = head_map(2, 2, height=2, width=3)
    set_raw(pred, 2, anchor=1, row=1, col=2, values=raw.tolist())
    boxes, _, _ = decode_predictions([pred], head)  # inference decodes by the head's rule
    torch.testing.assert_close(boxes[0, 11], torch.tensor([20.0, 16.0, 20.0, 67.5]))


@pytest.mark.parametrize("rule, scale", [("darknet", 1.0), ("darknet", 1.2), ("darknet", 1.05), ("yolov5", 1.0)])
def test_centre_margin_and_xy_target_invert_the_decode(rule: str, scale: float):
    """Every decoded centre lies within centre_margin cells of its own cell (saturated logits reach it), and the
    x, y target decodes back onto the truth's offset, for offsets across [-margin, 1 + margin)."""
    margin = centre_margin(rule, scale)
    extremes = decode_cxcywh(torch.tensor([[-30.0, 30.0, 0.0, 0.0]]), torch.zeros(2), torch.ones(2), 1.0,
                             rule=rule, scale_x_y=scale)[0, :2]
    torch.testing.assert_close(extremes, torch.tensor([-margin, 1.0 + margin]))
    offsets = torch.linspace(-margin, 1 + margin, 41, dtype=torch.float64)[:-1].view(-1, 1).expand(-1, 2)
    target = xy_sigmoid_target(offsets, rule, scale)
    assert (target >= 0).all() and (target < 1).all()
    raw = torch.cat((torch.logit(target), torch.zeros_like(target)), -1)
    decoded = decode_cxcywh(raw, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), 1.0,
                            rule=rule, scale_x_y=scale)
    torch.testing.assert_close(decoded[:, :2], offsets, rtol=0, atol=1e-9)


def test_linear_decode_hand_values_and_inverse():
    """The YOLOv3 paper's linear x, y: stride 8, cell (2, 1), anchor (20, 30), tx = 0.25, ty = -0.5 (a centre
    outside its cell is allowed), tw = 0, th = ln 3: cx = (2 + 0.25) * 8 = 18, cy = (1 - 0.5) * 8 = 4, w = 20,
    h = 90. No margin bounds a centre, and the x, y target is the offset itself."""
    raw = torch.tensor([0.25, -0.5, 0.0, math.log(3.0)])
    torch.testing.assert_close(decode_cxcywh(raw, torch.tensor([2.0, 1.0]), torch.tensor([20.0, 30.0]), 8,
                                             rule="linear"), torch.tensor([18.0, 4.0, 20.0, 90.0]))
    assert centre_margin("linear") == math.inf
    offsets = torch.tensor([[0.0, 0.999], [-0.3, 1.7]])
    assert torch.equal(xy_sigmoid_target(offsets, "linear"), offsets)
    head = HeadSpec.from_anchors([ANCHORS], strides=(8,), num_classes=2, decode="linear")
    pred = head_map(2, 2, height=2, width=3)
    set_raw(pred, 2, anchor=1, row=1, col=2, values=raw.tolist())
    boxes, _, _ = decode_predictions([pred], head)  # inference decodes by the head's rule
    torch.testing.assert_close(boxes[0, 11], torch.tensor([18.0, 4.0, ANCHORS[1][0], ANCHORS[1][1] * 3.0]))


def test_head_refuses_scale_x_y_with_the_yolov5_decode():
    with pytest.raises(ValueError, match="scale_x_y"):
        HeadSpec.from_anchors([ANCHORS], strides=(8,), num_classes=2, decode="yolov5", scale_x_y=(1.2,))
    with pytest.raises(ValueError, match="scale_x_y"):
        HeadSpec.from_anchors([ANCHORS], strides=(8,), num_classes=2, decode="linear", scale_x_y=(1.2,))
    with pytest.raises(ValueError, match="decode"):
        HeadSpec.from_anchors([ANCHORS], strides=(8,), num_classes=2, decode="v7")
