"""loss.assign: tal | simota | atss in the criterion (yolo_loss/losses/assigners/candidates.py): the candidate
layout, the padded truths, the positives read back from the assigner's choice, the config rules, and a few steps
of training on each. Each assigner against its authors' code: tests/losses/test_tal.py, test_simota.py,
test_atss.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from yolo_loss.config.load import ConfigError, config_from_dict
from yolo_loss.config.schema import YOLOV3_ANCHORS, LossConfig
from yolo_loss.decode import STRIDES
from yolo_loss.head import HeadSpec, class_activation
from yolo_loss.losses.assign import padded_truths
from yolo_loss.losses.assigners.atss import atss_assign
from yolo_loss.losses.assigners.candidates import DYNAMIC_RULES, head_candidates, predictions_at_candidates
from yolo_loss.losses.assigners.simota import simota_assign
from yolo_loss.losses.assigners.tal import tal_assign
from yolo_loss.losses.criterion import build_criterion

IMG, NUM_CLASSES = 128, 3
ANCHORS = [torch.tensor(YOLOV3_ANCHORS[3 * level:3 * level + 3], dtype=torch.float64) * IMG / 416
           for level in range(3)]
TARGETS = torch.tensor([[0, 1, 0.40, 0.40, 0.30, 0.20], [1, 0, 0.60, 0.50, 0.10, 0.10],
                        [1, 2, 0.62, 0.52, 0.12, 0.08], [0, 2, 0.20, 0.70, 0.25, 0.35]], dtype=torch.float64)


def head() -> HeadSpec:
    return HeadSpec.from_anchors(ANCHORS, strides=STRIDES, num_classes=NUM_CLASSES,
                                 class_activation=class_activation("bce"), decode="darknet")


def head_maps(seed: int, batch: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3 * (5 + NUM_CLASSES), IMG // s, IMG // s, generator=gen, dtype=torch.float64)
            .requires_grad_() for s in STRIDES]


def dynamic_loss(rule: str, **keys) -> LossConfig:
    return LossConfig(xy="none", wh="none", box="ciou", assign=rule, **keys)


def test_the_candidates_are_laid_out_level_anchor_row_column():
    """Two levels of 2 x 3 and 1 x 2 cells, 2 anchors each: candidate (a * H + y) * W + x, then the next level."""
    anchors = [torch.tensor([[10.0, 20.0], [30.0, 40.0]]), torch.tensor([[50.0, 60.0], [70.0, 80.0]])]
    cand = head_candidates(anchors, (8, 16), [(2, 3), (1, 2)])
    assert cand.level_sizes == [12, 4]
    # level 0, anchor 1, row 1, column 2: index (1 * 2 + 1) * 3 + 2 = 11, centre ((2.5) * 8, (1.5) * 8)
    assert cand.points[11].tolist() == [20.0, 12.0] and cand.anchor_wh[11].tolist() == [30.0, 40.0]
    assert (cand.level[11], cand.anchor[11], cell := (cand.cell_y[11], cand.cell_x[11])) == (0, 1, cell)
    assert cell == (1, 2)
    assert cand.anchor_boxes[11].tolist() == [5.0, -8.0, 35.0, 32.0]
    # level 1, anchor 1, row 0, column 1: 12 + (1 * 1 + 0) * 2 + 1 = 15, centre (24, 8), stride 16
    assert cand.points[15].tolist() == [24.0, 8.0] and cand.strides[15] == 16 and cand.anchor[15] == 1
    assert cand.anchor_boxes[15].tolist() == [-11.0, -32.0, 59.0, 48.0]


def test_truths_are_padded_per_image_in_row_order():
    """Rows of images 1, 0, 1: image 0 holds row 1 then padding, image 1 rows 0 and 2."""
    targets = torch.tensor([[1, 2, 0.5, 0.5, 0.5, 0.25], [0, 1, 0.25, 0.25, 0.5, 0.5], [1, 0, 0.75, 0.5, 0.5, 1.0]])
    boxes, labels, mask, rows = padded_truths(targets, 2, (64, 128))  # height 64, width 128
    assert rows.tolist() == [[1, -1], [0, 2]] and mask.tolist() == [[True, False], [True, True]]
    assert labels.tolist() == [[1, 0], [2, 0]]
    assert boxes[0, 0].tolist() == [0.0, 0.0, 64.0, 32.0] and boxes[0, 1].tolist() == [0.0] * 4
    assert boxes[1, 1].tolist() == [64.0, 0.0, 128.0, 64.0]
    empty = padded_truths(targets[:0], 3, (64, 64))
    assert [t.shape for t in empty] == [(3, 0, 4), (3, 0), (3, 0), (3, 0)]


def assignment_of(rule: str, preds: list[torch.Tensor], spec: HeadSpec):
    """The assigner called directly on the criterion's inputs, with its default hyper-parameters."""
    anchors = spec.anchors(like=preds[0])
    cand = head_candidates(anchors, spec.strides, [tuple(p.shape[-2:]) for p in preds])
    boxes, labels, mask, rows = padded_truths(TARGETS, preds[0].shape[0], (IMG, IMG))
    if rule == "atss":
        return atss_assign(cand.anchor_boxes, cand.level_sizes, boxes, labels, mask, num_classes=NUM_CLASSES), rows
    pred_boxes, obj, cls = predictions_at_candidates(preds, spec, anchors)
    if rule == "tal":
        return tal_assign(obj[..., None] * cls, pred_boxes, cand.points, boxes, labels, mask,
                          num_classes=NUM_CLASSES, min_truth_side=16.0), rows
    return simota_assign((obj[..., None] * cls).sqrt(), pred_boxes, cand.points, cand.strides, boxes, labels, mask,
                         num_classes=NUM_CLASSES), rows


@pytest.mark.parametrize("rule", DYNAMIC_RULES)
def test_the_criterion_positives_are_the_assigners_choice(rule: str):
    """Every positive row of the criterion is a candidate the assigner chose, at its cell, regressing to its truth's
    box (the cell plus the x, y target is the box centre in strides) with the assigner's class target; and every
    chosen candidate is a row."""
    spec, preds = head(), head_maps(seed=3)
    result = build_criterion(dynamic_loss(rule), spec)(preds, TARGETS, IMG)
    assignment, rows = assignment_of(rule, preds, spec)
    assert sum(pos.num_positives for pos in result.positives) == int(assignment.fg.sum()) > 0
    offset = 0
    for level, pos in enumerate(result.positives):
        height, width, stride = IMG // STRIDES[level], IMG // STRIDES[level], STRIDES[level]
        index = offset + (pos.anchor * height + pos.cell_y) * width + pos.cell_x
        assert assignment.fg[pos.image, index].all()
        assert torch.equal(rows[pos.image, assignment.truth[pos.image, index]], pos.truth)
        assert torch.equal(pos.target_cls, assignment.cls_target[pos.image, index])
        truth_px = TARGETS[pos.truth, 2:6] * IMG
        assert torch.allclose(pos.target_box_cxcywh, truth_px)
        cell = torch.stack((pos.cell_x, pos.cell_y), -1).double()
        assert torch.allclose((cell + pos.target_xy) * stride, truth_px[:, :2])
        assert torch.allclose(pos.target_wh, torch.log(truth_px[:, 2:] / ANCHORS[level][pos.anchor]))
        assert pos.objectness_row.all() and torch.equal(pos.image, TARGETS[pos.truth, 0].long())
        offset += 3 * height * width


def test_atss_picks_the_anchor_that_is_the_truth():
    """A truth equal to anchor 0 of level 0 at cell (row 5, column 6): IoU 1 there, so that candidate is a positive
    (of the nine nearest on level 0, it is the only one of IoU 1, far above their mean + std), with x, y target
    0.5, 0.5 (the cell centre) and w, h target 0 (ln 1)."""
    spec = head()
    w, h = ANCHORS[0][0].tolist()
    cx, cy = 6.5 * 8, 5.5 * 8
    targets = torch.tensor([[0, 2, cx / IMG, cy / IMG, w / IMG, h / IMG]], dtype=torch.float64)
    result = build_criterion(dynamic_loss("atss"), spec)(head_maps(seed=1, batch=1), targets, IMG)
    pos = result.positives[0]
    hit = (pos.anchor == 0) & (pos.cell_y == 5) & (pos.cell_x == 6)
    assert hit.sum() == 1
    assert torch.allclose(pos.target_xy[hit], torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    assert torch.allclose(pos.target_wh[hit], torch.zeros(1, 2, dtype=torch.float64), atol=1e-12)
    assert pos.target_cls[hit].tolist() == [[0.0, 0.0, 1.0]]


@pytest.mark.parametrize("rule, field, value", [("tal", "tal_topk", 1), ("simota", "simota_radius", 0.5),
                                                ("atss", "atss_topk", 2)])
def test_each_rule_trains_and_its_hyper_parameter_reaches_it(rule: str, field: str, value: float):
    """Finite loss and gradients; the assigner's own hyper-parameter (from its loss.<field> key) changes the
    positives; 40 SGD steps on the head maps lower the loss, the box term and the positives' objectness term."""
    spec = head()
    preds = head_maps(seed=5)
    cfg = dynamic_loss(rule)
    criterion = build_criterion(cfg, spec)
    result = criterion(preds, TARGETS, IMG)
    grads = torch.autograd.grad(result.total, preds)
    assert torch.isfinite(result.total) and all(torch.isfinite(g).all() for g in grads)
    other = build_criterion(dataclasses.replace(cfg, **{field: value}), spec)(preds, TARGETS, IMG)
    count = [sum(p.num_positives for p in r.positives) for r in (result, other)]
    assert count[0] != count[1], count
    maps = [p.detach().clone().requires_grad_() for p in preds]
    optimizer = torch.optim.SGD(maps, lr=0.2)
    for _ in range(40):
        loss = criterion(maps, TARGETS, IMG).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        before, after = criterion(preds, TARGETS, IMG), criterion(maps, TARGETS, IMG)
    assert after.total < 0.5 * before.total
    assert after.terms["box"].sum() < before.terms["box"].sum()
    assert after.terms["obj_pos"].sum() < before.terms["obj_pos"].sum()


def test_an_image_without_truths_has_no_positives():
    spec = head()
    for rule in DYNAMIC_RULES:
        result = build_criterion(dynamic_loss(rule), spec)(head_maps(seed=2), TARGETS[:0], IMG)
        assert sum(p.num_positives for p in result.positives) == 0 and torch.isfinite(result.total)
        assert (result.terms["box"] == 0).all() and (result.terms["obj_neg"] > 0).all()


def test_the_config_refuses_what_a_dynamic_assigner_cannot_take():
    ok = {"xy": "none", "wh": "none", "box": "ciou", "assign": "simota"}
    assert config_from_dict({"loss": ok}).loss.assign == "simota"
    assert config_from_dict({"loss": {**ok, "simota_topk": 5}}).loss.simota_topk == 5
    with pytest.raises(ConfigError, match="loss.assign.*loss.box"):
        config_from_dict({"loss": {"assign": "tal"}})
    with pytest.raises(ConfigError, match="cls_target"):
        config_from_dict({"loss": {**ok, "cls_target": "iou"}})
    with pytest.raises(ConfigError, match="neighbour_cells"):
        config_from_dict({"loss": {**ok, "neighbour_cells": True}})
    with pytest.raises(ConfigError, match="tal_topk.*expected int"):
        config_from_dict({"loss": {**ok, "tal_topk": 2.5}})
    with pytest.raises(ConfigError, match="atss_topk"):
        config_from_dict({"loss": {**ok, "atss_topk": 0}})
    with pytest.raises(ConfigError, match="loss.assign.*valid|not one of"):
        config_from_dict({"loss": {**ok, "assign": "otal"}})
