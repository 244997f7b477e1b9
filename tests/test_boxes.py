"""The IoU family against torchvision.ops, hand-worked values, identities and degenerate boxes."""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import pytest
import torch
from torchvision import ops

from yolo_loss.boxes import (alpha_ciou_loss, box_cxcywh_to_xyxy, box_iou_pairwise, box_xyxy_to_cxcywh, ciou_loss,
                             diou_loss, eiou_loss, focal_eiou_loss, iou_loss, log_iou_loss, siou_loss, wiou_loss)
from yolo_loss.config.components import COMPONENTS
from yolo_loss.config.schema import LossConfig
from yolo_loss.losses.registry import FUNCTIONS

# From the registry; Wise-IoU takes the criterion's running mean of 1 - IoU, and MPDIoU the input size (here a 16 x 12
# image, for boxes in a 10 x 10 field), fixed here. The box losses of the decoded box (ciou_darknet, whose gradient
# goes to the raw outputs instead, has its own tests in test_ciou_darknet.py).
BOX_LOSSES = {entry.name: partial(FUNCTIONS["box", entry.name],
                                  **({"iou_mean": torch.tensor(0.7)} if entry.running_mean else {}),
                                  **({"img_wh": (16, 12)} if entry.image_size else {}))
              for entry in COMPONENTS if entry.term == "box" and not entry.raw_box}
TORCHVISION_LOSSES = {
    "giou": ops.generalized_box_iou_loss,
    "diou": ops.distance_box_iou_loss,
    "ciou": ops.complete_box_iou_loss,
}


def random_boxes_xyxy(n: int, seed: int, min_size: float = 0.0) -> torch.Tensor:
    """``Tensor[n, 4]`` float64 xyxy boxes in a 10 x 10 field, sides in [min_size, min_size + 6)."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 10
    wh = min_size + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 6
    return torch.cat((xy, xy + wh), dim=-1)


def degenerate_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (pred, target) that break naive formulas: zero width, height or area, disjoint, identical,
    contained, touching edges, and zero-area boxes on top of each other."""
    pairs = [
        ((0, 0, 2, 2), (0, 0, 2, 2)),  # identical
        ((1, 1, 3, 3), (0, 0, 5, 5)),  # contained
        ((0, 0, 5, 5), (1, 1, 3, 3)),  # containing
        ((0, 0, 1, 1), (4, 5, 6, 8)),  # disjoint
        ((0, 0, 1, 1), (1, 0, 2, 1)),  # touching edges
        ((2, 2, 2, 2), (0, 0, 4, 4)),  # zero-area point inside the target
        ((0, 0, 3, 0), (0, 0, 3, 2)),  # zero height
        ((0, 0, 0, 3), (0, 0, 2, 3)),  # zero width
        ((1, 1, 1, 1), (1, 1, 1, 1)),  # identical points
        ((1, 1, 1, 1), (3, 3, 3, 3)),  # two distinct points
        ((0, 0, 4, 0), (0, 0, 4, 0)),  # identical zero-height segments
    ]
    pred, target = zip(*pairs)
    return torch.tensor(pred, dtype=torch.float64), torch.tensor(target, dtype=torch.float64)


def test_box_losses_are_the_config_names():
    choices = next(f for f in dataclasses.fields(LossConfig) if f.name == "box").metadata["choices"]
    assert set(BOX_LOSSES) == set(choices) - {"none", "ciou_darknet"}
    assert all(entry.decoded_box for entry in COMPONENTS if entry.term == "box")


def test_format_round_trip_and_hand_values():
    """(cx, cy, w, h) = (2, 3, 4, 2) is the box x in [0, 4], y in [2, 4]."""
    cxcywh = torch.tensor([[2.0, 3.0, 4.0, 2.0]])
    assert torch.equal(box_cxcywh_to_xyxy(cxcywh), torch.tensor([[0.0, 2.0, 4.0, 4.0]]))
    boxes = random_boxes_xyxy(50, seed=0).view(5, 10, 4)
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(boxes)), boxes, rtol=0, atol=1e-12)


def test_hand_worked_values():
    """a = (0, 0, 2, 2), b = (1, 1, 3, 3):
    intersection 1, union 4 + 4 - 1 = 7, IoU = 1/7;
    enclosing box 3 x 3: GIoU = 1/7 - (9 - 7)/9;
    centres (1, 1) and (2, 2): rho^2 = 2, c^2 = 3^2 + 3^2 = 18, DIoU loss = 1 - 1/7 + 2/18;
    both boxes square, so v = 0 and CIoU loss = DIoU loss."""
    a = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64)
    expected = {
        "iou": 1 - 1 / 7,
        "log_iou": math.log(7),
        "giou": 1 - (1 / 7 - 2 / 9),
        "diou": 1 - 1 / 7 + 2 / 18,
        "ciou": 1 - 1 / 7 + 2 / 18,
    }
    assert box_iou_pairwise(a, b).item() == pytest.approx(1 / 7, abs=1e-7)
    for name, value in expected.items():
        assert BOX_LOSSES[name](a, b).item() == pytest.approx(value, abs=1e-7), name


def test_ciou_hand_worked_aspect_term():
    """pred (0, 0, 2, 2) is square, target (0, 0, 4, 2) is 2:1, same top-left corner.
    IoU = 4/8 = 1/2; centres (1, 1), (2, 1): rho^2 = 1; enclosing 4 x 2: c^2 = 20.
    v = 4/pi^2 (atan 2 - atan 1)^2, alpha = v / (1 - 1/2 + v)."""
    pred = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    target = torch.tensor([0.0, 0.0, 4.0, 2.0], dtype=torch.float64)
    v = 4 / math.pi ** 2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    expected = 1 - 0.5 + 1 / 20 + v / (0.5 + v) * v
    assert ciou_loss(pred, target).item() == pytest.approx(expected, abs=1e-7)


def test_iou_matrix_matches_torchvision_by_broadcasting():
    a, b = random_boxes_xyxy(7, seed=1), random_boxes_xyxy(5, seed=2)
    ours = box_iou_pairwise(a[:, None], b[None])
    assert ours.shape == (7, 5)
    assert (ours > 0).any() and (ours == 0).any()  # both overlapping and disjoint pairs are exercised
    torch.testing.assert_close(ours, ops.box_iou(a, b), rtol=0, atol=1e-6)


def test_iou_matrix_matches_torchvision_on_degenerate_boxes():
    pred, target = degenerate_pairs()
    ours = box_iou_pairwise(pred[:, None], target[None])
    reference = ops.box_iou(pred, target)  # 0 / 0 = NaN for two zero-area boxes: ours gives 0 there
    finite = reference.isfinite()
    assert ours.isfinite().all()
    torch.testing.assert_close(ours[finite], reference[finite], rtol=0, atol=1e-6)
    assert (ours[~finite] == 0).all()


@pytest.mark.parametrize("name", sorted(TORCHVISION_LOSSES))
def test_values_match_torchvision(name):
    pred, target = random_boxes_xyxy(200, seed=3), random_boxes_xyxy(200, seed=4)
    reference = TORCHVISION_LOSSES[name](pred, target, reduction="none", eps=1e-7)
    torch.testing.assert_close(BOX_LOSSES[name](pred, target, eps=1e-7), reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(TORCHVISION_LOSSES))
def test_values_match_torchvision_on_degenerate_boxes(name):
    pred, target = degenerate_pairs()
    ours = BOX_LOSSES[name](pred, target)
    reference = TORCHVISION_LOSSES[name](pred, target, reduction="none", eps=1e-7)
    assert ours.isfinite().all()
    # torchvision's CIoU divides by the height directly: atan(0 / 0) is NaN for zero-area points.
    finite = reference.isfinite()
    assert finite.sum() >= len(pred) - 3
    torch.testing.assert_close(ours[finite], reference[finite], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(TORCHVISION_LOSSES))
def test_gradients_match_torchvision(name):
    pred, target = random_boxes_xyxy(100, seed=5, min_size=0.1), random_boxes_xyxy(100, seed=6, min_size=0.1)
    grads = []
    for fn in (BOX_LOSSES[name], lambda p, t: TORCHVISION_LOSSES[name](p, t, reduction="none", eps=1e-7)):
        p, t = pred.clone().requires_grad_(), target.clone().requires_grad_()
        fn(p, t).sum().backward()
        grads.append((p.grad, t.grad))
    for ours, reference in zip(*grads):
        torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def test_iou_and_log_iou_are_functions_of_iou():
    pred, target = random_boxes_xyxy(100, seed=7), random_boxes_xyxy(100, seed=8)
    iou = ops.box_iou(pred, target).diagonal()
    overlapping = iou > 1e-3
    assert overlapping.sum() > 10
    torch.testing.assert_close(iou_loss(pred, target), 1 - iou, rtol=0, atol=1e-6)
    torch.testing.assert_close(log_iou_loss(pred, target)[overlapping], -iou[overlapping].log(), rtol=1e-6, atol=0)
    # Disjoint: IoU clamped at eps, so -ln(1e-7) rather than inf.
    disjoint = log_iou_loss(pred, target)[iou == 0]
    assert disjoint.numel() > 10
    torch.testing.assert_close(disjoint, torch.full_like(disjoint, -math.log(1e-7)), rtol=1e-9, atol=0)


def test_ciou_equals_diou_for_equal_aspect_ratios():
    """Boxes of one aspect ratio at different sizes and places: v = 0, so only the DIoU part remains."""
    pred = random_boxes_xyxy(50, seed=9, min_size=0.1)
    wh = pred[:, 2:] - pred[:, :2]
    gen = torch.Generator().manual_seed(10)
    scale = 0.3 + 2 * torch.rand(50, 1, generator=gen, dtype=torch.float64)
    corner = pred[:, :2] + torch.randn(50, 2, generator=gen, dtype=torch.float64)
    target = torch.cat((corner, corner + wh * scale), dim=-1)
    torch.testing.assert_close(ciou_loss(pred, target), diou_loss(pred, target), rtol=0, atol=1e-12)
    assert not torch.allclose(ciou_loss(pred, pred.flip(-1).roll(2, -1)), diou_loss(pred, pred.flip(-1).roll(2, -1)))


@pytest.mark.parametrize("name", ["iou", "log_iou", "giou", "diou"])
def test_gradcheck(name):
    pred = random_boxes_xyxy(6, seed=11, min_size=0.1).requires_grad_()
    # Targets near the predictions so that most pairs overlap and the IoU terms have a gradient.
    target = (pred.detach() + 0.5 * torch.randn(6, 4, generator=torch.Generator().manual_seed(12),
                                                dtype=torch.float64))
    target = torch.cat((target[:, :2], torch.maximum(target[:, 2:], target[:, :2] + 0.1)), -1).requires_grad_()
    assert torch.autograd.gradcheck(BOX_LOSSES[name], (pred, target))


def test_ciou_gradient_treats_alpha_as_a_constant():
    """gradcheck does not apply to CIoU as such: alpha is computed without gradient on purpose. Compare the
    autograd gradient with central differences of DIoU + alpha(x0) * v(x), v written out here."""
    pred = random_boxes_xyxy(6, seed=13, min_size=0.1)
    target = random_boxes_xyxy(6, seed=14, min_size=0.1)
    target = torch.cat((pred[:, :2] + 0.3, target[:, 2:] - target[:, :2] + pred[:, :2] + 0.3), -1)

    def aspect_term(p: torch.Tensor) -> torch.Tensor:
        pred_wh, target_wh = p[:, 2:] - p[:, :2], target[:, 2:] - target[:, :2]
        return 4 / math.pi ** 2 * (torch.atan(target_wh[:, 0] / target_wh[:, 1])
                                   - torch.atan(pred_wh[:, 0] / pred_wh[:, 1])) ** 2

    iou = box_iou_pairwise(pred, target)
    v0 = aspect_term(pred)
    alpha0 = v0 / (1 - iou + v0 + 1e-7)
    assert (alpha0 > 1e-3).all()  # the aspect term is really exercised

    def frozen_alpha_ciou(p: torch.Tensor) -> torch.Tensor:
        return (diou_loss(p, target) + alpha0 * aspect_term(p)).sum()

    step = 1e-6
    numeric = torch.zeros_like(pred)
    for index in range(pred.numel()):
        delta = torch.zeros_like(pred).view(-1)
        delta[index] = step
        delta = delta.view_as(pred)
        numeric.view(-1)[index] = (frozen_alpha_ciou(pred + delta) - frozen_alpha_ciou(pred - delta)) / (2 * step)
    p = pred.clone().requires_grad_()
    ciou_loss(p, target).sum().backward()
    torch.testing.assert_close(p.grad, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(BOX_LOSSES))
def test_degenerate_boxes_give_finite_values_and_gradients(name):
    pred, target = degenerate_pairs()
    pred, target = pred.float().requires_grad_(), target.float().requires_grad_()
    loss = BOX_LOSSES[name](pred, target)
    loss.sum().backward()
    assert loss.isfinite().all() and pred.grad.isfinite().all() and target.grad.isfinite().all()
    identical = (pred == target).all(-1)
    positive_area = ((pred[:, 2:] - pred[:, :2]) > 0).all(-1)
    # Identical boxes of positive area are a perfect match: every loss is 0 there.
    assert loss[identical & positive_area].abs().max() < 1e-6


def test_half_precision_pixel_boxes_do_not_overflow():
    """Areas of 400 px boxes (1.6e5) overflow float16 (max 65504); the losses compute in float32."""
    pred = torch.tensor([[0.0, 0.0, 400.0, 400.0]])
    target = torch.tensor([[10.0, 20.0, 390.0, 410.0]])
    for name, fn in BOX_LOSSES.items():
        torch.testing.assert_close(fn(pred.half(), target.half()), fn(pred, target), rtol=1e-4, atol=1e-4,
                                   msg=name)



def test_later_losses_hand_worked_values():
    """a = (0, 0, 2, 2), b = (1, 1, 3, 3) as above (IoU 1/7, rho^2 = 2, c^2 = 18, enclosing 3 x 3, squares: v = 0):
    - EIoU adds (w - w_gt)^2 / C_w^2 + (h - h_gt)^2 / C_h^2 = 0 to DIoU: 1 - 1/7 + 2/18;
    - Focal-EIoU weighs it by IoU^0.5 = (1/7)^0.5;
    - Alpha-CIoU (alpha 3): 1 - (1/7)^3 + (2/18)^3;
    - SIoU: the offset (1, 1) is at 45 degrees, Lambda = sin(90) = 1, each axis (1/3)^2 times (2 - 1):
      Delta = 2 (1 - exp(-1/9)), Omega = 0: 1 - 1/7 + Delta / 2;
    - Wise-IoU v3 at iou_mean 6/7: beta = 1, r = 1 / (3 * 1.9^(1 - 3)), R = exp(2/18): r R (6/7).
    And b' = (1, 1, 4, 3) for EIoU: IoU 1/9, rho^2 = 2.25 + 1, enclosing 4 x 3 (c^2 = 25), w 2 vs 3 over C_w = 4."""
    a = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64)
    diou = 1 - 1 / 7 + 2 / 18
    assert eiou_loss(a, b).item() == pytest.approx(diou, abs=1e-7)
    assert focal_eiou_loss(a, b).item() == pytest.approx((1 / 7) ** 0.5 * diou, abs=1e-7)
    assert alpha_ciou_loss(a, b).item() == pytest.approx(1 - (1 / 7) ** 3 + (2 / 18) ** 3, abs=1e-7)
    assert siou_loss(a, b).item() == pytest.approx(1 - 1 / 7 + (1 - math.exp(-1 / 9)), abs=1e-7)
    assert wiou_loss(a, b, iou_mean=6 / 7).item() == pytest.approx(
        1 / (3 * 1.9 ** -2) * math.exp(2 / 18) * 6 / 7, abs=1e-6)
    wide = torch.tensor([1.0, 1.0, 4.0, 3.0], dtype=torch.float64)
    assert eiou_loss(a, wide).item() == pytest.approx(1 - 1 / 9 + 3.25 / 25 + 1 / 16, abs=1e-7)


def test_siou_angle_cost_on_an_axis_and_at_45_degrees():
    """Offsets along an axis cost the least angle (Lambda = 0: the distance term weighs 2 - 0 = 2 per axis, exp(-2
    rho_t)); an offset at 45 degrees the most (Lambda = 1). Same-size boxes (Omega = 0), so the difference between
    the two equal-length offsets (0, 1) and (0.7071, 0.7071) is in the distance cost alone."""
    box = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    on_axis = box + torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    step = 1 / math.sqrt(2)
    diagonal = box + torch.tensor([step, step, step, step], dtype=torch.float64)
    iou_axis = box_iou_pairwise(box, on_axis).item()
    assert siou_loss(box, on_axis).item() == pytest.approx(1 - iou_axis + 0.5 * (1 - math.exp(-2 * (1 / 3) ** 2)),
                                                          abs=1e-6)
    rho = (step / (2 + step)) ** 2
    iou_diagonal = box_iou_pairwise(box, diagonal).item()
    assert siou_loss(box, diagonal).item() == pytest.approx(1 - iou_diagonal + (1 - math.exp(-rho)), abs=1e-6)


def test_later_loss_identities():
    """alpha_ciou with power 1 is CIoU; focal_eiou with gamma 0 is EIoU; Wise-IoU with beta = delta (L_IoU = delta
    times the running mean) has r = 1/delta * delta / 1 = ... = beta / (delta alpha^0) = 1: it is v1, R * L_IoU."""
    pred = random_boxes_xyxy(40, seed=21, min_size=0.2)
    target = random_boxes_xyxy(40, seed=22, min_size=0.2)
    torch.testing.assert_close(alpha_ciou_loss(pred, target, power=1.0), ciou_loss(pred, target))
    torch.testing.assert_close(focal_eiou_loss(pred, target, gamma=0.0), eiou_loss(pred, target))
    l_iou = iou_loss(pred, target)
    v1 = wiou_loss(pred, target, iou_mean=l_iou / 3.0, delta=3.0)  # beta = 3 = delta for every pair
    centre = 0.5 * (target[:, :2] + target[:, 2:] - pred[:, :2] - pred[:, 2:])
    enclosing = torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])
    expected = torch.exp(centre.square().sum(-1) / (enclosing.square().sum(-1) + 1e-7)) * l_iou
    torch.testing.assert_close(v1, expected)


@pytest.mark.parametrize("name", ["siou", "eiou"])
def test_later_losses_gradcheck(name):
    """The losses with no detached part against finite differences (float64)."""
    pred = random_boxes_xyxy(6, seed=31, min_size=0.3).requires_grad_()
    target = (pred.detach() + 0.4 * torch.randn(6, 4, generator=torch.Generator().manual_seed(32),
                                                dtype=torch.float64))
    target = torch.cat((target[:, :2], torch.maximum(target[:, 2:], target[:, :2] + 0.3)), -1).requires_grad_()
    assert torch.autograd.gradcheck(BOX_LOSSES[name], (pred, target))
