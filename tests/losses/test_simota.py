"""SimOTA (yolo_loss/losses/assigners/simota.py): hand-worked cases, edge cases and parity with YOLOX's own code.

The parity test runs YOLOX's ``YOLOXHead.get_assignments`` (with its ``get_geometry_constraint`` and
``simota_matching``) from a checkout of https://github.com/Megvii-BaseDetection/YOLOX beside the project
(``../YOLOX``, or the folder in ``$YOLOX_REPO``); it was written against commit
``6ddff4824372906469a7fae2dc3206c7aa4bbaee``. Importing ``yolox.models.yolo_head`` the ordinary way runs
``yolox/__init__``, ``yolox/models/__init__`` and ``yolox/utils/__init__``, which pull in loguru, cv2, thop, pycocotools
and the rest of the training stack, none of which the assignment touches. So the test loads the checkout's own
``yolo_head.py`` under bare parent packages (``yolox``, ``yolox.models``, ``yolox.utils``: empty modules whose
``__path__`` is the checkout's folder, so ``.losses`` and ``.network_blocks`` are the checkout's files too). The bare
``yolox.utils`` offers only the four names ``yolo_head.py`` imports: ``bboxes_iou`` and ``cxcywh2xyxy`` from the
checkout's ``utils/boxes.py``, ``meshgrid`` from its ``utils/compat.py``, and ``visualize_assign`` (cv2, only for its
assignment visualiser) as a function that raises. Without loguru installed, ``loguru.logger`` is a standard
``logging`` logger (YOLOX logs through it only on a CUDA out-of-memory retry). The three methods are then called
unbound, on a plain object that has YOLOX's ``num_classes``: no network is built. The bare modules are taken out
of ``sys.modules`` again after loading. Without the checkout, or without torch/torchvision/numpy that ``boxes.py``
imports, the test skips with the reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from yolo_loss.losses.assigners.simota import simota_assign

SOURCE = Path(os.environ.get("YOLOX_REPO", Path(__file__).resolve().parents[2].parent / "YOLOX"))


def single_image(truth_xyxy: list[list[float]], truth_labels: list[int], points: list[list[float]],
                 pred_xyxy: list[list[float]], scores: list[list[float]], *, stride: float = 8.0,
                 truth_mask: list[bool] | None = None, dtype: torch.dtype = torch.float32, **kwargs):
    """simota_assign on one image whose candidates all have ``stride``; returns the Assignment of image 0."""
    num_classes = len(scores[0])
    mask = [True] * len(truth_xyxy) if truth_mask is None else truth_mask
    return simota_assign(torch.tensor([scores], dtype=dtype), torch.tensor([pred_xyxy], dtype=dtype),
                         torch.tensor(points, dtype=dtype), torch.full((len(points),), stride, dtype=dtype),
                         torch.tensor([truth_xyxy], dtype=dtype), torch.tensor([truth_labels]),
                         torch.tensor([mask]), num_classes=num_classes, **kwargs)


def positives(assignment) -> list[int]:
    return assignment.fg[0].nonzero().squeeze(1).tolist()


# ---------------------------------------------------------------------------------------------------------------
# Hand-worked cases. A truth [0, 0, 32, 32] has centre (16, 16); with stride 8 and radius 1.5 its region is the open
# square (4, 28) x (4, 28). Predicted boxes inside it: [0, 0, 32, 32] IoU 1, [0, 0, 32, 24] 0.75, [0, 0, 32, 16] and
# [0, 16, 32, 32] 0.5, [0, 0, 16, 16], [0, 16, 16, 32] and [16, 16, 32, 32] 0.25. Class costs with one class: -log p.
# ---------------------------------------------------------------------------------------------------------------

def test_candidate_outside_every_region_is_never_positive_nor_counted() -> None:
    """Candidates 2 (x = 28, on the region's edge: strict) and 3 (y = 40) predict the truth exactly (IoU 1, score
    0.99) but lie outside its region. Inside: IoU 0.5 (score 0.5) and 0.25 (score 0.5); k = max(1, int(0.75)) = 1,
    not int(2.75) = 2 as it would be if the outside IoUs counted. Costs: 0.693 + 3 * 0.693 = 2.773 and
    0.693 + 3 * 1.386 = 4.852: candidate 0 alone, class target its IoU 0.5. With radius 2 (region (0, 32)) candidate
    2 is inside, k = int(1.75) = 1, and its cost -log 0.99 = 0.010 makes it the positive instead."""
    truth, points = [[0, 0, 32, 32]], [[12, 12], [20, 20], [28, 12], [16, 40]]
    preds = [[0, 0, 32, 16], [0, 0, 16, 16], [0, 0, 32, 32], [0, 0, 32, 32]]
    scores = [[0.5], [0.5], [0.99], [0.99]]
    result = single_image(truth, [0], points, preds, scores)
    assert positives(result) == [0]
    assert result.truth[0].tolist() == [0, 0, 0, 0]
    assert result.cls_target[0, :, 0].tolist() == [0.5, 0.0, 0.0, 0.0]
    assert positives(single_image(truth, [0], points, preds, scores, center_radius=2.0)) == [2]


def test_dynamic_k_is_the_truncated_sum_of_the_top_ious() -> None:
    """Five candidates inside the region, IoUs (1, 0.5, 0.25, 0.75, 0.25) with scores (0.5, 0.9, 0.6, 0.5, 0.5).
    k = int(1 + 0.75 + 0.5 + 0.25 + 0.25) = int(2.75) = 2 (truncated, not rounded). Costs -log p - 3 log IoU:
    0.693, 0.105 + 2.079 = 2.184, 0.511 + 4.159 = 4.670, 0.693 + 0.863 = 1.556, 0.693 + 4.159 = 4.852; the two
    cheapest are candidates 0 and 3, with class targets 1 and 0.75. Five candidates are fewer than the default
    candidate_topk of 10: the top-k runs over the five. With candidate_topk 2: k = int(1 + 0.75) = 1, candidate 0."""
    truth, points = [[0, 0, 32, 32]], [[12, 12], [20, 12], [12, 20], [20, 20], [16, 16]]
    preds = [[0, 0, 32, 32], [0, 0, 32, 16], [0, 16, 16, 32], [0, 0, 32, 24], [16, 16, 32, 32]]
    scores = [[0.5], [0.9], [0.6], [0.5], [0.5]]
    result = single_image(truth, [0], points, preds, scores)
    assert positives(result) == [0, 3]
    assert result.cls_target[0, :, 0].tolist() == [1.0, 0.0, 0.0, 0.75, 0.0]
    assert positives(single_image(truth, [0], points, preds, scores, candidate_topk=2)) == [0]


def conflict_case(dtype: torch.dtype = torch.float32):
    """Two images, three truth slots. Image 0: A = [0, 0, 32, 32] class 0 in slot 0, padding in slot 1 (a box equal
    to candidate X's prediction, class 1: it would take X with IoU 1 if it were read), B = [8, 8, 40, 40] class 1 in
    slot 2. A's region is (4, 28)^2, B's (12, 36)^2. X at (20, 20) lies in both, Y at (12, 12) only in A's (12 is
    B's edge), Z at (28, 28) only in B's. Image 1: all padding."""
    points = torch.tensor([[20.0, 20.0], [12.0, 12.0], [28.0, 28.0]], dtype=dtype)
    preds = torch.tensor([[4.0, 4.0, 36.0, 36.0], [0.0, 0.0, 16.0, 16.0], [24.0, 24.0, 40.0, 40.0]], dtype=dtype)
    scores = torch.tensor([[0.3, 0.8], [0.5, 0.5], [0.5, 0.5]], dtype=dtype)
    truths = torch.tensor([[0.0, 0.0, 32.0, 32.0], [4.0, 4.0, 36.0, 36.0], [8.0, 8.0, 40.0, 40.0]], dtype=dtype)
    return simota_assign(torch.stack((scores, scores)), torch.stack((preds, preds)), points,
                         torch.full((3,), 8.0, dtype=dtype), torch.stack((truths, truths)),
                         torch.tensor([[0, 1, 1], [0, 1, 1]]), torch.tensor([[True, False, True], [False] * 3]),
                         num_classes=2)


def test_candidate_wanted_by_two_truths_goes_to_the_cheaper_and_padding_is_ignored() -> None:
    """IoU(X, A) = IoU(X, B) = 28^2 / (2 * 32^2 - 28^2) = 784 / 1264 = 0.620 (IoU cost 3 * 0.478 = 1.433);
    IoU(Y, A) = IoU(Z, B) = 0.25, IoU(Y, B) = IoU(Z, A) = 64 / 1216. Both truths: k = int(0.923) = 1.
    A (class 0): X costs -log 0.3 - log 0.2 + 1.433 = 4.246, Y 1.386 + 4.159 = 5.545, Z 1e6 + ...: A takes X.
    B (class 1): X costs -log 0.7 - log 0.8 + 1.433 = 2.013, Z 5.545, Y 1e6 + ...: B takes X.
    X is taken twice and goes to B, the cheaper (2.013 < 4.246); A is left without a positive, as in YOLOX.
    X's truth is B's slot, 2; its class target is one_hot(1) * 784 / 1264. Image 1 (all padding): nothing."""
    result = conflict_case()
    assert result.fg.tolist() == [[True, False, False], [False, False, False]]
    assert result.truth.tolist() == [[2, 0, 0], [0, 0, 0]]
    torch.testing.assert_close(result.cls_target[0, 0], torch.tensor([0.0, 784 / 1264]))
    assert not result.cls_target[0, 1:].any() and not result.cls_target[1].any()


def test_candidate_taken_twice_goes_to_the_cheapest_of_all_truths() -> None:
    """YOLOX settles a candidate taken twice by the lowest cost over every truth, even one that did not take it.
    Truths A, B, C are the same box [0, 0, 32, 32], classes 0, 1, 2. X predicts it (IoU 1), W [0, 0, 32, 24] (IoU
    0.75): k = int(1.75) = 1 for each. Scores X (0.6, 0.6, 0.7), W (0.01, 0.01, 0.99). Costs of X: A and B
    -log 0.6 - log 0.4 - log 0.3 = 2.631, C -log 0.4 - log 0.4 - log 0.7 = 2.189; of W: A and B 9.22 + 0.863, C
    0.030 + 0.863 = 0.893. A and B take X, C takes W. X goes to C (2.189 < 2.631), which did not take it; C has
    both positives, class targets one_hot(2) times 1 and 0.75."""
    result = single_image([[0, 0, 32, 32]] * 3, [0, 1, 2], [[12, 12], [20, 20]], [[0, 0, 32, 32], [0, 0, 32, 24]],
                          [[0.6, 0.6, 0.7], [0.01, 0.01, 0.99]])
    assert positives(result) == [0, 1]
    assert result.truth[0].tolist() == [2, 2]
    assert result.cls_target[0].tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 0.75]]


def test_region_is_a_cost_not_a_mask_for_a_truth_without_candidates() -> None:
    """YOLOX's region is a 1e6 cost, so a truth with no candidate in its own region (F, far outside the image) still
    takes k = max(1, int(0)) = 1 candidate from another truth's region: the cheapest by class cost. A = [0, 0, 32,
    32] class 0, F class 1. Candidates 0 (IoU with A 1, scores (0.5, 0.5)), 1 (0.25, (0.5, 0.5)), 2 (0.5,
    (0.1, 0.9)). A: k = int(1.75) = 1, costs 1.386, 5.545, 4.605 + 0.105 + 2.079: candidate 0. F: every cost is
    1e6 + 3 * 18.42 + class cost (1.386, 1.386, 0.211): candidate 2, a positive of F with class target 0 (its IoU).
    An image whose only truth is F has no candidate at all: no positive (where YOLOX's top-k would fail)."""
    points = [[12, 12], [20, 20], [20, 12]]
    preds = [[0, 0, 32, 32], [0, 0, 16, 16], [0, 0, 32, 16]]
    scores = [[0.5, 0.5], [0.5, 0.5], [0.1, 0.9]]
    result = single_image([[0, 0, 32, 32], [200, 200, 232, 232]], [0, 1], points, preds, scores)
    assert positives(result) == [0, 2]
    assert result.truth[0].tolist() == [0, 0, 1]
    assert result.cls_target[0].tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    alone = single_image([[200, 200, 232, 232]], [1], points, preds, scores)
    assert positives(alone) == [] and not alone.cls_target.any()


# ---------------------------------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------------------------------

def test_no_truths_give_no_positives() -> None:
    """M = 0 and an all-padding batch: nothing is positive, targets are zeros of the right shapes."""
    gen = torch.Generator().manual_seed(0)
    scores, preds = torch.rand(2, 5, 3, generator=gen), torch.rand(2, 5, 4, generator=gen) * 8
    preds[..., 2:] += preds[..., :2] + 1
    points, strides = torch.rand(5, 2, generator=gen) * 16, torch.full((5,), 8.0)
    empty = simota_assign(scores, preds, points, strides, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64),
                          torch.zeros(2, 0, dtype=torch.bool), num_classes=3)
    padded = simota_assign(scores, preds, points, strides, torch.tensor([[[0.0, 0.0, 16.0, 16.0]]] * 2),
                           torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 1, dtype=torch.bool), num_classes=3)
    for result in (empty, padded):
        assert result.fg.shape == (2, 5) and not result.fg.any()
        assert result.truth.shape == (2, 5) and not result.truth.any()
        assert result.cls_target.shape == (2, 5, 3) and not result.cls_target.any()


def test_one_candidate_fewer_than_candidate_topk() -> None:
    """A single candidate (fewer than candidate_topk = 10) with IoU 0.5: k = max(1, int(0.5)) = 1, it is positive."""
    result = single_image([[0, 0, 32, 32]], [0], [[16, 16]], [[0, 0, 32, 16]], [[0.5]])
    assert positives(result) == [0] and result.cls_target[0].tolist() == [[0.5]]


def test_float64() -> None:
    """The conflict case in float64: the same assignment, float64 targets equal to 784 / 1264 in float64."""
    result = conflict_case(torch.float64)
    assert result.fg.tolist() == [[True, False, False], [False, False, False]]
    assert result.truth.tolist() == [[2, 0, 0], [0, 0, 0]]
    assert result.cls_target.dtype == torch.float64
    assert result.cls_target[0, 0].tolist() == [0.0, 784 / 1264]


# ---------------------------------------------------------------------------------------------------------------
# Parity with YOLOX's own code
# ---------------------------------------------------------------------------------------------------------------

IMG, STRIDES, ANCHORS, NUM_CLASSES, BATCH, MAX_TRUTHS = 128, (8, 16, 32), 3, 4, 2, 6


def _unavailable(name: str, reason: str):
    def unavailable(*args, **kwargs):
        raise RuntimeError(f"{name} is not loaded in this test: {reason}")
    return unavailable


def yolox_head_class():
    """The checkout's ``YOLOXHead``, loaded under bare parent packages (see the module docstring), or a skip."""
    if not (SOURCE / "yolox" / "models" / "yolo_head.py").is_file():
        pytest.skip(f"no YOLOX checkout at {SOURCE} (git clone https://github.com/Megvii-BaseDetection/YOLOX there, "
                    "or set $YOLOX_REPO)")
    for package in ("numpy", "torchvision"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"YOLOX's yolox/utils/boxes.py imports {package!r}")
    before = set(sys.modules)
    try:
        for name in ("yolox", "yolox.models", "yolox.utils"):
            module = types.ModuleType(name)
            module.__path__ = [str(SOURCE.joinpath(*name.split(".")))]
            sys.modules[name] = module
        utils = sys.modules["yolox.utils"]
        boxes = importlib.import_module("yolox.utils.boxes")
        utils.bboxes_iou, utils.cxcywh2xyxy = boxes.bboxes_iou, boxes.cxcywh2xyxy
        utils.meshgrid = importlib.import_module("yolox.utils.compat").meshgrid
        utils.visualize_assign = _unavailable("visualize_assign", "it needs cv2 and only draws assignments")
        if importlib.util.find_spec("loguru") is None:
            sys.modules["loguru"] = types.SimpleNamespace(logger=logging.getLogger("yolox"))
        return importlib.import_module("yolox.models.yolo_head").YOLOXHead
    except ImportError as error:
        pytest.skip(f"YOLOX's yolo_head.py could not be loaded from {SOURCE}: {error}")
    finally:
        for name in set(sys.modules) - before:
            if name.split(".")[0] in ("yolox", "loguru"):
                del sys.modules[name]


class ReferenceAssigner:
    """YOLOX's three assignment methods, unbound from YOLOXHead, on an object with its ``num_classes``; it also
    counts how often a candidate was taken by two truths and the largest dynamic k (so that the random inputs are
    known to exercise both)."""

    def __init__(self, head_class: type, num_classes: int):
        self.num_classes = num_classes
        self._head = head_class
        self.conflicts, self.max_dynamic_k = 0, 0

    def get_assignments(self, *args):
        return self._head.get_assignments(self, *args)

    def get_geometry_constraint(self, *args):
        return self._head.get_geometry_constraint(self, *args)

    def simota_matching(self, cost, pair_wise_ious, gt_classes, num_gt, fg_mask):
        result = self._head.simota_matching(self, cost, pair_wise_ious, gt_classes, num_gt, fg_mask)
        top = pair_wise_ious.topk(min(10, pair_wise_ious.shape[1]), dim=1).values
        dynamic_k = top.sum(1).int().clamp(min=1)
        self.conflicts += int(dynamic_k.sum()) > result[0]  # more takes than positives: a candidate taken twice
        self.max_dynamic_k = max(self.max_dynamic_k, int(dynamic_k.max()))
        return result


def candidate_grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per candidate (level, anchor, row, column order) its column and row indices and stride, float32: YOLOX's
    ``x_shifts``, ``y_shifts`` and ``expanded_strides``, three anchors per cell as three candidates."""
    xs, ys, strides = [], [], []
    for stride in STRIDES:
        rows, cols = torch.meshgrid(torch.arange(IMG // stride), torch.arange(IMG // stride), indexing="ij")
        for _ in range(ANCHORS):
            xs.append(cols.flatten())
            ys.append(rows.flatten())
            strides.append(torch.full((rows.numel(),), stride))
    return torch.cat(xs).float(), torch.cat(ys).float(), torch.cat(strides).float()


def quantise(values: torch.Tensor) -> torch.Tensor:
    """Multiples of 1/16: then cx = (x1 + x2) / 2, w = x2 - x1 and cx -/+ w / 2 are exact in float32, so YOLOX's
    cxcywh boxes and our xyxy boxes are the same boxes to the last bit."""
    return torch.round(values * 16) / 16


def random_batch(seed: int, points: torch.Tensor):
    """Truths (0 to 6 real ones per image, in random slots, padding slots holding real-looking boxes), predicted
    boxes near the truths (70%) or around the candidate's point (30%), random class and objectness logits."""
    gen = torch.Generator().manual_seed(seed)
    num_candidates = points.shape[0]
    counts = [seed % (MAX_TRUTHS + 1), int(torch.randint(MAX_TRUTHS + 1, (1,), generator=gen))]
    mask = torch.zeros(BATCH, MAX_TRUTHS, dtype=torch.bool)
    for image, count in enumerate(counts):
        mask[image, torch.randperm(MAX_TRUTHS, generator=gen)[:count]] = True
    centres = 16 + torch.rand(BATCH, MAX_TRUTHS, 2, generator=gen) * (IMG - 32)
    sizes = 6 + torch.rand(BATCH, MAX_TRUTHS, 2, generator=gen) * 74
    truths = quantise(torch.cat((centres - sizes / 2, centres + sizes / 2), -1)).clamp(0, IMG)
    labels = torch.randint(NUM_CLASSES, (BATCH, MAX_TRUTHS), generator=gen)

    preds = []
    for image in range(BATCH):
        valid = mask[image].nonzero().squeeze(1)
        around_point = torch.cat((points, 8 + torch.rand(num_candidates, 2, generator=gen) * 56), -1)
        if valid.numel():
            pick = valid[torch.randint(valid.numel(), (num_candidates,), generator=gen)]
            box = truths[image, pick]
            centre, size = (box[:, :2] + box[:, 2:]) / 2, box[:, 2:] - box[:, :2]
            jittered = torch.cat((centre + 0.15 * size * torch.randn(num_candidates, 2, generator=gen),
                                  size * torch.exp(0.3 * torch.randn(num_candidates, 2, generator=gen))), -1)
            near = torch.rand(num_candidates, 1, generator=gen) < 0.7
            around_point = torch.where(near, jittered, around_point)
        centre, half = around_point[:, :2], around_point[:, 2:] / 2
        low = quantise(centre - half)
        preds.append(torch.cat((low, torch.maximum(quantise(centre + half), low + 1 / 16)), -1))
    cls_logits = torch.randn(BATCH, num_candidates, NUM_CLASSES, generator=gen) * 2
    obj_logits = torch.randn(BATCH, num_candidates, 1, generator=gen) * 2 - 1
    return torch.stack(preds), truths, labels, mask, cls_logits, obj_logits


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat(((boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]), -1)


# YOLOX disables autocast with torch.cuda.amp.autocast(enabled=False), deprecated since torch 2.4
@pytest.mark.filterwarnings("ignore:`torch.cuda.amp.autocast:FutureWarning")
def test_simota_equals_yolox_get_assignments() -> None:
    """On eight seeds (batch 2, 128 px, strides 8/16/32, three anchors per cell: 1008 candidates, four classes, 0-6
    truths per image with padding), the positives and their truths are those of YOLOX's get_assignments, and the class
    targets (YOLOX's ``one_hot(class) * pred_ious_this_matching``, as its get_losses builds them) agree to float32
    rounding. The candidates' points are YOLOX's own ``(shift + 0.5) * stride``; the scores YOLOX's
    ``sqrt(sigmoid(cls) * sigmoid(obj))``."""
    reference = ReferenceAssigner(yolox_head_class(), NUM_CLASSES)
    x_shifts, y_shifts, strides = candidate_grid()
    points = torch.stack(((x_shifts + 0.5) * strides, (y_shifts + 0.5) * strides), -1)
    total_positives = 0
    for seed in range(8):
        preds, truths, labels, mask, cls_logits, obj_logits = random_batch(seed, points)
        scores = (cls_logits.sigmoid() * obj_logits.sigmoid()).sqrt()
        ours = simota_assign(scores, preds, points, strides, truths, labels, mask, num_classes=NUM_CLASSES)

        fg = torch.zeros_like(ours.fg)
        truth = torch.zeros_like(ours.truth)
        cls_target = torch.zeros_like(ours.cls_target)
        for image in range(BATCH):
            valid = mask[image].nonzero().squeeze(1)  # YOLOX's truths are the first num_gt rows: pass them compacted
            if valid.numel() == 0:
                continue  # YOLOX's get_losses skips get_assignments: no positive
            matched_classes, fg_mask, pred_ious, matched, _ = reference.get_assignments(
                image, valid.numel(), xyxy_to_cxcywh(truths[image, valid]), labels[image, valid].float(),
                xyxy_to_cxcywh(preds[image]), strides[None], x_shifts[None], y_shifts[None], cls_logits, obj_logits)
            fg[image] = fg_mask
            truth[image, fg_mask] = valid[matched]
            cls_target[image, fg_mask] = F.one_hot(matched_classes.long(), NUM_CLASSES) * pred_ious[:, None]

        assert torch.equal(ours.fg, fg), f"seed {seed}"
        assert torch.equal(ours.truth, truth), f"seed {seed}"
        torch.testing.assert_close(ours.cls_target, cls_target, rtol=0, atol=1e-6, msg=f"seed {seed}")
        total_positives += int(fg.sum())
    # the inputs exercised what matters: many positives, a dynamic k above 1, candidates taken by two truths
    assert total_positives > 100 and reference.max_dynamic_k >= 3 and reference.conflicts >= 3
