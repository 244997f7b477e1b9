"""The xy, wh, objectness and class components: parity with torch and torchvision, identities, exact
gradients, hand values, gradcheck and extreme inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from yolo_loss.config.components import COMPONENTS as REGISTRY
from yolo_loss.losses.components import (bce_with_logits, cls_ce, cls_poly1, mse_on_sigmoid, quality_focal,
                                         sigmoid_focal, smooth_labels, varifocal, wh_l1, wh_mse, wh_smooth_l1, xy_bce,
                                         xy_mse, xy_mse_linear, xy_mse_t)
from yolo_loss.losses.registry import FUNCTIONS


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def logits(*shape: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=seeded(seed), dtype=torch.float64) * scale


def soft_targets(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=seeded(seed), dtype=torch.float64)


def grad_of(fn, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    x = x.clone().requires_grad_()
    fn(x, *args, **kwargs).sum().backward()
    return x.grad


def table(term: str) -> dict:
    """``{name: function}`` of a term's components, from the registry."""
    return {entry.name: FUNCTIONS[term, entry.name] for entry in REGISTRY if entry.term == term}


# --- xy ---------------------------------------------------------------------------------------------------

def test_xy_bce_gradient_is_darknets_delta():
    """d BCE(sig(z), g) / dz = sig(z) - g: darknet's delta with the sign flipped, no sigmoid derivative."""
    z, g = logits(64, 2, seed=0), soft_targets(64, 2, seed=1)
    assert torch.equal(grad_of(xy_bce, z, g), z.sigmoid() - g)


def test_xy_mse_gradient_carries_the_sigmoid_derivative():
    z, g = logits(64, 2, seed=2), soft_targets(64, 2, seed=3)
    p = z.sigmoid()
    torch.testing.assert_close(grad_of(xy_mse, z, g), (p - g) * p * (1 - p), rtol=1e-12, atol=1e-15)


def test_xy_mse_t_gradient_is_the_papers_t_minus_t_hat():
    """YOLOv3 paper: the gradient is t - t_hat with t_hat = logit(g)."""
    z, g = logits(64, 2, seed=4), soft_targets(64, 2, seed=5)
    torch.testing.assert_close(grad_of(xy_mse_t, z, g), z - torch.log(g / (1 - g)), rtol=1e-12, atol=1e-12)


def test_xy_mse_linear_gradient_is_the_offset_error():
    """The linear decode's term 0.5 (tx - g)^2: gradient tx - g, for offsets outside [0, 1) too; 0.125 at 0.5."""
    z, g = logits(64, 2, seed=6), soft_targets(64, 2, seed=7) * 3 - 1
    torch.testing.assert_close(grad_of(xy_mse_linear, z, g), z - g, rtol=1e-12, atol=1e-15)
    assert xy_mse_linear(torch.tensor([0.5]), torch.tensor([0.0])).item() == 0.125


def test_xy_mse_t_clamps_the_offset_before_the_logit():
    """g = 0 and g = 1 (a centre on a cell border) become logit(1e-4) = -ln(9999) and +ln(9999)."""
    z = torch.zeros(3, dtype=torch.float64)
    g = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    expected = torch.tensor([0.5 * math.log(9999) ** 2, 0.5 * math.log(9999) ** 2, 0.0], dtype=torch.float64)
    torch.testing.assert_close(xy_mse_t(z, g), expected, rtol=1e-12, atol=1e-12)
    assert xy_mse_t(z, g, eps=1e-2)[0].item() == pytest.approx(0.5 * math.log(99) ** 2)


# --- wh ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0, 2.5])
def test_smooth_l1_matches_torch(beta):
    pred, target = logits(200, 2, seed=6), logits(200, 2, seed=7)
    torch.testing.assert_close(wh_smooth_l1(pred, target, beta=beta),
                               F.smooth_l1_loss(pred, target, beta=beta, reduction="none"), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_of(wh_smooth_l1, pred, target, beta=beta),
                               grad_of(F.smooth_l1_loss, pred, target, beta=beta, reduction="none"),
                               rtol=1e-12, atol=1e-12)


def test_wh_hand_values():
    """d = tw - gw = (0.5, -3): mse 0.5 d^2 = (0.125, 4.5); smooth L1 (beta 1) = (0.5 * 0.25, 3 - 0.5); l1 |d|."""
    pred = torch.tensor([1.5, -1.0], dtype=torch.float64)
    target = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert wh_mse(pred, target).tolist() == pytest.approx([0.125, 4.5])
    assert wh_smooth_l1(pred, target).tolist() == pytest.approx([0.125, 2.5])
    assert wh_l1(pred, target).tolist() == pytest.approx([0.5, 3.0])
    assert grad_of(wh_mse, pred, target).tolist() == pytest.approx([0.5, -3.0])  # tw - gw, the paper's gradient


# --- objectness / binary ------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1.0, 2.0), (0.75, 0.5), (0.5, 0.0), (-1.0, 1.0)])
def test_sigmoid_focal_matches_torchvision(alpha, gamma):
    z = logits(20, 7, seed=8)
    for t in (soft_targets(20, 7, seed=9).round(), soft_targets(20, 7, seed=10)):  # hard and soft targets
        reference = sigmoid_focal_loss(z, t, alpha=alpha, gamma=gamma, reduction="none")
        torch.testing.assert_close(sigmoid_focal(z, t, alpha=alpha, gamma=gamma), reference, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(grad_of(sigmoid_focal, z, t, alpha=alpha, gamma=gamma),
                                   grad_of(sigmoid_focal_loss, z, t, alpha=alpha, gamma=gamma, reduction="none"),
                                   rtol=1e-9, atol=1e-12)


def test_focal_with_gamma_0_and_alpha_minus_1_is_exactly_bce():
    z, t = logits(50, 3, seed=11), soft_targets(50, 3, seed=12)
    reference = F.binary_cross_entropy_with_logits(z, t, reduction="none")
    assert torch.equal(sigmoid_focal(z, t, alpha=-1.0, gamma=0.0), reference)
    assert torch.equal(grad_of(sigmoid_focal, z, t, alpha=-1.0, gamma=0.0),
                       grad_of(F.binary_cross_entropy_with_logits, z, t, reduction="none"))
    assert torch.equal(bce_with_logits(z, t), reference)


def test_focal_rejects_an_alpha_outside_its_range():
    with pytest.raises(ValueError, match="alpha"):
        sigmoid_focal(torch.zeros(2), torch.ones(2), alpha=1.5)


def test_binary_hand_values():
    """z = 0 (p = 1/2), t = 1: BCE = ln 2; focal (0.25, 2) = 0.25 * (1/2)^2 * ln 2; mse = 0.5 * (1/2)^2."""
    z, t = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    assert bce_with_logits(z, t).item() == pytest.approx(math.log(2))
    assert sigmoid_focal(z, t).item() == pytest.approx(0.25 * 0.25 * math.log(2))
    assert mse_on_sigmoid(z, t).item() == pytest.approx(0.125)
    # An easy negative (p = sig(-3)) is down-weighted by (1 - 0.75) * p^2 relative to BCE.
    z_easy, t_neg = torch.full((1,), -3.0, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    p = 1 / (1 + math.exp(3))
    assert sigmoid_focal(z_easy, t_neg).item() == pytest.approx(0.75 * p ** 2 * -math.log(1 - p))


# --- classes ----------------------------------------------------------------------------------------------

def test_ce_with_one_hot_targets_matches_torch():
    z = logits(30, 5, seed=13)
    labels = torch.randint(0, 5, (30,), generator=seeded(14))
    one_hot = F.one_hot(labels, 5).to(z)
    torch.testing.assert_close(cls_ce(z, one_hot), F.cross_entropy(z, labels, reduction="none"),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_of(cls_ce, z, one_hot), grad_of(F.cross_entropy, z, labels, reduction="none"),
                               rtol=1e-12, atol=1e-12)


def test_ce_normalises_multi_hot_and_soft_rows():
    """A collision row [1, 1, 0, 0] is the distribution [1/2, 1/2, 0, 0]; a soft row is scaled to sum 1."""
    z = logits(3, 4, seed=15)
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.2, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    distribution = targets / targets.sum(-1, keepdim=True)
    torch.testing.assert_close(cls_ce(z, targets), F.cross_entropy(z, distribution, reduction="none"),
                               rtol=1e-12, atol=1e-12)
    assert cls_ce(z, targets).shape == (3,)


@pytest.mark.parametrize("fn", [cls_ce, cls_poly1])
def test_a_zero_target_row_gives_zero_loss_and_gradient(fn):
    z = logits(2, 4, seed=16)
    targets = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    loss = fn(z, targets)
    assert loss[0].item() == 0.0 and loss[1].item() > 0
    grad = grad_of(fn, z, targets)
    assert torch.equal(grad[0], torch.zeros(4, dtype=torch.float64)) and grad[1].abs().sum() > 0


def test_poly1_with_eps_0_is_ce_and_otherwise_adds_eps_one_minus_p_t():
    z, t = logits(30, 5, seed=17), soft_targets(30, 5, seed=18)
    assert torch.equal(cls_poly1(z, t, eps=0.0), cls_ce(z, t))
    labels = torch.randint(0, 5, (30,), generator=seeded(19))
    p_t = z.softmax(-1).gather(1, labels[:, None]).squeeze(1)
    expected = F.cross_entropy(z, labels, reduction="none") + 2.0 * (1 - p_t)
    torch.testing.assert_close(cls_poly1(z, F.one_hot(labels, 5).to(z), eps=2.0), expected, rtol=1e-12, atol=1e-12)


def test_class_hand_values():
    """z = (0, 0), t = (1, 0): softmax (1/2, 1/2), CE = ln 2, Poly-1 (eps 1) = ln 2 + 1 - 1/2;
    BCE per class: (ln 2, ln 2)."""
    z = torch.zeros(1, 2, dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert cls_ce(z, t).item() == pytest.approx(math.log(2))
    assert cls_poly1(z, t).item() == pytest.approx(math.log(2) + 0.5)
    torch.testing.assert_close(table("cls")["bce"](z, t), torch.full((1, 2), math.log(2), dtype=torch.float64))
    assert table("cls")["focal"](z, t).shape == (1, 2)


def test_smooth_labels_yolo_convention():
    """eps = 0.1: a positive becomes 1 - 0.05 = 0.95, a negative 0.05, whatever the number of classes."""
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    smoothed = smooth_labels(targets, 0.1)
    torch.testing.assert_close(smoothed, torch.tensor([[0.95, 0.05, 0.05], [0.05, 0.95, 0.95]]))
    assert torch.equal(smooth_labels(targets, 0.0), targets)


# --- every component: gradcheck and extremes ---------------------------------------------------------------

# (name, fn, kind): kind picks the inputs. "xy": logits vs offsets in [0, 1); "wh": tw vs gw;
# "binary": logits vs soft targets; "cls": Tensor[N, C] logits vs multi-hot targets.
KIND_OF_TERM = {"xy": "xy", "wh": "wh", "obj": "binary", "cls": "cls"}
COMPONENTS = (
    [(f"{entry.term}_{entry.name}", FUNCTIONS[entry.term, entry.name], KIND_OF_TERM[entry.term]) for entry in REGISTRY
     if entry.term in KIND_OF_TERM]
    + [("obj_focal_gamma_0.5", lambda z, t: sigmoid_focal(z, t, gamma=0.5), "binary")]
)


def inputs_for(kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "cls":
        targets = (soft_targets(6, 4, seed=seed + 1) > 0.6).to(torch.float64)
        targets[0] = torch.tensor([1.0, 1.0, 0.0, 0.0])  # a darknet collision row
        return logits(6, 4, seed=seed), targets
    if kind == "wh":
        return logits(6, 2, seed=seed), logits(6, 2, seed=seed + 1)
    return logits(6, 2, seed=seed), soft_targets(6, 2, seed=seed + 1)


@pytest.mark.parametrize("name, fn, kind", COMPONENTS, ids=[c[0] for c in COMPONENTS])
def test_gradcheck(name, fn, kind):
    pred, target = inputs_for(kind, seed=20)
    assert torch.autograd.gradcheck(lambda p: fn(p, target), (pred.requires_grad_(),))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, fn, kind", COMPONENTS, ids=[c[0] for c in COMPONENTS])
def test_extreme_inputs_give_finite_values_and_gradients(name, fn, kind, dtype):
    """Logits of +-100 (saturated sigmoids, exactly 0 or 1 in float32), tw of +-50, and targets at and
    outside the ends of their ranges."""
    extreme = 50.0 if kind == "wh" else 100.0
    pred = torch.tensor([[extreme, -extreme], [-extreme, extreme], [extreme, extreme], [0.0, -extreme]], dtype=dtype)
    if kind == "cls":
        targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=dtype)
    elif kind == "wh":
        targets = torch.tensor([[-50.0, 50.0], [0.0, 0.0], [3.0, -3.0], [50.0, 50.0]], dtype=dtype)
    else:
        targets = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.5], [0.0, 1.0]], dtype=dtype)
    pred.requires_grad_()
    loss = fn(pred, targets)
    loss.sum().backward()
    assert loss.isfinite().all() and pred.grad.isfinite().all()


# --- varifocal and quality focal -----------------------------------------------------------------------------

def test_quality_focal_with_beta_0_is_bce_and_its_hand_value():
    z, t = logits(64, 3, seed=40), soft_targets(64, 3, seed=41)
    torch.testing.assert_close(quality_focal(z, t, beta=0.0), bce_with_logits(z, t))
    one = quality_focal(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    assert one.item() == pytest.approx(0.25 * math.log(2))  # |1 - 0.5|^2 ln 2
    p = z.sigmoid()
    torch.testing.assert_close(quality_focal(z, t), (t - p).abs() ** 2 * bce_with_logits(z, t))


def test_varifocal_against_its_formula_on_soft_targets():
    """Positives (q > 0) weighted by q, negatives (q = 0) by alpha p^gamma; hand values at z = 0."""
    z = logits(64, 3, seed=42)
    q = soft_targets(64, 3, seed=43) * (soft_targets(64, 3, seed=44) > 0.5)  # IoU-like targets, half of them 0
    p = z.sigmoid()
    bce = -(q * torch.log(p) + (1 - q) * torch.log(1 - p))
    expected = torch.where(q > 0, q * bce, 0.75 * p ** 2 * bce)
    torch.testing.assert_close(varifocal(z, q), expected)
    zero = torch.zeros(2, dtype=torch.float64)
    torch.testing.assert_close(varifocal(zero, torch.tensor([0.8, 0.0], dtype=torch.float64)),
                               torch.tensor([0.8 * (-(0.8 * math.log(0.5) + 0.2 * math.log(0.5))),
                                             0.75 * 0.25 * math.log(2)], dtype=torch.float64))
