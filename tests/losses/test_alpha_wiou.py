"""Alpha-CIoU at any power > 0: finite values and gradients, the paper's value, unchanged at integer powers.

The Wise-IoU running mean's update rule (``loss.wiou_update``) is tested with the criterion, in test_criterion.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from yolo_loss.boxes import _aspect_term, _diou_loss_and_iou, alpha_ciou_loss, box_iou_pairwise, diou_loss

# A concentric pair (both centres at (10, 5)): in float32, rho^2 / c^2 recovered as DIoU - 1 + IoU is -3e-8, not 0.
CONCENTRIC = ((0.0, 0.0, 20.0, 10.0), (5.0, -5.0, 15.0, 15.0))
NON_INTEGER_POWERS = (0.5, 1.5, 2.5)


def paper_alpha_ciou(pred: tuple[float, ...], target: tuple[float, ...], power: float) -> float:
    """``1 - IoU^a + (rho^2 / c^2)^a + (beta v)^a``, ``beta = v / (1 - IoU + v)``, in plain float64 arithmetic."""
    (px1, py1, px2, py2), (tx1, ty1, tx2, ty2) = pred, target
    inter = max(0.0, min(px2, tx2) - max(px1, tx1)) * max(0.0, min(py2, ty2) - max(py1, ty1))
    union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter
    iou = inter / union
    rho_sq = ((px1 + px2 - tx1 - tx2) / 2) ** 2 + ((py1 + py2 - ty1 - ty2) / 2) ** 2
    c_sq = (max(px2, tx2) - min(px1, tx1)) ** 2 + (max(py2, ty2) - min(py1, ty1)) ** 2
    v = 4 / math.pi ** 2 * (math.atan((tx2 - tx1) / (ty2 - ty1)) - math.atan((px2 - px1) / (py2 - py1))) ** 2
    beta = v / (1 - iou + v)
    return 1 - iou ** power + (rho_sq / c_sq) ** power + (beta * v) ** power


def old_alpha_ciou(pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor, power: float, eps: float = 1e-7):
    """The formula before the fix (the committed runs' power 3 was trained with it): rho^2 / c^2 as DIoU - 1 + IoU."""
    diou, iou = _diou_loss_and_iou(pred_xyxy, target_xyxy, eps)
    distance = diou - 1.0 + iou
    v = _aspect_term(pred_xyxy, target_xyxy, eps)
    with torch.no_grad():
        beta = v / (1.0 - iou + v + eps)
    return 1.0 - iou.clamp(min=0).pow(power) + distance.pow(power) + (beta * v).pow(power)


def near_concentric_pairs(n: int, seed: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` (pred, target) xyxy pairs in pixels: sides in [5, 105), centres in a 400 px field, within 0.05 px."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 400
    pred_wh = 5 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 100
    target_wh = 5 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 100
    offset = (torch.rand(n, 2, generator=gen, dtype=torch.float64) - 0.5) * 0.1
    pred = torch.cat((centre - pred_wh / 2, centre + pred_wh / 2), -1)
    target = torch.cat((centre + offset - target_wh / 2, centre + offset + target_wh / 2), -1)
    return pred.to(dtype), target.to(dtype)


def overlapping_pairs(n: int, seed: int, dtype=torch.float64, same_aspect: bool = False, spread: float = 0.3):
    """``n`` non-degenerate pairs: sides in [0.5, 4.5), the target's corner shifted by 5 to 30 % of the sides and its
    sides scaled by 1 - spread to 1 + spread (``same_aspect``: both by one factor, so that v = 0): every pair
    overlaps and no centres coincide."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 10
    wh = 0.5 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 4
    shift = wh * (0.05 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.25)
    factor = 1 - spread + torch.rand(n, 1 if same_aspect else 2, generator=gen, dtype=torch.float64) * 2 * spread
    pred = torch.cat((xy, xy + wh), -1)
    target = torch.cat((xy + shift, xy + shift + wh * factor), -1)
    return pred.to(dtype), target.to(dtype)


@pytest.mark.parametrize("power", NON_INTEGER_POWERS)
def test_concentric_pair_is_finite_and_the_papers_value(power):
    pred = torch.tensor([CONCENTRIC[0]], requires_grad=True)
    target = torch.tensor([CONCENTRIC[1]], requires_grad=True)
    # The case really cancels: the old recovery of rho^2 / c^2 is negative here (NaN to this power).
    diou, iou = _diou_loss_and_iou(pred.detach(), target.detach(), 1e-7)
    assert (diou - 1 + iou).item() < 0
    loss = alpha_ciou_loss(pred, target, power=power)
    loss.sum().backward()
    assert loss.isfinite().all() and pred.grad.isfinite().all() and target.grad.isfinite().all()
    assert loss.item() == pytest.approx(paper_alpha_ciou(*CONCENTRIC, power), rel=1e-6)
    # float64 too, to the eps = 1e-7 in the union, the heights and beta's denominator
    pred64 = torch.tensor([CONCENTRIC[0]], dtype=torch.float64)
    assert alpha_ciou_loss(pred64, torch.tensor([CONCENTRIC[1]], dtype=torch.float64), power=power).item() == \
        pytest.approx(paper_alpha_ciou(*CONCENTRIC, power), rel=1e-7)


@pytest.mark.parametrize("power", (0.05, 0.5, 0.9))
def test_disjoint_pairs_below_power_one_have_finite_gradients(power):
    """IoU = 0 (and v = 0 for the two squares) to a power below 1: infinite derivative times a zero one was NaN."""
    pairs = [((0.0, 0.0, 1.0, 1.0), (4.0, 5.0, 6.0, 8.0)),
             ((0.0, 0.0, 1.0, 1.0), (3.0, 3.0, 4.0, 4.0)),  # squares: v = 0
             ((0.0, 0.0, 2.0, 1.0), (5.0, 5.0, 9.0, 7.0)),  # same aspect ratio: v = 0
             ((0.0, 0.0, 1.0, 1.0), (1.0, 0.0, 2.0, 1.0))]  # touching edges
    for dtype in (torch.float32, torch.float64):
        pred = torch.tensor([p for p, _ in pairs], dtype=dtype, requires_grad=True)
        target = torch.tensor([t for _, t in pairs], dtype=dtype, requires_grad=True)
        loss = alpha_ciou_loss(pred, target, power=power)
        loss.sum().backward()
        assert loss.isfinite().all() and pred.grad.isfinite().all() and target.grad.isfinite().all()
        assert (pred.grad.abs().sum(-1) > 0).all()  # the distance term still pulls the boxes together
        if power >= 0.5:  # (at 0.05, v of "equal" aspect ratios, 1e-17 from the heights' eps, is 0.02 to the power)
            expected = [paper_alpha_ciou(p, t, power) for p, t in pairs]
            torch.testing.assert_close(loss, torch.tensor(expected, dtype=dtype), rtol=1e-6, atol=0)


@pytest.mark.parametrize("power", NON_INTEGER_POWERS)
def test_random_near_concentric_pairs_have_no_nan(power):
    pred, target = near_concentric_pairs(2000, seed=5)
    diou, iou = _diou_loss_and_iou(pred, target, 1e-7)
    assert ((diou - 1 + iou) < 0).sum() > 10  # the old formula's NaN cases are among them
    pred.requires_grad_(), target.requires_grad_()
    loss = alpha_ciou_loss(pred, target, power=power)
    loss.sum().backward()
    assert loss.isfinite().all() and pred.grad.isfinite().all() and target.grad.isfinite().all()


@pytest.mark.parametrize("power", (1.0, 2.0, 3.0))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_integer_powers_unchanged_on_non_degenerate_pairs(power, dtype):
    """Power 3 is what the committed runs trained with: value and gradient as the old formula's to float rounding
    (the only change is rho^2 / c^2 without DIoU - 1 + IoU's cancellation error, about 1 ulp of 1)."""
    pred, target = overlapping_pairs(500, seed=7, dtype=dtype)
    pred_old, pred_new = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    target_old, target_new = target.clone().requires_grad_(), target.clone().requires_grad_()
    old = old_alpha_ciou(pred_old, target_old, power)
    new = alpha_ciou_loss(pred_new, target_new, power=power)
    old.sum().backward()
    new.sum().backward()
    tol = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.float64: dict(rtol=1e-13, atol=1e-14)}[dtype]
    torch.testing.assert_close(new, old, **tol)
    torch.testing.assert_close(pred_new.grad, pred_old.grad, **tol)
    torch.testing.assert_close(target_new.grad, target_old.grad, **tol)


@pytest.mark.parametrize("power", (0.5, 2.5))
def test_gradcheck_at_non_integer_powers(power):
    """gradcheck on pairs of equal aspect ratios (v = 0 there and O(h^2) around, so beta's detachment does not
    matter), overlapping and not concentric: every base is away from 0."""
    pred, target = overlapping_pairs(8, seed=9, same_aspect=True)
    assert (box_iou_pairwise(pred, target) > 0.05).all() and (diou_loss(pred, target) - 1
                                                             + box_iou_pairwise(pred, target) > 1e-4).all()
    assert torch.autograd.gradcheck(lambda p, t: alpha_ciou_loss(p, t, power=power),
                                    (pred.requires_grad_(), target.requires_grad_()))


@pytest.mark.parametrize("power", (0.5, 2.5))
def test_gradient_treats_beta_as_a_constant_at_non_integer_powers(power):
    """Any aspect ratios: the autograd gradient against central differences of the loss with beta frozen."""
    pred, target = overlapping_pairs(8, seed=10, spread=0.6)
    iou = box_iou_pairwise(pred, target)
    v0 = _aspect_term(pred, target, 1e-7)
    beta0 = v0 / (1 - iou + v0 + 1e-7)
    assert (v0 > 1e-5).all()  # the aspect term is present in every pair

    def frozen_beta(p: torch.Tensor) -> torch.Tensor:
        diou, iou = _diou_loss_and_iou(p, target, 1e-7)
        return (1 - iou ** power + (diou - 1 + iou) ** power + (beta0 * _aspect_term(p, target, 1e-7)) ** power).sum()

    step = 1e-6
    numeric = torch.zeros_like(pred)
    for index in range(pred.numel()):
        delta = torch.zeros(pred.numel(), dtype=pred.dtype)
        delta[index] = step
        delta = delta.view_as(pred)
        numeric.view(-1)[index] = (frozen_beta(pred + delta) - frozen_beta(pred - delta)) / (2 * step)
    p = pred.clone().requires_grad_()
    alpha_ciou_loss(p, target, power=power).sum().backward()
    torch.testing.assert_close(p.grad, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("power", (0.01, 0.3, 1.0, 1.5, 7.5, 50.0))
def test_finite_on_degenerate_boxes_at_any_power(power):
    pairs = [((0, 0, 2, 2), (0, 0, 2, 2)),  # identical
             ((1, 1, 3, 3), (0, 0, 5, 5)),  # contained (centres (2, 2) and (2.5, 2.5))
             ((1, 1, 4, 4), (0, 0, 5, 5)),  # concentric squares: rho = 0 and v = 0
             ((0, 0, 1, 1), (4, 5, 6, 8)),  # disjoint
             ((2, 2, 2, 2), (0, 0, 4, 4)),  # zero-area point inside the target
             ((0, 0, 3, 0), (0, 0, 3, 2)),  # zero height
             ((1, 1, 1, 1), (1, 1, 1, 1)),  # identical points
             ((1, 1, 1, 1), (3, 3, 3, 3))]  # two distinct points
    pred = torch.tensor([p for p, _ in pairs], dtype=torch.float32, requires_grad=True)
    target = torch.tensor([t for _, t in pairs], dtype=torch.float32, requires_grad=True)
    loss = alpha_ciou_loss(pred, target, power=power)
    loss.sum().backward()
    assert loss.isfinite().all() and pred.grad.isfinite().all() and target.grad.isfinite().all()
    assert loss[0].abs() < 1e-6  # a perfect match costs nothing at any power
