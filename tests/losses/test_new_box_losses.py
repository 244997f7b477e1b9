"""NWD, MPDIoU and Shape-IoU, and the Inner-IoU and Focaler-IoU modifiers (issue #33, section 2): the papers'
formulas re-implemented per pair in plain Python, hand-worked values, the authors' code where it differs, gradcheck,
degenerate pairs, the modifiers off leaving every loss as it was, the criterion's plain IoU elsewhere, and the config
keys."""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path

import pytest
import torch

from yolo_loss.boxes import (ciou_loss, diou_loss, focaler_iou, giou_loss, inner_iou, iou_loss, log_iou_loss,
                             modified_iou_loss, mpdiou_loss, nwd_loss, shape_iou_loss, siou_loss)
from yolo_loss.config import components as declared
from yolo_loss.config.load import ConfigError, config_from_dict, load_config
from yolo_loss.config.schema import YOLOV3_ANCHORS, LossConfig
from yolo_loss.decode import STRIDES
from yolo_loss.head import HeadSpec
from yolo_loss.losses import registry
from yolo_loss.losses.criterion import build_criterion

REPO_ROOT = Path(__file__).resolve().parents[2]
A, B = (0.0, 0.0, 2.0, 2.0), (1.0, 1.0, 3.0, 3.0)  # IoU 1/7, centres (1, 1) and (2, 2), enclosing 3 x 3
IMG_WH = (160.0, 96.0)  # an input size for MPDIoU in the tests below (not square: w and h both count)


# --- the papers' formulas, one pair at a time, in plain float64 Python --------------------------------------------

def paper_iou(p: tuple[float, ...], t: tuple[float, ...]) -> float:
    inter = max(0.0, min(p[2], t[2]) - max(p[0], t[0])) * max(0.0, min(p[3], t[3]) - max(p[1], t[1]))
    union = (p[2] - p[0]) * (p[3] - p[1]) + (t[2] - t[0]) * (t[3] - t[1]) - inter
    return inter / union if union > 0 else 0.0


def paper_nwd(p, t, constant: float) -> float:
    """NWD paper: Gaussians N((cx, cy), diag(w^2/4, h^2/4)); W2^2 = |c - c_gt|^2 + ((w - w_gt)^2 + (h - h_gt)^2) / 4;
    loss 1 - exp(-sqrt(W2^2) / C)."""
    dcx, dcy = (p[0] + p[2] - t[0] - t[2]) / 2, (p[1] + p[3] - t[1] - t[3]) / 2
    dw, dh = (p[2] - p[0]) - (t[2] - t[0]), (p[3] - p[1]) - (t[3] - t[1])
    return 1 - math.exp(-math.sqrt(dcx ** 2 + dcy ** 2 + (dw ** 2 + dh ** 2) / 4) / constant)


def authors_nwd(p, t, constant: float = 12.8, eps: float = 1e-7) -> float:
    """jwwangchn/NWD ``wasserstein_loss`` (mode exp): eps added to the squared centre distance and to every side."""
    dcx, dcy = (p[0] + p[2] - t[0] - t[2]) / 2, (p[1] + p[3] - t[1] - t[3]) / 2
    w1, h1, w2, h2 = p[2] - p[0] + eps, p[3] - p[1] + eps, t[2] - t[0] + eps, t[3] - t[1] + eps
    return 1 - math.exp(-math.sqrt(dcx ** 2 + dcy ** 2 + eps + ((w1 - w2) ** 2 + (h1 - h2) ** 2) / 4) / constant)


def paper_mpdiou(p, t, img_wh: tuple[float, float]) -> float:
    """MPDIoU paper: 1 - (IoU - d1^2 / (w^2 + h^2) - d2^2 / (w^2 + h^2)), d1, d2 between the top-left and the
    bottom-right corners, w, h the input image's."""
    d1_sq = (p[0] - t[0]) ** 2 + (p[1] - t[1]) ** 2
    d2_sq = (p[2] - t[2]) ** 2 + (p[3] - t[3]) ** 2
    norm = img_wh[0] ** 2 + img_wh[1] ** 2
    return 1 - (paper_iou(p, t) - d1_sq / norm - d2_sq / norm)


def paper_shape_iou(p, t, scale: float) -> float:
    """Shape-IoU paper: 1 - IoU + distance^shape + 0.5 Omega^shape with ww, hh from the target's w^scale, h^scale."""
    w, h, wg, hg = p[2] - p[0], p[3] - p[1], t[2] - t[0], t[3] - t[1]
    ww = 2 * wg ** scale / (wg ** scale + hg ** scale)
    hh = 2 * hg ** scale / (wg ** scale + hg ** scale)
    c_sq = (max(p[2], t[2]) - min(p[0], t[0])) ** 2 + (max(p[3], t[3]) - min(p[1], t[1])) ** 2
    dx, dy = (p[0] + p[2] - t[0] - t[2]) / 2, (p[1] + p[3] - t[1] - t[3]) / 2
    distance = hh * dx ** 2 / c_sq + ww * dy ** 2 / c_sq
    omega_w, omega_h = hh * abs(w - wg) / max(w, wg), ww * abs(h - hg) / max(h, hg)
    shape = (1 - math.exp(-omega_w)) ** 4 + (1 - math.exp(-omega_h)) ** 4
    return 1 - paper_iou(p, t) + distance + 0.5 * shape


def paper_inner_iou(p, t, ratio: float) -> float:
    """Inner-IoU paper: the IoU of the auxiliary boxes, centre kept, width and height times ratio."""
    def scaled(box):
        cx, cy, hw, hh = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
        return (cx - ratio * hw, cy - ratio * hh, cx + ratio * hw, cy + ratio * hh)
    return paper_iou(scaled(p), scaled(t))


def paper_focaler(iou: float, d: float, u: float) -> float:
    """Focaler-IoU paper: IoU^focaler = 0 below d, (IoU - d) / (u - d) in [d, u], 1 above u."""
    return min(1.0, max(0.0, (iou - d) / (u - d)))


def authors_inner_ciou_loss(p, t, ratio: float) -> float:
    """1 - malagoutou/Inner-IoU ``inner_ciou``: inner_iou - (rho2 / c2 + v alpha), alpha = v / (v - iou + 1) from the
    plain IoU, aspect ratios w / h without eps."""
    iou = paper_iou(p, t)
    w, h, wg, hg = p[2] - p[0], p[3] - p[1], t[2] - t[0], t[3] - t[1]
    c_sq = (max(p[2], t[2]) - min(p[0], t[0])) ** 2 + (max(p[3], t[3]) - min(p[1], t[1])) ** 2
    rho_sq = ((p[0] + p[2] - t[0] - t[2]) ** 2 + (p[1] + p[3] - t[1] - t[3]) ** 2) / 4
    v = 4 / math.pi ** 2 * (math.atan(wg / hg) - math.atan(w / h)) ** 2
    alpha = v / (v - iou + 1)
    return 1 - (paper_inner_iou(p, t, ratio) - (rho_sq / c_sq + v * alpha))


# --- boxes --------------------------------------------------------------------------------------------------------

def random_pairs(n: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` (pred, target) xyxy pairs in pixels: sides in [2, 42), the target's centre moved by N(0, 8 px) and its
    sides scaled by 0.5 to 1.5: mostly overlapping, some disjoint."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 60
    wh = 2 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 40
    target_centre = centre + torch.randn(n, 2, generator=gen, dtype=torch.float64) * 8
    target_wh = wh * (0.5 + torch.rand(n, 2, generator=gen, dtype=torch.float64))
    pred = torch.cat((centre - wh / 2, centre + wh / 2), -1)
    target = torch.cat((target_centre - target_wh / 2, target_centre + target_wh / 2), -1)
    return pred.to(dtype), target.to(dtype)


def overlapping_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` float64 pairs that overlap (the target's corner moved by 5 to 30 % of the sides, its sides scaled by 0.7
    to 1.3), no two edges or centres coinciding: away from every kink of min, max and clamp."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 10
    wh = 0.5 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 4
    shift = wh * (0.05 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.25)
    factor = 0.7 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.6
    return torch.cat((xy, xy + wh), -1), torch.cat((xy + shift, xy + shift + wh * factor), -1)


# (pred, target): identical, concentric (different sizes), contained, disjoint, touching edges, zero-area point
# inside, zero height, identical zero-area points, two distinct points, identical zero-height segments.
DEGENERATE = [
    ((0, 0, 2, 2), (0, 0, 2, 2)),
    ((0, 0, 20, 10), (5, -5, 15, 15)),
    ((1, 1, 3, 3), (0, 0, 5, 5)),
    ((0, 0, 1, 1), (4, 5, 6, 8)),
    ((0, 0, 1, 1), (1, 0, 2, 1)),
    ((2, 2, 2, 2), (0, 0, 4, 4)),
    ((0, 0, 3, 0), (0, 0, 3, 2)),
    ((1, 1, 1, 1), (1, 1, 1, 1)),
    ((1, 1, 1, 1), (3, 3, 3, 3)),
    ((0, 0, 4, 0), (0, 0, 4, 0)),
]

NEW_LOSSES = {
    "nwd": nwd_loss,
    "nwd_c5": partial(nwd_loss, constant=5.0),
    "mpdiou": partial(mpdiou_loss, img_wh=IMG_WH),
    "shape_iou": shape_iou_loss,
    "shape_iou_scale_0.5": partial(shape_iou_loss, scale=0.5),
    "shape_iou_scale_1.5": partial(shape_iou_loss, scale=1.5),
}
MODIFIED_LOSSES = {
    "inner_0.7_giou": partial(modified_iou_loss, giou_loss, inner_ratio=0.7),
    "inner_1.3_diou": partial(modified_iou_loss, diou_loss, inner_ratio=1.3),
    "inner_0.8_siou": partial(modified_iou_loss, siou_loss, inner_ratio=0.8),
    "inner_1.2_mpdiou": partial(modified_iou_loss, mpdiou_loss, inner_ratio=1.2, img_wh=IMG_WH),
    "focaler_iou": partial(modified_iou_loss, iou_loss, focaler_d=0.05, focaler_u=0.95),
    "focaler_shape_iou": partial(modified_iou_loss, partial(shape_iou_loss, scale=0.5), focaler_d=0.05,
                                 focaler_u=0.95),
    "inner_focaler_diou": partial(modified_iou_loss, diou_loss, inner_ratio=0.9, focaler_d=0.02, focaler_u=0.98),
}


def as_tuples(boxes: torch.Tensor) -> list[tuple[float, ...]]:
    return [tuple(row) for row in boxes.tolist()]


PAPER_FORMULAS = {
    "nwd": partial(paper_nwd, constant=12.8),
    "nwd_c5": partial(paper_nwd, constant=5.0),
    "mpdiou": partial(paper_mpdiou, img_wh=IMG_WH),
    "shape_iou": partial(paper_shape_iou, scale=0.0),
    "shape_iou_scale_0.5": partial(paper_shape_iou, scale=0.5),
    "shape_iou_scale_1.5": partial(paper_shape_iou, scale=1.5),
}


@pytest.mark.parametrize("name", sorted(PAPER_FORMULAS))
def test_losses_are_the_papers_formula_on_random_pairs(name):
    """The eps of the code (1e-7 in the union, the enclosing diagonal and max(w, w_gt); 1e-14 px^2 under NWD's root)
    moves a value by less than 1e-8 on boxes of 1 to 60 px."""
    expected_fn = PAPER_FORMULAS[name]
    pred, target = random_pairs(300, seed=1)
    expected = torch.tensor([expected_fn(p, t) for p, t in zip(as_tuples(pred), as_tuples(target))],
                            dtype=torch.float64)
    assert (expected != 0).all()
    torch.testing.assert_close(NEW_LOSSES[name](pred, target), expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("ratio", (0.5, 0.8, 1.3, 1.5))
@pytest.mark.parametrize("interval", ((0.0, 1.0), (0.0, 0.95), (0.2, 0.7)))
def test_modifiers_are_the_papers_formula_on_random_pairs(ratio, interval):
    """L + IoU - focaler(inner IoU), for GIoU and MPDIoU, against the plain formulas."""
    pred, target = random_pairs(300, seed=2)
    d, u = interval
    pairs = list(zip(as_tuples(pred), as_tuples(target)))
    modified = torch.tensor([paper_focaler(paper_inner_iou(p, t, ratio), d, u) for p, t in pairs], dtype=torch.float64)
    iou = torch.tensor([paper_iou(p, t) for p, t in pairs], dtype=torch.float64)
    for loss, keywords in ((giou_loss, {}), (mpdiou_loss, {"img_wh": IMG_WH})):
        ours = modified_iou_loss(loss, pred, target, inner_ratio=ratio, focaler_d=d, focaler_u=u, **keywords)
        torch.testing.assert_close(ours, loss(pred, target, **keywords) + iou - modified, rtol=0, atol=1e-8)
    torch.testing.assert_close(inner_iou(pred, target, ratio=ratio),
                               torch.tensor([paper_inner_iou(p, t, ratio) for p, t in pairs], dtype=torch.float64),
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("ratio", (0.7, 1.0, 1.4))
def test_inner_ciou_is_the_authors_code(ratio):
    """malagoutou/Inner-IoU innerciou.py (commit db9e8db): 1 - (inner_iou - (rho2 / c2 + v alpha)), CIoU's alpha
    from the plain IoU. Our CIoU has w / (h + eps) in its aspect term (1e-7 relative on these sides)."""
    pred, target = random_pairs(300, seed=3)
    expected = torch.tensor([authors_inner_ciou_loss(p, t, ratio) for p, t in zip(as_tuples(pred), as_tuples(target))],
                            dtype=torch.float64)
    ours = modified_iou_loss(ciou_loss, pred, target, inner_ratio=ratio)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-7)


def test_nwd_differs_from_the_authors_code_only_by_their_eps():
    """jwwangchn/NWD wasserstein_loss (commit 9775ac2) adds eps = 1e-7 px^2 under the root: identical boxes give
    1 - exp(-sqrt(1e-7) / 12.8) = 2.47e-5 there and 0 here (eps^2 under the root); elsewhere the two differ by less."""
    pred, target = random_pairs(300, seed=4)
    ours = nwd_loss(pred, target)
    theirs = torch.tensor([authors_nwd(p, t) for p, t in zip(as_tuples(pred), as_tuples(target))], dtype=torch.float64)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2.5e-5)
    same = torch.tensor([A], dtype=torch.float64)
    assert nwd_loss(same, same).item() < 1e-8
    assert authors_nwd(A, A) == pytest.approx(1 - math.exp(-math.sqrt(1e-7) / 12.8), rel=1e-9)


def test_hand_worked_values():
    """a = (0, 0, 2, 2), b = (1, 1, 3, 3): IoU 1/7, centres (1, 1) and (2, 2), enclosing 3 x 3 (c^2 = 18).
    - NWD (C = 12.8): W2^2 = 1 + 1 + 0 (equal sizes) = 2: 1 - exp(-sqrt(2) / 12.8) = 0.104601;
      C = 1: 1 - exp(-sqrt(2)) = 0.756883.
    - NWD of a and c = (1, 1, 4, 3) (centre (2.5, 2), 3 x 2): W2^2 = 1.5^2 + 1^2 + (1^2 + 0^2) / 4 = 3.5.
    - MPDIoU in a 10 x 10 image: d1^2 = d2^2 = 1 + 1, w^2 + h^2 = 200: 1 - 1/7 + 2/200 + 2/200 = 0.877143;
      in a 160 x 96 image: 1 - 1/7 + 4/34816.
    - Shape-IoU, any scale (a square target: ww = hh = 1), equal sizes (Omega = 0): 1 - 1/7 + 2/18 = 0.968254.
    - Shape-IoU, scale 1, p = (0, 0, 2, 2), t = (0, 0, 4, 2): IoU 4/8; ww = 2*4/6 = 4/3, hh = 2*2/6 = 2/3;
      dx = 1, dy = 0, c^2 = 4^2 + 2^2 = 20: distance = (2/3) / 20 = 1/30; omega_w = (2/3) * 2/4 = 1/3,
      omega_h = 0: 1 - 1/2 + 1/30 + 0.5 (1 - exp(-1/3))^4 = 0.536562; at scale 0 (ww = hh = 1, omega_w = 1/2):
      1 - 1/2 + 1/20 + 0.5 (1 - exp(-1/2))^4 = 0.561984.
    """
    a, b = torch.tensor(A, dtype=torch.float64), torch.tensor(B, dtype=torch.float64)
    c = torch.tensor((1.0, 1.0, 4.0, 3.0), dtype=torch.float64)
    assert nwd_loss(a, b).item() == pytest.approx(1 - math.exp(-math.sqrt(2) / 12.8), abs=1e-12)
    assert nwd_loss(a, b).item() == pytest.approx(0.104601, abs=1e-6)
    assert nwd_loss(a, b, constant=1.0).item() == pytest.approx(0.756883, abs=1e-6)
    assert nwd_loss(a, c).item() == pytest.approx(1 - math.exp(-math.sqrt(3.5) / 12.8), abs=1e-12)
    assert mpdiou_loss(a, b, img_wh=(10, 10)).item() == pytest.approx(0.877143, abs=1e-6)
    assert mpdiou_loss(a, b, img_wh=IMG_WH).item() == pytest.approx(1 - 1 / 7 + 4 / 34816, abs=1e-7)
    for scale in (0.0, 1.0, 2.5):
        assert shape_iou_loss(a, b, scale=scale).item() == pytest.approx(0.968254, abs=1e-6)
    p, t = torch.tensor((0.0, 0.0, 2.0, 2.0), dtype=torch.float64), torch.tensor((0.0, 0.0, 4.0, 2.0),
                                                                                 dtype=torch.float64)
    assert shape_iou_loss(p, t, scale=1.0).item() == pytest.approx(
        0.5 + 1 / 30 + 0.5 * (1 - math.exp(-1 / 3)) ** 4, abs=1e-7)
    assert shape_iou_loss(p, t, scale=1.0).item() == pytest.approx(0.536562, abs=1e-6)
    assert shape_iou_loss(p, t).item() == pytest.approx(0.561984, abs=1e-6)


def test_modifier_hand_worked_values():
    """a = (0, 0, 2, 2), b = (1, 1, 3, 3), IoU 1/7:
    - Inner-IoU, ratio 1.5: auxiliary boxes (-0.5, -0.5, 2.5, 2.5) and (0.5, 0.5, 3.5, 3.5), intersection 2 x 2,
      union 9 + 9 - 4: 2/7. Inner-GIoU = GIoU loss (1 - 1/7 + 2/9) + 1/7 - 2/7 = 1 + 2/9 - 2/7 = 0.936508.
    - Inner-IoU, ratio 0.5: (0.5, 0.5, 1.5, 1.5) and (1.5, 1.5, 2.5, 2.5) touch at a corner: 0; Inner-IoU loss
      (1 - IoU) + IoU - 0 = 1.
    - Focaler, d = 0, u = 0.5: IoU^focaler = (1/7) / 0.5 = 2/7: the IoU loss becomes 1 - 2/7 = 5/7;
      d = 0.2, u = 0.9: IoU below d, IoU^focaler = 0: the loss is 1 and the IoU gives no gradient.
    - Both on CIoU (= DIoU here, square boxes): ratio 1.5 then d = 0, u = 0.5: focaler(2/7) = 4/7:
      1 - 1/7 + 2/18 + 1/7 - 4/7 = 0.539683.
    """
    a, b = torch.tensor(A, dtype=torch.float64), torch.tensor(B, dtype=torch.float64)
    assert inner_iou(a, b, ratio=1.5).item() == pytest.approx(2 / 7, abs=1e-7)  # (union + 1e-7)
    assert inner_iou(a, b, ratio=0.5).item() == 0.0
    assert modified_iou_loss(giou_loss, a, b, inner_ratio=1.5).item() == pytest.approx(0.936508, abs=1e-6)
    assert modified_iou_loss(iou_loss, a, b, inner_ratio=0.5).item() == pytest.approx(1.0, abs=1e-9)
    assert focaler_iou(torch.tensor(1 / 7), d=0.0, u=0.5).item() == pytest.approx(2 / 7)
    assert modified_iou_loss(iou_loss, a, b, focaler_d=0.0, focaler_u=0.5).item() == pytest.approx(5 / 7, abs=1e-7)
    pred = a.clone().requires_grad_()
    loss = modified_iou_loss(iou_loss, pred, b, focaler_d=0.2, focaler_u=0.9)
    loss.backward()
    assert loss.item() == pytest.approx(1.0, abs=1e-12) and torch.equal(pred.grad, torch.zeros(4, dtype=torch.float64))
    both = modified_iou_loss(ciou_loss, a, b, inner_ratio=1.5, focaler_d=0.0, focaler_u=0.5)
    assert both.item() == pytest.approx(1 - 1 / 7 + 2 / 18 + 1 / 7 - 4 / 7, abs=1e-7)
    assert both.item() == pytest.approx(0.539683, abs=1e-6)


@pytest.mark.parametrize("name", sorted(NEW_LOSSES) + sorted(MODIFIED_LOSSES))
def test_gradcheck(name):
    """float64, overlapping pairs away from every kink (and, for Focaler, every IoU inside its interval)."""
    fn = {**NEW_LOSSES, **MODIFIED_LOSSES}[name]
    pred, target = overlapping_pairs(8, seed=11)
    assert all(0.05 < paper_iou(p, t) < 0.95 for p, t in zip(as_tuples(pred), as_tuples(target)))
    assert torch.autograd.gradcheck(fn, (pred.requires_grad_(), target.requires_grad_()))


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("name", sorted(NEW_LOSSES) + sorted(MODIFIED_LOSSES))
def test_degenerate_pairs_give_finite_values_and_gradients(name, dtype):
    """Identical, concentric, contained, disjoint, touching, zero-area pairs: finite values and gradients for the
    prediction (Shape-IoU at scale 0.5 has w_gt^0.5 in its weights, whose derivative at a zero-size target is
    infinite: the target's gradient is checked for the losses without it; the criterion never asks for it)."""
    fn = {**NEW_LOSSES, **MODIFIED_LOSSES}[name]
    pred = torch.tensor([p for p, _ in DEGENERATE], dtype=dtype, requires_grad=True)
    target = torch.tensor([t for _, t in DEGENERATE], dtype=dtype, requires_grad="scale_0.5" not in name
                          and "focaler_shape" not in name)
    loss = fn(pred, target)
    loss.sum().backward()
    assert loss.isfinite().all() and pred.grad.isfinite().all()
    if target.requires_grad:
        assert target.grad.isfinite().all()
    assert loss[0].abs().item() < 1e-6  # identical boxes of positive area: a perfect match


# --- the modifiers off: every loss as it was ------------------------------------------------------------------------

TAKERS = [entry for entry in declared.COMPONENTS if entry.iou_modifiers]


def test_modifiers_are_declared_for_the_losses_of_the_form_one_minus_iou_plus_penalties():
    assert {entry.name for entry in TAKERS} == {"iou", "giou", "diou", "ciou", "siou", "eiou", "mpdiou", "shape_iou"}
    for entry in declared.COMPONENTS:
        fields = {p.field for p in declared.all_params(entry)}
        assert ({"inner_ratio", "focaler_d", "focaler_u"} <= fields) == entry.iou_modifiers, entry.name


@pytest.mark.parametrize("entry", TAKERS, ids=lambda e: e.name)
def test_modifiers_off_bind_the_components_own_function(entry):
    """Off (the defaults, given or not), bind() does not wrap: the function, and so every result, is the one before."""
    off = {"inner_ratio": 1.0, "focaler_d": 0.0, "focaler_u": 1.0}
    for values in ({}, off, {**off, "siou_theta": 4.0}):
        bound = registry.bind("box", entry.name, values)
        function = registry.FUNCTIONS["box", entry.name]
        assert (bound is function) or (isinstance(bound, partial) and bound.func is function)
    on = registry.bind("box", entry.name, {"inner_ratio": 0.8})
    assert isinstance(on, partial) and on.func is modified_iou_loss


@pytest.mark.parametrize("name", ("giou", "ciou", "shape_iou", "mpdiou"))
def test_modifiers_at_their_off_values_equal_the_loss(name):
    """modified_iou_loss itself at ratio 1 and [0, 1] is L + IoU - IoU: the loss to float rounding (which is why bind
    leaves the function alone when they are off, for bit-identical results)."""
    fn = {"giou": giou_loss, "ciou": ciou_loss, "shape_iou": shape_iou_loss,
          "mpdiou": partial(mpdiou_loss, img_wh=IMG_WH)}[name]
    pred, target = random_pairs(200, seed=5)
    torch.testing.assert_close(modified_iou_loss(fn, pred, target), fn(pred, target), rtol=0, atol=1e-14)


# --- in the criterion -------------------------------------------------------------------------------------------------

IMG = 128
ANCHORS = [torch.tensor(YOLOV3_ANCHORS[3 * level:3 * level + 3], dtype=torch.float64) * IMG / 416
           for level in range(3)]
TARGETS = torch.tensor([[0, 1, 0.4, 0.4, 0.3, 0.2], [1, 0, 0.6, 0.5, 0.1, 0.1], [1, 2, 0.3, 0.6, 0.5, 0.4]],
                       dtype=torch.float64)


def criterion_of(cfg: LossConfig):
    return build_criterion(cfg, HeadSpec.from_anchors(ANCHORS, strides=STRIDES, num_classes=3))


def head_maps(seed: int, img: int = IMG) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3 * 8, img // s, img // s, generator=gen, dtype=torch.float64).requires_grad_()
            for s in STRIDES]


def test_the_criterion_with_modifiers_off_is_bit_identical():
    preds = head_maps(seed=1)
    for box in ("giou", "ciou", "shape_iou", "mpdiou"):
        plain = LossConfig(xy="none", wh="none", box=box, obj_target="iou")
        explicit = dataclasses.replace(plain, inner_ratio=1.0, focaler_d=0.0, focaler_u=1.0)
        first, second = criterion_of(plain)(preds, TARGETS, IMG), criterion_of(explicit)(preds, TARGETS, IMG)
        assert torch.equal(first.total, second.total), box
        grads = [torch.autograd.grad(r.total, preds) for r in (first, second)]
        assert all(torch.equal(g1, g2) for g1, g2 in zip(*grads)), box


@pytest.mark.parametrize("modifier", ({"inner_ratio": 0.7}, {"focaler_d": 0.1, "focaler_u": 0.8},
                                      {"inner_ratio": 1.3, "focaler_d": 0.0, "focaler_u": 0.9}))
def test_the_criterion_keeps_the_plain_iou_outside_the_box_term(modifier):
    """With a modifier on only the box term changes: assignment, ignore rule, the objectness IoU target and the IoU
    diagnostics use the plain IoU."""
    preds = head_maps(seed=2)
    plain = LossConfig(xy="none", wh="none", box="ciou", obj_target="iou", cls_target="iou")
    on = dataclasses.replace(plain, **modifier)
    first, second = criterion_of(plain)(preds, TARGETS, IMG), criterion_of(on)(preds, TARGETS, IMG)
    assert not torch.equal(first.terms["box"], second.terms["box"])
    for term in ("obj_pos", "obj_neg", "cls"):
        assert torch.equal(first.terms[term], second.terms[term]), term
    for name, value in first.diagnostics.items():
        assert torch.equal(value, second.diagnostics[name]), name
    for level_first, level_second in zip(first.positives, second.positives):
        assert torch.equal(level_first.image, level_second.image) and torch.equal(level_first.cell_x,
                                                                                   level_second.cell_x)


def test_mpdiou_gets_the_batchs_input_width_and_height():
    """A 160 x 96 input (img_size as (height, width) = (96, 160)): MPDIoU is normalised by 160^2 + 96^2."""
    criterion = criterion_of(LossConfig(xy="none", wh="none", box="mpdiou"))
    seen = []
    original = criterion.functions["box"]

    def recording(pred_xyxy, target_xyxy, **keywords):
        seen.append(keywords["img_wh"])
        return original(pred_xyxy, target_xyxy, **keywords)

    criterion.functions["box"] = recording
    gen = torch.Generator().manual_seed(3)
    preds = [torch.randn(2, 24, 96 // s, 160 // s, generator=gen, dtype=torch.float64) for s in STRIDES]
    result = criterion(preds, TARGETS, (96, 160))
    assert seen == [(160, 96)] * 3 and torch.isfinite(result.total)


def test_a_modifier_with_a_loss_it_does_not_fit_is_refused_by_the_criterion():
    with pytest.raises(ValueError, match="loss.inner_ratio: inner_ratio modifies the IoU of a box loss"):
        criterion_of(LossConfig(xy="none", wh="none", box="nwd", inner_ratio=0.8))
    with pytest.raises(ValueError, match="loss.focaler_d: must be below focaler_u"):
        criterion_of(LossConfig(xy="none", wh="none", box="giou", focaler_d=0.5, focaler_u=0.5))


# --- the config ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("box", ("nwd", "mpdiou", "shape_iou"))
def test_the_new_names_load_through_the_config(box):
    cfg = config_from_dict({"loss": {"box": box, "xy": "none", "wh": "none"}})
    assert cfg.loss.box == box
    assert (cfg.loss.nwd_constant, cfg.loss.shape_iou_scale) == (12.8, 0.0)
    assert (cfg.loss.inner_ratio, cfg.loss.focaler_d, cfg.loss.focaler_u) == (1.0, 0.0, 1.0)
    fragment = load_config(REPO_ROOT / "configs" / "loss" / f"box_{box}.yaml")
    assert (fragment.loss.box, fragment.loss.xy, fragment.loss.wh) == (box, "none", "none")


def test_modifier_settings_load_through_the_config():
    cfg = config_from_dict({"loss": {"box": "shape_iou", "xy": "none", "wh": "none", "shape_iou_scale": 0.5,
                                     "inner_ratio": 0.75, "focaler_d": 0.0, "focaler_u": 0.95}})
    assert (cfg.loss.shape_iou_scale, cfg.loss.inner_ratio, cfg.loss.focaler_u) == (0.5, 0.75, 0.95)
    assert isinstance(criterion_of(cfg.loss).functions["box"], partial)


@pytest.mark.parametrize("loss, message", [
    ({"box": "nwdd"}, "loss.box: 'nwdd' is not one of iou, log_iou, giou, diou, ciou, ciou_darknet, siou, eiou, "
                      "focal_eiou, alpha_ciou, wiou, nwd, mpdiou, shape_iou, none"),
    ({"box": "nwd", "nwd_constant": 0}, "loss.nwd_constant: must be > 0, got 0"),
    ({"box": "shape_iou", "shape_iou_scale": -1}, "loss.shape_iou_scale: must be >= 0, got -1"),
    ({"box": "giou", "inner_ratio": 0}, "loss.inner_ratio: must be > 0, got 0"),
    ({"box": "giou", "focaler_u": 1.5}, "loss.focaler_u: must be in [0, 1], got 1.5"),
    ({"box": "giou", "focaler_d": 0.6, "focaler_u": 0.5}, "loss.focaler_d: must be below focaler_u (0.5), got 0.6"),
    ({"box": "nwd", "inner_ratio": 0.8},
     "loss.inner_ratio: inner_ratio modifies the IoU of a box loss of the form 1 - IoU + penalties (iou, giou, diou, "
     "ciou, siou, eiou, mpdiou, shape_iou); loss.box is nwd"),
    ({"box": "wiou", "focaler_d": 0.1, "focaler_u": 0.9},
     "loss.focaler_d: focaler_d and focaler_u modify the IoU of a box loss"),
    ({"box": "alpha_ciou", "inner_ratio": 1.2}, "loss.box is alpha_ciou"),
    ({"inner_ration": 0.8}, "loss.inner_ration: unknown key; did you mean 'loss.inner_ratio'?"),
], ids=["unknown_name", "nwd_constant", "shape_scale", "inner_ratio_range", "focaler_range", "focaler_order",
        "inner_with_nwd", "focaler_with_wiou", "inner_with_alpha_ciou", "unknown_key"])
def test_invalid_settings_give_a_clear_error(loss, message):
    box_keys = {"xy": "none", "wh": "none"} if "box" in loss else {}
    with pytest.raises(ConfigError) as info:
        config_from_dict({"loss": {**box_keys, **loss}})
    assert message in str(info.value)


def test_a_modifier_without_a_box_loss_is_refused():
    """darknet's defaults (loss.box: none) with Inner-IoU on: nothing to modify."""
    with pytest.raises(ConfigError) as info:
        config_from_dict({"loss": {"inner_ratio": 0.8}})
    assert "loss.box is none" in str(info.value)


def test_log_iou_is_not_a_modifier_taker():
    """-ln IoU is not 1 - IoU + penalties: L + IoU - IoU' would not be 'its IoU replaced' (-ln IoU')."""
    assert not declared.component("box", "log_iou").iou_modifiers
    a, b = torch.tensor(A, dtype=torch.float64), torch.tensor(B, dtype=torch.float64)
    assert log_iou_loss(a, b).item() == pytest.approx(math.log(7), abs=1e-6)
