"""The criterion against independent references: a plain-loop darknet, the paper's t - t_hat, hand values."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torchvision

from yolo_loss.boxes import box_cxcywh_to_xyxy, box_iou_pairwise, ciou_loss
from yolo_loss.config import components as declared
from yolo_loss.config.components import COMPONENTS, Component
from yolo_loss.config.load import ConfigError, config_from_dict
from yolo_loss.config.schema import YOLOV3_ANCHORS, LossConfig
from yolo_loss.decode import STRIDES, decode_cxcywh, per_anchor_view
from yolo_loss.head import HeadSpec, build_head, class_activation
from yolo_loss.losses import registry
from yolo_loss.losses.assign import anchor_boxes_at_cells, assign_targets, ignore_mask, truths_per_image
from yolo_loss.losses.components import quality_focal
from yolo_loss.losses.criterion import YoloCriterion, build_criterion

IMG = 128
ANCHORS = [torch.tensor(YOLOV3_ANCHORS[3 * level:3 * level + 3], dtype=torch.float64) * IMG / 416
           for level in range(3)]


def make_criterion(cfg: LossConfig, num_classes: int) -> YoloCriterion:
    """The criterion of ``cfg`` on the test's anchors, with the head its class and x, y components imply."""
    head = HeadSpec.from_anchors(ANCHORS, strides=STRIDES, num_classes=num_classes,
                                 class_activation=class_activation(cfg.cls),
                                 decode="linear" if cfg.xy == "mse_linear" else "darknet")
    return build_criterion(cfg, head)


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def head_maps(batch: int, num_classes: int, seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3 * (5 + num_classes), IMG // s, IMG // s, generator=gen, dtype=torch.float64)
             * scale).requires_grad_() for s in STRIDES]


def shape_iou(w1: float, h1: float, w2: float, h2: float) -> float:
    inter = min(w1, w2) * min(h1, h2)
    return inter / (w1 * h1 + w2 * h2 - inter)


def box_iou_cxcywh(a, b) -> float:
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw, ih = max(0.0, min(ax2, bx2) - max(ax1, bx1)), max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def darknet_delta(preds: list[torch.Tensor], targets: torch.Tensor, num_classes: int,
                  ignore_thresh: float) -> list[torch.Tensor]:
    """A plain-loop re-implementation of darknet's forward_yolo_layer (src/yolo_layer.c), from the spec.

    Per image, per level: every cell/anchor starts as a negative with delta_obj = 0 - p unless its decoded box
    overlaps a truth of the image by more than ignore_thresh (delta 0). Then per truth: the best of all nine
    anchors by shape IoU (strict '>'); when it lives on this level, at cell (int(x * W), int(y * H)) the box deltas
    are s * (g - sig(t)) for x, y and s * (g - t) for w, h with s = 2 - w * h; objectness 1 - p; classes: when the
    class delta of that cell is already set (a collision), only the new class is set to 1 - p (union), else every
    class k gets (k == c) - p.
    """
    all_anchors = torch.cat(ANCHORS).tolist()
    deltas = []
    for level, (pred, stride) in enumerate(zip(preds, STRIDES)):
        out = pred.detach().view(pred.shape[0], 3, 5 + num_classes, *pred.shape[-2:])
        delta = torch.zeros_like(out)
        batch, _, _, height, width = out.shape
        for b in range(batch):
            truths = [row[1:].tolist() for row in targets if int(row[0]) == b]
            for n in range(3):
                a_w, a_h = ANCHORS[level][n].tolist()
                for j in range(height):
                    for i in range(width):
                        tx, ty, tw, th, to = out[b, n, :5, j, i].tolist()
                        box = ((i + sig(tx)) * stride, (j + sig(ty)) * stride,
                               a_w * math.exp(tw), a_h * math.exp(th))
                        best_iou = max((box_iou_cxcywh(box, [t[1] * IMG, t[2] * IMG, t[3] * IMG, t[4] * IMG])
                                        for t in truths), default=0.0)
                        delta[b, n, 4, j, i] = 0.0 if best_iou > ignore_thresh else 0.0 - sig(to)
            class_set = set()
            for cls, x, y, w, h in truths:
                best_n, best = 0, 0.0
                for k, (a_w, a_h) in enumerate(all_anchors):
                    iou = shape_iou(w * IMG, h * IMG, a_w, a_h)
                    if iou > best:
                        best_n, best = k, iou
                if best_n // 3 != level:
                    continue
                n = best_n % 3
                i, j = int(x * width), int(y * height)
                a_w, a_h = all_anchors[best_n]
                s = 2.0 - w * h
                tx, ty, tw, th, to = out[b, n, :5, j, i].tolist()
                delta[b, n, 0, j, i] = s * (x * width - i - sig(tx))
                delta[b, n, 1, j, i] = s * (y * height - j - sig(ty))
                delta[b, n, 2, j, i] = s * (math.log(w * IMG / a_w) - tw)
                delta[b, n, 3, j, i] = s * (math.log(h * IMG / a_h) - th)
                delta[b, n, 4, j, i] = 1.0 - sig(to)
                probs = out[b, n, 5:, j, i].sigmoid()
                if (n, j, i) in class_set:
                    delta[b, n, 5 + int(cls), j, i] = 1.0 - probs[int(cls)]
                else:
                    delta[b, n, 5:, j, i] = torch.nn.functional.one_hot(
                        torch.tensor(int(cls)), num_classes).to(probs) - probs
                    class_set.add((n, j, i))
        deltas.append(delta.view_as(pred))
    return deltas


def hard_targets(preds: list[torch.Tensor]) -> torch.Tensor:
    """Truths covering the cases that matter: a collision (two truths, same level/cell/anchor, different classes),
    truths whose best anchor lives on each of the three levels, an image without truths, and negatives above the
    ignore threshold (the predictions at some cells are set to decode onto a truth)."""
    rows = [
        # image 0: two truths of the same size in the same stride-8 cell (best anchor 0) -> collision
        [0, 1, 0.30, 0.30, 0.06, 0.08],
        [0, 2, 0.31, 0.29, 0.06, 0.08],
        [0, 0, 0.70, 0.60, 0.45, 0.50],   # large: stride 32
        [0, 3, 0.52, 0.20, 0.15, 0.25],   # medium: stride 16
        # image 1: nothing; image 2: a few
        [2, 3, 0.10, 0.90, 0.06, 0.05],
        [2, 1, 0.55, 0.45, 0.80, 0.70],
        [2, 2, 0.97, 0.03, 0.05, 0.04],   # near the corner: cell index at the border
    ]
    targets = torch.tensor(rows, dtype=torch.float64)
    # Make the prediction at a few non-positive cells decode almost onto a truth so the ignore rule triggers:
    # at stride 16, image 2, every anchor at the cell of the large truth, with tw/th matching it.
    with torch.no_grad():
        pred = preds[1].view(3, 3, -1, IMG // 16, IMG // 16)
        cx, cy, w, h = (targets[5, 2:] * IMG).tolist()
        i, j = int(cx / 16), int(cy / 16)
        for n in range(3):
            a_w, a_h = ANCHORS[1][n].tolist()
            pred[2, n, 0, j, i] = math.log((cx / 16 - i) / (1 - (cx / 16 - i)))
            pred[2, n, 1, j, i] = math.log((cy / 16 - j) / (1 - (cy / 16 - j)))
            pred[2, n, 2, j, i] = math.log(w * 1.05 / a_w)
            pred[2, n, 3, j, i] = math.log(h * 0.97 / a_h)
    return targets


def darknet_criterion(num_classes: int, ignore_thresh: float = 0.7) -> YoloCriterion:
    return make_criterion(LossConfig(ignore_thresh=ignore_thresh), num_classes)


def test_darknet_gradient_equals_plain_loop_delta():
    """B * dL/dz == -delta of darknet's loops, on every channel of every cell, to 1e-5."""
    num_classes = 4
    preds = head_maps(3, num_classes, seed=0)
    targets = hard_targets(preds)
    criterion = darknet_criterion(num_classes)
    result = criterion(preds, targets, IMG)
    result.total.backward()
    deltas = darknet_delta(preds, targets, num_classes, ignore_thresh=0.7)
    for pred, delta in zip(preds, deltas):
        torch.testing.assert_close(pred.grad * pred.shape[0], -delta, atol=1e-5, rtol=0)
    # The test cases really occur: a collision, ignored negatives, positives on all three levels.
    assert result.diagnostics["ignored"][1] >= 2
    assert (result.diagnostics["positives"] > 0).all()
    level0 = assign_targets(targets, num_classes=num_classes, anchors_per_level=ANCHORS, strides=STRIDES,
                            grid_sizes=[(16, 16), (8, 8), (4, 4)], img_size=(IMG, IMG))[0]
    assert (level0.target_cls.sum(-1) == 2).any(), "the collision case did not occur"


def test_darknet_loss_value_by_hand_single_truth():
    """One image, one truth, all logits 0: every p = 0.5. The truth (w = h = 0.25 of 128 = 32 px) has its best
    anchor (33, 23)*128/416 ... computed below; ignore off. Then per image

        L = (cells - 1) * ln 2                      (negatives: BCE(0.5, 0) = ln 2)
          + ln 2 + C ln 2                           (objectness and classes of the positive)
          + s * (BCE(0.5, gx) + BCE(0.5, gy))       (BCE(0.5, g) = ln 2 for any g)
          + s/2 * (gw^2 + gh^2)                     (tw = th = 0)
    """
    num_classes = 2
    preds = [torch.zeros(1, 3 * (5 + num_classes), IMG // s, IMG // s, dtype=torch.float64, requires_grad=True)
             for s in STRIDES]
    w = h = 0.25
    targets = torch.tensor([[0, 1, 0.5, 0.5, w, h]], dtype=torch.float64)
    criterion = make_criterion(LossConfig(ignore="none"), num_classes)
    total = criterion(preds, targets, IMG).total.item()
    all_anchors = torch.cat(ANCHORS)
    best = max(range(9), key=lambda k: (shape_iou(32, 32, *all_anchors[k].tolist()), -k))
    gw, gh = math.log(32 / all_anchors[best, 0].item()), math.log(32 / all_anchors[best, 1].item())
    cells = 3 * sum((IMG // s) ** 2 for s in STRIDES)
    s = 2 - w * h
    expected = (cells - 1) * math.log(2) + (1 + num_classes) * math.log(2) + s * 2 * math.log(2) \
        + s / 2 * (gw ** 2 + gh ** 2)
    assert total == pytest.approx(expected, rel=1e-12)


def test_paper_coordinate_gradient_is_t_minus_t_hat():
    """Paper preset: dL/dt = t - t_hat with t_hat from inverting the decode (no 2 - wh scale)."""
    num_classes = 3
    preds = head_maps(2, num_classes, seed=1)
    targets = torch.tensor([[0, 1, 0.41, 0.63, 0.2, 0.3], [1, 0, 0.2, 0.2, 0.05, 0.07]], dtype=torch.float64)
    cfg = LossConfig(xy="mse_t", box_scale="none", ignore="prior", ignore_thresh=0.5)
    criterion = make_criterion(cfg, num_classes)
    criterion(preds, targets, IMG).total.backward()
    levels = assign_targets(targets, num_classes=num_classes, anchors_per_level=ANCHORS, strides=STRIDES,
                            grid_sizes=[(IMG // s, IMG // s) for s in STRIDES], img_size=(IMG, IMG))
    checked = 0
    for pred, pos, stride in zip(preds, levels, STRIDES):
        view = pred.view(2, 3, 5 + num_classes, IMG // stride, IMG // stride)
        grad = pred.grad.view_as(view) * 2
        for k in range(pos.num_positives):
            b, n, j, i = (int(t[k]) for t in (pos.image, pos.anchor, pos.cell_y, pos.cell_x))
            cx, cy, w, h = (targets[int(pos.truth[k]), 2:] * IMG).tolist()
            a_w, a_h = ANCHORS[[8, 16, 32].index(stride)][n].tolist()
            gx, gy = cx / stride - i, cy / stride - j
            t_hat = [math.log(gx / (1 - gx)), math.log(gy / (1 - gy)), math.log(w / a_w), math.log(h / a_h)]
            t = view[b, n, :4, j, i].tolist()
            expected = torch.tensor([t[c] - t_hat[c] for c in range(4)], dtype=torch.float64)
            torch.testing.assert_close(grad[b, n, :4, j, i], expected, atol=1e-9, rtol=1e-9)
            checked += 1
    assert checked == 2


def test_assignment_hand_placed_boxes():
    """A box the size of an anchor lands on that anchor's level, anchor index and cell."""
    num_classes = 1
    grid = [(IMG // s, IMG // s) for s in STRIDES]
    for k in range(9):
        a_w, a_h = torch.cat(ANCHORS)[k].tolist()
        level, n = divmod(k, 3)
        stride = STRIDES[level]
        cx, cy = 37.0, 90.0
        targets = torch.tensor([[0, 0, cx / IMG, cy / IMG, a_w / IMG, a_h / IMG]], dtype=torch.float64)
        levels = assign_targets(targets, num_classes=num_classes, anchors_per_level=ANCHORS, strides=STRIDES,
                                grid_sizes=grid, img_size=(IMG, IMG))
        assert [lv.num_positives for lv in levels] == [int(lv == level) for lv in range(3)]
        pos = levels[level]
        assert (pos.anchor.item(), pos.cell_x.item(), pos.cell_y.item()) == (n, int(cx // stride), int(cy // stride))
        torch.testing.assert_close(pos.target_xy, torch.tensor([[cx / stride % 1, cy / stride % 1]],
                                                               dtype=torch.float64))
        torch.testing.assert_close(pos.target_wh, torch.zeros(1, 2, dtype=torch.float64), atol=1e-12, rtol=0)


def test_assignment_multi_anchor_and_ratio():
    """multi_anchor adds anchors above the shape-IoU threshold; ratio keeps anchors within anchor_t per side."""
    grid = [(IMG // s, IMG // s) for s in STRIDES]
    targets = torch.tensor([[0, 0, 0.5, 0.5, 20 / IMG, 20 / IMG]], dtype=torch.float64)

    def count(**kw):
        return [lv.num_positives for lv in assign_targets(targets, num_classes=1, anchors_per_level=ANCHORS,
                                                          strides=STRIDES, grid_sizes=grid, img_size=(IMG, IMG),
                                                          **kw)]
    all_anchors = torch.cat(ANCHORS)
    ious = [shape_iou(20, 20, *a) for a in all_anchors.tolist()]
    expected_multi = [sum(1 for k in range(3 * lv, 3 * lv + 3) if ious[k] > 0.213 or ious[k] == max(ious))
                      for lv in range(3)]
    best = max(range(9), key=lambda k: (ious[k], -k))
    assert count(rule="best_anchor") == [int(best // 3 == lv) for lv in range(3)]
    assert count(rule="multi_anchor", iou_thresh=0.213) == expected_multi
    ratios = [max(20 / a_w, a_w / 20, 20 / a_h, a_h / 20) for a_w, a_h in all_anchors.tolist()]
    assert count(rule="ratio", anchor_t=4.0) == [sum(r < 4.0 for r in ratios[3 * lv:3 * lv + 3]) for lv in range(3)]


def test_one_image_does_not_depend_on_the_batch():
    """With sum_per_image, B * L(batch) equals the sum of the single-image losses, term by term."""
    num_classes = 4
    preds = head_maps(3, num_classes, seed=2)
    targets = hard_targets(preds)
    criterion = darknet_criterion(num_classes)
    batch_terms = criterion([p.detach() for p in preds], targets, IMG).terms
    singles = []
    for b in range(3):
        rows = targets[targets[:, 0] == b].clone()
        rows[:, 0] = 0
        singles.append(criterion([p.detach()[b:b + 1] for p in preds], rows, IMG).terms)
    for term in batch_terms:
        torch.testing.assert_close(batch_terms[term] * 3, sum(s[term] for s in singles))


def test_weights_applied_once_and_total_is_their_sum():
    num_classes = 2
    preds = head_maps(2, num_classes, seed=3)
    targets = torch.tensor([[0, 1, 0.4, 0.4, 0.3, 0.2], [1, 0, 0.6, 0.5, 0.1, 0.1]], dtype=torch.float64)
    cfg = LossConfig()
    cfg.weights.obj_neg, cfg.weights.cls = 0.5, 2.0
    cfg.level_weights.obj_neg = [4.0, 1.0, 0.4]
    result = make_criterion(cfg, num_classes)(
        preds, targets, IMG)
    torch.testing.assert_close(result.weighted["obj_neg"],
                               result.terms["obj_neg"] * torch.tensor([2.0, 0.5, 0.2], dtype=torch.float64))
    torch.testing.assert_close(result.weighted["cls"], 2.0 * result.terms["cls"])
    torch.testing.assert_close(result.total, sum(w.sum() for w in result.weighted.values()))


def test_mean_per_term_divides_by_positives_and_cells():
    num_classes = 2
    preds = head_maps(2, num_classes, seed=4)
    targets = torch.tensor([[0, 1, 0.4, 0.4, 0.3, 0.2], [1, 0, 0.6, 0.5, 0.3, 0.25],
                            [1, 1, 0.2, 0.5, 0.28, 0.22]], dtype=torch.float64)
    summed = make_criterion(LossConfig(), num_classes)(preds, targets, IMG)
    mean = make_criterion(LossConfig(reduction="mean_per_term"), num_classes)(preds, targets, IMG)
    positives = summed.diagnostics["positives"].clamp(min=1)
    cells = torch.tensor([3 * (IMG // s) ** 2 * 2 for s in STRIDES], dtype=torch.float64)
    for term in ("xy", "wh", "cls"):
        torch.testing.assert_close(mean.terms[term], summed.terms[term] * 2 / positives)
    for term in ("obj_pos", "obj_neg"):
        torch.testing.assert_close(mean.terms[term], summed.terms[term] * 2 / cells)


@pytest.mark.parametrize("case", ["no_targets", "extreme_logits", "zero_size_box", "one_empty_level"])
def test_numerically_safe(case):
    """No NaN or inf for any finite input; empty positives give 0 with a gradient."""
    num_classes = 3
    scale = 100.0 if case == "extreme_logits" else 1.0
    preds = head_maps(2, num_classes, seed=5, scale=scale)
    if case == "extreme_logits":
        with torch.no_grad():
            for p in preds:
                v = p.view(2, 3, -1, *p.shape[-2:])
                v[:, :, 2:4] = torch.where(v[:, :, 2:4] > 0, 50.0, -50.0)
    targets = {
        "no_targets": torch.zeros(0, 6, dtype=torch.float64),
        "extreme_logits": torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3]], dtype=torch.float64),
        "zero_size_box": torch.tensor([[0, 1, 0.5, 0.5, 1e-9, 1e-9], [1, 2, 0.2, 0.2, 0.0, 0.1]],
                                      dtype=torch.float64).clamp(min=1e-12),
        "one_empty_level": torch.tensor([[0, 0, 0.5, 0.5, 0.05, 0.05]], dtype=torch.float64),
    }[case]
    for cfg in (LossConfig(), LossConfig(xy="none", wh="none", box="ciou", obj="focal", cls="focal"),
                LossConfig(xy="mse_t", box_scale="none", ignore="prior", ignore_thresh=0.5),
                LossConfig(xy="none", wh="none", box="log_iou", cls="ce", obj_target="iou",
                           reduction="mean_per_term")):
        for p in preds:
            p.grad = None
        result = make_criterion(cfg, num_classes)(
            preds, targets, IMG)
        result.total.backward()
        assert torch.isfinite(result.total)
        for values in (*result.terms.values(), *result.diagnostics.values()):
            assert torch.isfinite(values).all()
        for p in preds:
            assert p.grad is not None and torch.isfinite(p.grad).all()
        if case == "no_targets":
            for term in ("xy", "wh", "box", "cls", "obj_pos"):
                if term in result.terms:
                    assert (result.terms[term] == 0).all()


def with_component(entry: Component) -> LossConfig:
    """The darknet preset with ``entry`` in its slot (a box component replaces x, y, w, h)."""
    if entry.term == "box":
        return LossConfig(xy="none", wh="none", box=entry.name)
    return LossConfig(**{entry.term: entry.name})


@pytest.mark.parametrize("entry", COMPONENTS, ids=[f"{e.term}={e.name}" for e in COMPONENTS])
def test_every_component_trains_in_the_criterion(entry: Component) -> None:
    """Each registry entry in its slot, with label smoothing on and every other term at darknet's: finite positive
    loss and gradients, the term present, and the component's own hyper-parameter reaching it (a changed value
    changes the term)."""
    num_classes = 3
    preds = head_maps(2, num_classes, seed=6)
    targets = torch.tensor([[0, 1, 0.4, 0.4, 0.3, 0.2], [1, 0, 0.6, 0.5, 0.1, 0.1], [1, 2, 0.6, 0.5, 0.1, 0.1]],
                           dtype=torch.float64)
    cfg = with_component(entry)
    cfg.label_smoothing = 0.1
    result = make_criterion(cfg, num_classes)(preds, targets, IMG)
    grads = torch.autograd.grad(result.total, preds)
    assert torch.isfinite(result.total) and result.total > 0
    assert all(torch.isfinite(g).all() for g in grads)
    terms = ("obj_pos", "obj_neg") if entry.term == "obj" else (entry.term,)
    assert all(term in result.terms and (result.terms[term] != 0).any() for term in terms)
    plain = dataclasses.replace(cfg, label_smoothing=0.0)  # (smoothing would leave no target at 0 for varifocal)
    reference = make_criterion(plain, num_classes)(preds, targets, IMG)
    for param in entry.params:
        changed = dataclasses.replace(plain, **{param.field: param.default * 0.5 + 0.1})
        other = make_criterion(changed, num_classes)(preds, targets, IMG)
        assert any(not torch.equal(other.terms[term], reference.terms[term]) for term in terms), param.field


def test_the_schema_names_are_the_registry():
    """The allowed values of loss.xy ... loss.cls and the hyper-parameter keys are those of the registry entries."""
    fields = {f.name: f for f in dataclasses.fields(LossConfig)}
    for term in declared.TERMS:
        entries = {e.name for e in COMPONENTS if e.term == term}
        allowed = set(fields[term].metadata["choices"])
        assert allowed == entries | ({"none"} if term in declared.OPTIONAL_TERMS else set()), term
    for entry in COMPONENTS:
        for param in declared.all_params(entry):
            assert fields[param.field].default == param.default
            if param.choices:  # a named option: a string field with those choices
                assert fields[param.field].metadata["choices"] == param.choices and param.default in param.choices
            else:
                assert fields[param.field].metadata["range"] == (param.low, param.high, param.low_open,
                                                                 param.high_open)
    keys = {p.field for e in COMPONENTS for p in declared.all_params(e)}
    keys |= {p.field for e in declared.ASSIGNERS for p in e.params}
    assert keys == {p.field for p in declared.hyperparameters()}
    assert set(fields["assign"].metadata["choices"]) == set(declared.assign_names())
    assert keys <= set(fields)


def test_a_softmax_loss_needs_a_softmax_head() -> None:
    """A softmax class loss with a sigmoid head (or the reverse) would be evaluated with another meaning than it
    was trained with: refused."""
    sigmoid_head = HeadSpec.from_anchors(ANCHORS, strides=STRIDES, num_classes=3)
    with pytest.raises(ValueError, match="softmax"):
        build_criterion(LossConfig(cls="ce"), sigmoid_head)
    softmax_head = dataclasses.replace(sigmoid_head, class_activation="softmax")
    with pytest.raises(ValueError, match="sigmoid"):
        build_criterion(LossConfig(cls="bce"), softmax_head)
    assert [class_activation(name) for name in ("bce", "ce", "focal", "poly1")] == [
        "sigmoid", "softmax", "sigmoid", "softmax"]


def test_prior_ignore_rule_by_hand():
    """Paper's rule: an anchor box placed at its cell centre that overlaps a truth by > 0.5 is ignored, whatever
    the network predicts there; the positive itself is not. Counted here by a plain loop over every cell.

    A 130 x 130 truth (at 416 px) has shape IoU 10440/16900 = 0.62 with anchor (116, 90) (its positive) and
    16900/30888 = 0.547 with anchor (156, 198) at the same cell, so the latter is ignored."""
    w = h = 130 * IMG / 416
    cx = cy = 1.5 * 32
    targets = torch.tensor([[0, 0, cx / IMG, cy / IMG, w / IMG, h / IMG]], dtype=torch.float64)
    preds = head_maps(1, 1, seed=7)
    criterion = make_criterion(LossConfig(ignore="prior", ignore_thresh=0.5), 1)
    result = criterion(preds, targets, IMG)
    expected = []
    for level, stride in enumerate(STRIDES):
        cells = IMG // stride
        expected.append(sum(
            box_iou_cxcywh(((i + 0.5) * stride, (j + 0.5) * stride, *ANCHORS[level][n].tolist()),
                           (cx, cy, w, h)) > 0.5 and (level, n, i, j) != (2, 0, 1, 1)
            for n in range(3) for j in range(cells) for i in range(cells)))
    assert result.diagnostics["ignored"].tolist() == expected
    assert expected[2] >= 1
    assert result.diagnostics["positives"].tolist() == [0, 0, 1]


def brute_force_ignore(boxes_cxcywh: torch.Tensor, truths_xyxy: torch.Tensor, thresh: float) -> torch.Tensor:
    """Every box against every truth of its image with torchvision's box_iou, image by image."""
    batch = truths_xyxy.shape[0]
    boxes = boxes_cxcywh.expand(batch, *boxes_cxcywh.shape[-4:]) if boxes_cxcywh.dim() == 4 else boxes_cxcywh
    mask = torch.zeros(boxes.shape[:4], dtype=torch.bool)
    for b in range(batch):
        flat = torchvision.ops.box_convert(boxes[b].reshape(-1, 4), "cxcywh", "xyxy")
        iou = torchvision.ops.box_iou(flat, truths_xyxy[b])
        mask[b] = (iou > thresh).any(1).view(boxes.shape[1:4]) if iou.numel() else False
    return mask


@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7, 0.95])
def test_ignore_mask_equals_all_pairs(thresh: float) -> None:
    """The ignore rule compares only the cells near a truth's centre (from 0.1 up); it must find what every pair finds:
    random predictions (some saturated onto a cell border, some copied onto a truth), truths on cell borders,
    partly outside the image, zero-size, and images with fewer truths than others (padding rows)."""
    gen = torch.Generator().manual_seed(int(thresh * 100))
    batch, anchors, stride, height, width = 3, 3, 8, 10, 12
    img_w, img_h = width * stride, height * stride
    offsets = torch.rand(batch, anchors, height, width, 2, generator=gen)
    offsets[0, 0, :, :3] = 1.0  # sig(tx) = 1 in float32: the centre on the cell's right/bottom border
    offsets[1, 1, :2] = 0.0
    grid = torch.stack(torch.meshgrid(torch.arange(width), torch.arange(height), indexing="xy"), -1)
    centres = (grid + offsets) * stride
    sizes = torch.exp(torch.randn(batch, anchors, height, width, 2, generator=gen)) * 20
    boxes = torch.cat((centres, sizes), -1)
    targets = [[0, 0, 0.5, 0.5, 0.3, 0.4], [0, 0, 16 / img_w, 24 / img_h, 16 / img_w, 16 / img_h],  # on borders
               [0, 0, 0.95, 0.1, 0.3, 0.3], [0, 0, 0.4, 0.6, 0.0, 0.2],  # partly outside, zero width
               [1, 0, 0.2, 0.3, 0.5, 0.5], [2, 0, 0.7, 0.7, 0.1, 0.1], [2, 0, 0.3, 0.5, 0.9, 0.9],
               [2, 0, 0.7, 0.72, 0.12, 0.1]]
    targets = torch.tensor(targets, dtype=torch.float32)
    truths = truths_per_image(targets, batch, (img_h, img_w))
    # predictions that decode onto a truth from the cell of its centre (IoU 1: always ignored)
    for row, (b, _, cx, cy, w, h) in enumerate(targets.tolist()):
        i, j = min(int(cx * img_w // stride), width - 1), min(int(cy * img_h // stride), height - 1)
        boxes[int(b), row % anchors, j, i] = torch.tensor([cx * img_w, cy * img_h, w * img_w, h * img_h])

    got = ignore_mask(boxes, truths, thresh, stride)
    expected = brute_force_ignore(boxes, truths, thresh)
    assert expected.sum() >= 5  # the cases really occur
    assert torch.equal(got, expected)

    prior_boxes = anchor_boxes_at_cells(torch.tensor([[10.0, 13.0], [33.0, 23.0], [62.0, 45.0]]), stride,
                                        height, width)
    assert torch.equal(ignore_mask(prior_boxes, truths, thresh, stride), brute_force_ignore(prior_boxes, truths,
                                                                                             thresh))


def test_wise_iou_running_mean_is_criterion_state():
    """Wise-IoU's running mean of 1 - IoU: updated before each training call with that batch's mean over every
    positive (momentum m: 1 -> (1 - m) + m * mean), left alone by evaluation calls, saved and restored."""
    num_classes = 3
    preds = head_maps(2, num_classes, seed=8)
    targets = torch.tensor([[0, 1, 0.4, 0.4, 0.3, 0.2], [1, 0, 0.6, 0.5, 0.1, 0.1]], dtype=torch.float64)
    cfg = LossConfig(xy="none", wh="none", box="wiou", wiou_momentum=0.5)
    criterion = make_criterion(cfg, num_classes)
    assert criterion.state_dict()["iou_mean"].item() == 1.0
    first = criterion(preds, targets, IMG)
    ious = torch.cat([box_iou_pairwise(*pair) for pair in positive_boxes(first, preds, criterion)])
    expected = 0.5 * 1.0 + 0.5 * (1 - ious).mean().item()
    assert criterion.state_dict()["iou_mean"].item() == pytest.approx(expected)
    saved = criterion.state_dict()
    criterion(preds, targets, IMG, update_state=False)  # evaluation
    assert criterion.state_dict()["iou_mean"].item() == pytest.approx(expected)
    criterion(preds, targets, IMG)
    assert criterion.state_dict()["iou_mean"].item() != pytest.approx(expected)
    fresh = make_criterion(cfg, num_classes)
    fresh.load_state_dict(saved)
    assert fresh.state_dict()["iou_mean"].item() == pytest.approx(expected)
    assert make_criterion(LossConfig(), num_classes).state_dict() == {}  # stateless losses carry no state


# Wise-IoU's update rule, by hand: one truth per level at a cell centre, zero head outputs (the decoded box is the
# anchor at the cell centre), the truth the anchor widened by k: the IoU is 1/k (the anchor inside the truth), and the
# truth's best anchor is that one (shape IoUs checked in the test). 1 - IoU is 1/2, 1/4 and 1/5 on levels 0, 1, 2.
WIOU_TRUTHS = ((0, 3, 5, 2.0), (3, 2, 4, 4 / 3), (6, 1, 2, 5 / 4))  # (anchor of the 9, cell x, cell y, k)


def wiou_hand_case() -> tuple[list[torch.Tensor], torch.Tensor, list[float]]:
    """Zero head maps, the three truths of WIOU_TRUTHS, and each level's 1 - IoU (1 - 1/k)."""
    all_anchors = torch.cat(ANCHORS)
    preds = [torch.zeros(1, 3 * (5 + 3), IMG // s, IMG // s, dtype=torch.float64, requires_grad=True)
             for s in STRIDES]
    rows = []
    for level, (anchor, cell_x, cell_y, k) in enumerate(WIOU_TRUTHS):
        a_w, a_h = all_anchors[anchor].tolist()
        ious = [shape_iou(k * a_w, a_h, w, h) for w, h in all_anchors.tolist()]
        assert max(range(9), key=ious.__getitem__) == anchor and anchor // 3 == level
        stride = STRIDES[level]
        rows.append([0, level, (cell_x + 0.5) * stride / IMG, (cell_y + 0.5) * stride / IMG, k * a_w / IMG, a_h / IMG])
    return preds, torch.tensor(rows, dtype=torch.float64), [1 - 1 / k for *_, k in WIOU_TRUTHS]


def wiou_box_term(l_iou: float, iou_mean: float, truth_row: torch.Tensor, alpha: float = 1.9,
                  delta: float = 3.0) -> float:
    """A level's box term for one concentric positive (R = 1) under sum_per_image with B = 1, two_minus_wh."""
    beta = l_iou / iou_mean
    scale = 2 - float(truth_row[4] * truth_row[5])
    return scale * beta / (delta * alpha ** (beta - delta)) * l_iou


@pytest.mark.parametrize("momentum", [0.5, 0.01])
def test_wise_iou_running_mean_per_level_by_hand(momentum):
    """wiou_update: level (the authors' code, once per call of its loss, one call per level): before each level's
    loss, in level order, iou_mean <- (1 - m) iou_mean + m * (that level's mean of 1 - IoU), and that level's loss
    uses the updated mean. With m = 0.5: 1 -> 0.75 -> 0.5 -> 0.35."""
    preds, targets, l_iou = wiou_hand_case()
    cfg = LossConfig(xy="none", wh="none", box="wiou", wiou_momentum=momentum, wiou_update="level")
    criterion = make_criterion(cfg, 3)
    result = criterion(preds, targets, IMG)
    assert [pos.num_positives for pos in result.positives] == [1, 1, 1]
    ious = [box_iou_pairwise(*pair).item() for pair in positive_boxes(result, preds, criterion)]
    assert [1 - iou for iou in ious] == pytest.approx(l_iou, rel=1e-6)
    means, mean = [], 1.0
    for level_mean in l_iou:
        mean = (1 - momentum) * mean + momentum * level_mean
        means.append(mean)
    if momentum == 0.5:
        assert means == pytest.approx([0.75, 0.5, 0.35])
    assert criterion.state_dict()["iou_mean"].item() == pytest.approx(means[-1], rel=1e-6)
    for level in range(3):  # each level's loss used the mean as updated by that level (and not yet by the next)
        expected = wiou_box_term(l_iou[level], means[level], targets[level])
        assert result.terms["box"][level].item() == pytest.approx(expected, rel=1e-6)


def test_wise_iou_running_mean_per_step_by_hand():
    """wiou_update: step (the default, the committed runs'): once per call, with the mean over all levels'
    positives, then every level uses it. m = 0.5: 1 -> 0.5 + 0.5 * (1/2 + 1/4 + 1/5) / 3. The key left out and
    set to step give the same losses and state, bit for bit."""
    preds, targets, l_iou = wiou_hand_case()
    results, states = [], []
    for extra in ({}, {"wiou_update": "step"}):
        criterion = make_criterion(LossConfig(xy="none", wh="none", box="wiou", wiou_momentum=0.5, **extra), 3)
        results.append(criterion(preds, targets, IMG))
        states.append(criterion.state_dict()["iou_mean"])
    mean = 0.5 + 0.5 * sum(l_iou) / 3
    assert states[0].item() == pytest.approx(mean, rel=1e-6)
    for level in range(3):
        assert results[0].terms["box"][level].item() == pytest.approx(
            wiou_box_term(l_iou[level], mean, targets[level]), rel=1e-6)
    assert torch.equal(states[0], states[1])
    assert all(torch.equal(results[0].terms[t], results[1].terms[t]) for t in results[0].terms)


def test_wise_iou_level_updates_skip_levels_without_positives_and_spare_evaluation():
    """A level without positives leaves the mean alone (the authors' YOLOv5 loop calls the loss only where a level
    has positives); update_state=False (evaluation) uses the mean without updating it."""
    preds, targets, l_iou = wiou_hand_case()
    criterion = make_criterion(LossConfig(xy="none", wh="none", box="wiou", wiou_momentum=0.5,
                                          wiou_update="level"), 3)
    criterion(preds, targets[[0, 2]], IMG)  # levels 0 and 2 only
    after = 0.5 * (0.5 * 1.0 + 0.5 * l_iou[0]) + 0.5 * l_iou[2]
    assert criterion.state_dict()["iou_mean"].item() == pytest.approx(after, rel=1e-6)
    result = criterion(preds, targets, IMG, update_state=False)
    assert criterion.state_dict()["iou_mean"].item() == pytest.approx(after, rel=1e-6)
    for level in range(3):
        assert result.terms["box"][level].item() == pytest.approx(
            wiou_box_term(l_iou[level], after, targets[level]), rel=1e-6)


def test_wise_iou_level_state_survives_state_dict():
    """wiou_update: level: the state saved after a step and loaded into a fresh criterion continues exactly (float32
    head maps, as in training: the state stays float32; float64 maps would make it float64, and loading casts it to
    the fresh criterion's float32)."""
    num_classes = 3
    preds = [p.detach().float().requires_grad_() for p in head_maps(2, num_classes, seed=8)]
    targets = torch.tensor([[0, 1, 0.4, 0.4, 0.3, 0.2], [1, 0, 0.6, 0.5, 0.1, 0.1], [1, 2, 0.2, 0.7, 0.05, 0.08],
                            [0, 0, 0.7, 0.3, 0.7, 0.6]], dtype=torch.float64)
    cfg = LossConfig(xy="none", wh="none", box="wiou", wiou_momentum=0.2, wiou_update="level")
    criterion = make_criterion(cfg, num_classes)
    first = criterion(preds, targets, IMG)
    assert all(pos.num_positives for pos in first.positives)  # every level updates
    saved = criterion.state_dict()
    fresh = make_criterion(cfg, num_classes)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.state_dict()["iou_mean"], saved["iou_mean"])
    again, resumed = criterion(preds, targets, IMG), fresh(preds, targets, IMG)
    assert torch.equal(again.total, resumed.total)
    assert torch.equal(criterion.state_dict()["iou_mean"], fresh.state_dict()["iou_mean"])
    # and the per-level rule is not the per-step one on the same batch
    step = make_criterion(dataclasses.replace(cfg, wiou_update="step"), num_classes)
    step(preds, targets, IMG)
    assert step.state_dict()["iou_mean"].item() != pytest.approx(saved["iou_mean"].item())


def test_wise_iou_update_is_a_checked_config_key():
    loss = {"xy": "none", "wh": "none", "box": "wiou"}
    assert config_from_dict({"loss": {**loss, "wiou_update": "level"}}).loss.wiou_update == "level"
    assert config_from_dict({"loss": loss}).loss.wiou_update == "step"
    with pytest.raises(ConfigError, match="wiou_update"):
        config_from_dict({"loss": {**loss, "wiou_update": "epoch"}})
    with pytest.raises(ValueError, match="wiou_update"):
        make_criterion(LossConfig(xy="none", wh="none", box="wiou", wiou_update="epoch"), 3)


def positive_boxes(result, preds, criterion):
    """(decoded prediction, truth) xyxy boxes of the positives of a result, level by level."""
    pairs = []
    for pred, pos, stride in zip(preds, result.positives, criterion.head.strides):
        rows = per_anchor_view(pred.detach(), 3)[pos.image, pos.anchor, :4, pos.cell_y, pos.cell_x]
        box = decode_cxcywh(rows, torch.stack((pos.cell_x, pos.cell_y), -1).to(rows), pos.anchor_wh, stride)
        pairs.append((box_cxcywh_to_xyxy(box), box_cxcywh_to_xyxy(pos.target_box_cxcywh)))
    return pairs


def test_iou_aware_class_targets():
    """cls_target: iou: the true class's target on a positive is the detached IoU of its decoded box (the other
    classes stay 0): the class term equals BCE against those targets, worked out here from the positives."""
    num_classes = 3
    preds = head_maps(2, num_classes, seed=9)
    targets = torch.tensor([[0, 1, 0.4, 0.4, 0.3, 0.2], [1, 2, 0.6, 0.5, 0.1, 0.1]], dtype=torch.float64)
    criterion = make_criterion(LossConfig(cls="qfl", cls_target="iou"), num_classes)
    result = criterion(preds, targets, IMG)
    for level, ((pred_xyxy, truth_xyxy), pred, pos) in enumerate(zip(positive_boxes(result, preds, criterion),
                                                                     preds, result.positives)):
        rows = per_anchor_view_rows(pred, pos)
        iou = box_iou_pairwise(pred_xyxy, truth_xyxy).clamp(min=0)
        expected = quality_focal(rows[:, 5:], pos.target_cls * iou[:, None]).sum() / 2  # sum_per_image, B = 2
        torch.testing.assert_close(result.terms["cls"][level], expected)
    assert result.terms["cls"].sum() > 0
    with pytest.raises(ConfigError, match="cls_target"):
        config_from_dict({"loss": {"cls": "ce", "cls_target": "iou"}})


def per_anchor_view_rows(pred, pos):
    """The raw head rows (all channels) of a level's positives."""
    return per_anchor_view(pred, 3)[pos.image, pos.anchor, :, pos.cell_y, pos.cell_x]


@pytest.mark.parametrize("thresh, margin", [(0.5, 0.1), (0.7, 0.5), (0.7, 0.025)])
def test_ignore_mask_with_centres_outside_their_cell(thresh: float, margin: float) -> None:
    """With scale_x_y or YOLOv5's decode a centre can lie up to ``margin`` cells outside its cell: the sparse ignore
    rule, told the margin, still finds what every pair finds, and without it would miss some (the case occurs)."""
    gen = torch.Generator().manual_seed(int(100 * margin))
    batch, anchors, stride, height, width = 2, 3, 8, 9, 11
    offsets = torch.rand(batch, anchors, height, width, 2, generator=gen) * (1 + 2 * margin) - margin
    offsets[0, :, :, :2] = -margin  # saturated onto the widened border
    offsets[1, :, :2] = 1 + margin
    grid = torch.stack(torch.meshgrid(torch.arange(width), torch.arange(height), indexing="xy"), -1)
    sizes = torch.exp(torch.randn(batch, anchors, height, width, 2, generator=gen) * 0.5) * 10
    boxes = torch.cat(((grid + offsets) * stride, sizes), -1)
    truths = torch.rand(batch, 12, 2, generator=gen) * torch.tensor([width * stride, height * stride])
    truths = torch.cat((truths, truths + 6 + 10 * torch.rand(batch, 12, 2, generator=gen)), -1)
    # truths copying a small box whose centre is outside its cell: IoU 1, from a cell the truth does not cover
    small = margin * stride
    boxes[0, 1, 3, 4] = torch.tensor([(4 - margin) * stride, 3.5 * stride, small, small])
    boxes[1, 2, 5, 6] = torch.tensor([6.5 * stride, (6 + margin) * stride, small, small])
    truths[0, 0] = box_cxcywh_to_xyxy(boxes[0, 1, 3, 4])
    truths[1, 0] = box_cxcywh_to_xyxy(boxes[1, 2, 5, 6])
    expected = brute_force_ignore(boxes, truths, thresh)
    assert expected[0, 1, 3, 4] and expected[1, 2, 5, 6]
    assert torch.equal(ignore_mask(boxes, truths, thresh, stride, margin), expected)
    assert not torch.equal(ignore_mask(boxes, truths, thresh, stride), expected)  # the margin is needed


def test_ignore_mask_with_unbounded_centres_compares_every_pair() -> None:
    """The linear decode's centres can be anywhere (margin inf): the mask is the all-pairs one, including a box
    three cells from its own cell that copies a truth covering none of the cells around it."""
    gen = torch.Generator().manual_seed(3)
    batch, anchors, stride, height, width = 2, 3, 8, 6, 7
    grid = torch.stack(torch.meshgrid(torch.arange(width), torch.arange(height), indexing="xy"), -1)
    offsets = torch.randn(batch, anchors, height, width, 2, generator=gen) * 2
    sizes = torch.exp(torch.randn(batch, anchors, height, width, 2, generator=gen) * 0.5) * 10
    boxes = torch.cat(((grid + offsets) * stride, sizes), -1)
    truths = torch.rand(batch, 5, 2, generator=gen) * torch.tensor([width * stride, height * stride])
    truths = torch.cat((truths, truths + 6 + 10 * torch.rand(batch, 5, 2, generator=gen)), -1)
    boxes[0, 0, 0, 0] = torch.tensor([4.5 * stride, 3.5 * stride, 4.0, 4.0])  # cell (0, 0), centre in cell (4, 3)
    truths[0, 0] = box_cxcywh_to_xyxy(boxes[0, 0, 0, 0])
    expected = brute_force_ignore(boxes, truths, 0.7)
    assert expected[0, 0, 0, 0]
    assert torch.equal(ignore_mask(boxes, truths, 0.7, stride, math.inf), expected)


def test_neighbour_cells_and_kept_collisions_hand_placed() -> None:
    """YOLOv5's positives on a 16 x 16 grid (stride 8, one anchor per level that every truth fits): a centre at
    cells (5.3, 7.8) is positive in its cell (5, 7), the cell to its left (4, 7) and the one below (5, 8); one at
    (0.4, 15.6) (the grid's outer cells) only in (0, 15); two truths on one cell stay two rows, the later one
    writing the objectness target."""
    anchors = [torch.tensor([[16.0, 16.0]]), torch.tensor([[1000.0, 1000.0]]), torch.tensor([[2000.0, 2000.0]])]
    targets = torch.tensor([[0, 0, 5.3 / 16, 7.8 / 16, 0.1, 0.1], [0, 1, 0.4 / 16, 15.6 / 16, 0.1, 0.1],
                            [1, 2, 2.5 / 16, 2.5 / 16, 0.1, 0.1], [1, 0, 2.5 / 16, 2.5 / 16, 0.12, 0.1]])
    positives = assign_targets(targets, num_classes=3, anchors_per_level=anchors, strides=(8, 16, 32),
                               grid_sizes=[(16, 16), (8, 8), (4, 4)], img_size=(128, 128), rule="ratio",
                               neighbour_cells=True, collisions="keep")[0]
    rows = {(int(t), int(x), int(y)): bool(o) for t, x, y, o in zip(positives.truth, positives.cell_x,
                                                                    positives.cell_y, positives.objectness_row)}
    # truth 2 and 3: centre (2.5, 2.5) is exactly half-way: not < 0.5 to the left/above, but 16 - 2.5 = 13.5 has
    # fraction 0.5, not < 0.5, either: only the centre cell.
    assert rows == {(0, 5, 7): True, (0, 4, 7): True, (0, 5, 8): True, (1, 0, 15): True,
                    (2, 2, 2): False, (3, 2, 2): True}
    first = positives.truth.tolist().index(0)
    torch.testing.assert_close(positives.target_xy[first], torch.tensor([0.3, 0.8]))
    left = [i for i, (t, x) in enumerate(zip(positives.truth, positives.cell_x)) if t == 0 and x == 4][0]
    torch.testing.assert_close(positives.target_xy[left], torch.tensor([1.3, 0.8]))  # in [1, 1.5): a neighbour
    assert positives.target_cls[positives.truth == 2].tolist() == [[0.0, 0.0, 1.0]]  # each kept row its own class
    merged = assign_targets(targets, num_classes=3, anchors_per_level=anchors, strides=(8, 16, 32),
                            grid_sizes=[(16, 16), (8, 8), (4, 4)], img_size=(128, 128), rule="ratio")[0]
    assert merged.num_positives == 3 and merged.target_cls[merged.truth == 3].tolist() == [[1.0, 0.0, 1.0]]


def test_reduction_mean_per_term_times_batch() -> None:
    """mean_per_term_times_batch is mean_per_term times B, term by term."""
    preds = head_maps(3, 2, seed=10)
    targets = torch.tensor([[0, 1, 0.4, 0.4, 0.3, 0.2], [2, 0, 0.6, 0.5, 0.1, 0.1]], dtype=torch.float64)
    mean = make_criterion(LossConfig(reduction="mean_per_term"), 2)(preds, targets, IMG)
    times = make_criterion(LossConfig(reduction="mean_per_term_times_batch"), 2)(preds, targets, IMG)
    for term in mean.terms:
        torch.testing.assert_close(times.terms[term], 3 * mean.terms[term])


def test_ciou_objectness_target() -> None:
    """obj_target: ciou: the positives' objectness target is their detached CIoU clamped at 0, as ComputeLoss's."""
    preds = head_maps(2, 2, seed=11)
    targets = torch.tensor([[0, 1, 0.4, 0.4, 0.3, 0.2], [1, 0, 0.6, 0.5, 0.1, 0.1]], dtype=torch.float64)
    criterion = make_criterion(LossConfig(obj_target="ciou", xy="none", wh="none", box="ciou"), 2)
    result = criterion(preds, targets, IMG)
    for level, ((pred_xyxy, truth_xyxy), pred, pos) in enumerate(zip(positive_boxes(result, preds, criterion),
                                                                     preds, result.positives)):
        target = (1 - ciou_loss(pred_xyxy, truth_xyxy)).clamp(min=0)
        logits = per_anchor_view_rows(pred, pos)[:, 4]
        expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum") / 2
        torch.testing.assert_close(result.terms["obj_pos"][level], expected)


@pytest.mark.parametrize("overrides, key", [
    ({"model": {"decode": "yolov5"}}, "loss.wh"),
    ({"model": {"decode": "darknet"}, "loss": {"neighbour_cells": True}}, "loss.neighbour_cells"),
    ({"model": {"decode": "yolov5"}, "loss": {"xy": "none", "wh": "none", "box": "ciou_darknet"}}, "loss.box"),
    ({"model": {"decode": "yolov5", "scale_x_y": [1.2, 1.1, 1.05]}}, "model.scale_x_y"),
    ({"model": {"scale_x_y": [1.2, 1.1]}}, "model.scale_x_y"),
    ({"model": {"decode": "linear"}}, "loss.xy"),  # the darknet preset's xy=bce has a sigmoid the decode lacks
    ({"loss": {"xy": "mse_linear"}}, "loss.xy"),  # and mse_linear needs the linear decode
    ({"model": {"decode": "linear", "scale_x_y": [1.2, 1.1, 1.05]}, "loss": {"xy": "mse_linear"}}, "model.scale_x_y"),
])
def test_decode_config_errors_name_the_key(overrides, key) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(overrides)


def test_linear_decode_trains_its_offsets_and_keeps_darknets_wh() -> None:
    """model.decode=linear with loss.xy=mse_linear, all outputs 0: one 16 px truth centred at (41.6, 19.2) px of a
    64 px image, whose best anchor is (116, 90) * 64 / 416 at stride 32: cell (1, 0), offset (0.3, 0.6), so the x, y
    term is 0.5 (0.3^2 + 0.6^2) = 0.225 (box scale off, batch 1), and the w, h term darknet's on ln(16 / a)."""
    cfg = config_from_dict({"model": {"decode": "linear"}, "loss": {"xy": "mse_linear", "box_scale": "none"},
                            "data": {"img_size": 64}})
    head = build_head(cfg, 2)
    criterion = build_criterion(cfg.loss, head, img_size=64)
    preds = [torch.zeros(1, head.channels, 64 // s, 64 // s) for s in head.strides]
    result = criterion(preds, torch.tensor([[0, 1, 41.6 / 64, 19.2 / 64, 0.25, 0.25]]), 64)
    assert result.terms["xy"].tolist() == pytest.approx([0.0, 0.0, 0.225], rel=1e-5)
    anchor = torch.tensor([116.0, 90.0]) * 64 / 416
    expected_wh = 0.5 * torch.log(16.0 / anchor).square().sum()
    assert result.terms["wh"][2].item() == pytest.approx(expected_wh.item(), rel=1e-5)


def test_the_criterion_and_the_config_refuse_the_same_decode_mismatches():
    """One rule set (schema.decode_problems): w, h in t-space needs an exp decode, AB's CIoU deltas darknet's, and
    the linear decode goes with xy=mse_linear; the criterion built without a config refuses what the config does."""
    for decode, keys, named in (("yolov5", {}, "loss.wh=mse regresses tw"),
                                ("yolov5", {"xy": "none", "wh": "none", "box": "ciou_darknet"}, "hand-written delta"),
                                ("linear", {}, "model.decode=linear")):
        head = HeadSpec.from_anchors(ANCHORS, strides=STRIDES, num_classes=3, decode=decode)
        with pytest.raises(ValueError, match=named):
            build_criterion(LossConfig(**keys), head)
        with pytest.raises(ConfigError, match=named):
            config_from_dict({"model": {"decode": decode}, "loss": keys})
