"""Pure loss components for the xy, wh, objectness and class terms.

Each function takes raw head outputs (logits, or ``tw, th``) and targets, and returns the elementwise loss
with no weight and no reduction; the criterion (``criterion.py``) scales, sums and normalises. Shapes: the
output has the shape of the input, except ``cls_ce`` and ``cls_poly1`` which sum over the class dimension
(``Tensor[N, C]`` -> ``Tensor[N]``); the criterion sums over the class dimension when it is still there.

Notation as in ``loss-reference.md``: ``sig`` is the sigmoid, ``BCE(p, y) = -[y ln p + (1 - y) ln(1 - p)]``
with soft ``y`` allowed, computed from the logit so that logits of +-100 stay finite.

Each function is declared as a component, with its config name and hyper-parameters, in
``yolo_loss/config/components.py`` and bound to that name in ``registry.py``; the criterion binds the keyword
hyper-parameters (``beta``, ``alpha``, ``gamma``, ``eps``) from the config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------------------------------------------------
# xy: raw tx, ty of the positives against the cell offsets gx, gy in [0, 1).


def xy_bce(pred_logits: Tensor, target: Tensor) -> Tensor:
    """darknet's x, y term: ``BCE(sig(tx), gx)`` on the logit. ``Tensor[P, 2]`` x ``Tensor[P, 2]`` -> ``Tensor[P, 2]``.

    The gradient with respect to the logit is ``sig(tx) - gx``, which is the ``delta`` darknet's
    ``yolo_layer.c`` back-propagates (there with the sign flipped and no sigmoid derivative).
    """
    return F.binary_cross_entropy_with_logits(pred_logits, target, reduction="none")


def xy_mse(pred_logits: Tensor, target: Tensor) -> Tensor:
    """``0.5 (sig(tx) - gx)^2``, the common re-implementation. ``Tensor[P, 2]`` -> ``Tensor[P, 2]``.

    Its gradient ``(sig - g) sig (1 - sig)`` carries the sigmoid derivative that darknet's term does not,
    so it vanishes for saturated logits.
    """
    return 0.5 * (pred_logits.sigmoid() - target).square()


def xy_mse_t(pred_logits: Tensor, target: Tensor, *, eps: float = 1e-4) -> Tensor:
    """The YOLOv3 paper's t-space squared error: ``0.5 (tx - logit(clamp(gx, eps, 1 - eps)))^2``.

    ``Tensor[P, 2]`` -> ``Tensor[P, 2]``. The paper (section 2.1) says the gradient is ``t_hat - t`` with
    ``t_hat`` found by inverting the decode, i.e. ``logit(gx)``; the clamp keeps an offset of exactly 0
    (a truth centre on a cell border) at a finite target, ``logit(1e-4) = -9.21``.
    """
    return 0.5 * (pred_logits - torch.logit(target, eps=eps)).square()


def xy_mse_linear(pred: Tensor, target: Tensor) -> Tensor:
    """``0.5 (tx - gx)^2`` on the raw output: the x, y term of the linear decode (``model.decode=linear``, the
    YOLOv3 paper's "linear x, y predictions instead of logistic"), where ``tx`` is the offset itself.
    ``Tensor[P, 2]`` -> ``Tensor[P, 2]``: the same squared error as :func:`wh_mse`, on the offset."""
    return wh_mse(pred, target)


# ---------------------------------------------------------------------------------------------------------
# wh: raw tw, th of the positives against gw = ln(w / a_w), gh = ln(h / a_h).


def wh_mse(pred: Tensor, target: Tensor) -> Tensor:
    """``0.5 (tw - gw)^2`` (darknet and the paper). ``Tensor[P, 2]`` x ``Tensor[P, 2]`` -> ``Tensor[P, 2]``."""
    return 0.5 * (pred - target).square()


def wh_smooth_l1(pred: Tensor, target: Tensor, *, beta: float = 1.0) -> Tensor:
    """Smooth L1 (Girshick, "Fast R-CNN", ICCV 2015). ``Tensor[P, 2]`` -> ``Tensor[P, 2]``.

    With ``d = |tw - gw|``: ``0.5 d^2 / beta`` where ``d < beta``, else ``d - 0.5 beta``; equals
    ``F.smooth_l1_loss(pred, target, beta=beta, reduction="none")``. ``beta = 0`` is plain L1.
    Example (beta 1): d = 0.5 gives 0.125, d = 3 gives 2.5.
    """
    diff = (pred - target).abs()
    if beta == 0:
        return diff  # the quadratic branch would divide by zero (and poison the gradient through torch.where)
    return torch.where(diff < beta, 0.5 * diff.square() / beta, diff - 0.5 * beta)


def wh_l1(pred: Tensor, target: Tensor) -> Tensor:
    """``|tw - gw|``. ``Tensor[P, 2]`` x ``Tensor[P, 2]`` -> ``Tensor[P, 2]``."""
    return (pred - target).abs()


# ---------------------------------------------------------------------------------------------------------
# Binary terms on logits: objectness, and the independent-sigmoid class terms. Any shape, targets in [0, 1].


def bce_with_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """``BCE(sig(z), t)`` computed from the logit (log-sum-exp form). ``Tensor[...]`` -> ``Tensor[...]``.

    The gradient with respect to ``z`` is ``sig(z) - t``. Example: z = 0, t = 1 gives ln 2 = 0.6931.
    """
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def sigmoid_focal(logits: Tensor, targets: Tensor, *, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

    ``Tensor[...]`` x ``Tensor[...]`` -> ``Tensor[...]``:

        p_t     = p t + (1 - p)(1 - t),   p = sig(z)
        alpha_t = alpha t + (1 - alpha)(1 - t)       (alpha = -1: no alpha weighting)
        loss    = alpha_t * (1 - p_t)^gamma * BCE(p, t)

    Equals ``torchvision.ops.sigmoid_focal_loss(..., reduction="none")``; ``gamma = 0, alpha = -1`` is
    exactly ``bce_with_logits``. Example: z = 0, t = 1 (p_t = 1/2): ``0.25 * 0.25 * ln 2 = 0.0433``.
    """
    if not (0.0 <= alpha <= 1.0 or alpha == -1.0):
        raise ValueError(f"focal alpha must be in [0, 1], or -1 to disable, got {alpha}")
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    # 1 - p_t as sig(-z) rather than 1 - sig(z), which cancels to 0 for z > 17 in float32. For a saturated logit
    # it still underflows to 0 (float32, z = 100), and x^gamma with gamma < 1 has an infinite slope at 0 that
    # times the zero sigmoid slope gives NaN: the clamp at the smallest normal number keeps the slope finite.
    one_minus_p_t = targets * torch.sigmoid(-logits) + (1.0 - targets) * torch.sigmoid(logits)
    loss = bce * one_minus_p_t.clamp(min=torch.finfo(one_minus_p_t.dtype).tiny).pow(gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
    return loss


def varifocal(logits: Tensor, targets: Tensor, *, alpha: float = 0.75, gamma: float = 2.0) -> Tensor:
    """Varifocal loss (Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector", CVPR 2021), on logits:

        q > 0:  q * BCE(p, q)                  (a positive, weighted by its IoU-aware target q)
        q = 0:  alpha * p^gamma * BCE(p, 0)    (a negative, down-weighted as in focal loss)

    with ``p = sig(z)`` (the weight not detached, as mmdetection's ``varifocal_loss``). ``Tensor[...]`` ->
    ``Tensor[...]``. Example: z = 0, q = 0.8: ``0.8 * BCE(0.5, 0.8) = 0.8 * 0.6931 = 0.5545``; z = 0, q = 0:
    ``0.75 * 0.25 * ln 2 = 0.1300``.
    """
    p = logits.sigmoid()
    weight = torch.where(targets > 0, targets, alpha * p.pow(gamma))
    return weight * F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def quality_focal(logits: Tensor, targets: Tensor, *, beta: float = 2.0) -> Tensor:
    """Quality focal loss (Li et al., "Generalized Focal Loss", NeurIPS 2020): ``|y - p|^beta * BCE(p, y)`` with soft
    ``y`` (the IoU for an IoU-aware target, 0 for a negative), ``p = sig(z)``. ``beta = 0`` is BCE.
    ``Tensor[...]`` -> ``Tensor[...]``. Example: z = 0, y = 1: ``0.25 * ln 2 = 0.1733``."""
    p = logits.sigmoid()
    return (targets - p).abs().pow(beta) * F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def mse_on_sigmoid(logits: Tensor, targets: Tensor) -> Tensor:
    """``0.5 (sig(z) - t)^2`` (YOLOv1/v2-style squared error on the probability). ``Tensor[...]`` -> ``Tensor[...]``."""
    return 0.5 * (logits.sigmoid() - targets).square()


# ---------------------------------------------------------------------------------------------------------
# Classes: logits Tensor[N, C] against soft or multi-hot targets Tensor[N, C].


def cls_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """YOLOv3's independent logistic classifiers: ``BCE(sig(z_k), t_k)`` per class.

    ``Tensor[N, C]`` x ``Tensor[N, C]`` -> ``Tensor[N, C]``.
    """
    return bce_with_logits(logits, targets)


def cls_focal(logits: Tensor, targets: Tensor, *, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """``sigmoid_focal`` per class. ``Tensor[N, C]`` -> ``Tensor[N, C]``."""
    return sigmoid_focal(logits, targets, alpha=alpha, gamma=gamma)


def _normalise_rows(targets: Tensor) -> Tensor:
    """Scale each row of ``Tensor[N, C]`` to sum 1; a zero row stays zero.

    A multi-hot row comes from darknet's collision rule (two truths of different classes on one cell and
    anchor get the union of their classes); softmax can put only one unit of mass, so it is shared equally.
    """
    row_sum = targets.sum(-1, keepdim=True)
    return targets / torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))


def cls_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Softmax cross-entropy with soft targets: ``-sum_k t_k log softmax(z)_k``. ``Tensor[N, C]`` -> ``Tensor[N]``.

    The target rows are normalised to sum 1 first (a multi-hot row ``[1, 1, 0]`` becomes ``[0.5, 0.5, 0]``);
    a zero row gives 0. With one-hot rows this is ``F.cross_entropy(logits, class_index, reduction="none")``.
    Example: z = (0, 0), t = (1, 0): ln 2 = 0.6931.
    """
    return -(_normalise_rows(targets) * F.log_softmax(logits, dim=-1)).sum(-1)


def cls_poly1(logits: Tensor, targets: Tensor, *, eps: float = 1.0) -> Tensor:
    """Poly-1 (Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
    Functions", ICLR 2022): ``CE + eps (1 - P_t)``. ``Tensor[N, C]`` -> ``Tensor[N]``.

    ``P_t = sum_k t_k softmax(z)_k`` with the normalised targets of ``cls_ce`` (the paper's soft-label form).
    A zero row gives 0, as in ``cls_ce``; ``eps = 0`` is ``cls_ce``.
    Example: z = (0, 0), t = (1, 0), eps = 1: ``ln 2 + 1 - 1/2 = 1.1931``.
    """
    target_prob = _normalise_rows(targets)
    p_t = (target_prob * logits.softmax(dim=-1)).sum(-1)
    has_target = target_prob.sum(-1)  # 1 for a row with a target, 0 for a zero row
    return -(target_prob * F.log_softmax(logits, dim=-1)).sum(-1) + eps * (has_target - p_t)


def smooth_labels(targets: Tensor, eps: float) -> Tensor:
    """Label smoothing, YOLO convention (ultralytics ``smooth_BCE``): ``t (1 - eps) + eps / 2``.

    A positive 1 becomes ``1 - eps/2`` and a negative 0 becomes ``eps/2``, independently of the number of
    classes. This is not the softmax convention of ``F.cross_entropy(label_smoothing=eps)``
    (``1 - eps + eps/C`` and ``eps/C``); for ``cls_ce`` and ``cls_poly1`` the smoothed row is renormalised.
    """
    return targets * (1.0 - eps) + 0.5 * eps

