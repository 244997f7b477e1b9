"""tal_assign: hand-worked cases, edge cases, and parity with ultralytics' own TaskAlignedAssigner.

The parity tests run ultralytics' code from a checkout beside the project (``../ultralytics``, or the folder in
``$ULTRALYTICS_REPO``; ``git clone https://github.com/ultralytics/ultralytics`` there, or unzip the wheel of
``pip download ultralytics --no-deps`` there: the test reads only ``ultralytics/utils/{tal,metrics,ops}.py``).
Importing ``ultralytics.utils.tal`` would run the package's ``__init__``, which needs cv2, requests, polars,
torchvision and more, none of them a dependency of this project; stubbing those modules would depend on every name
each file imports, which changes from release to release. So the test parses the three files and compiles, from
their own source text, ``TaskAlignedAssigner`` and the top-level functions it calls (``bbox_iou``, ``xyxy2xywh``,
``xywh2xyxy``, ``empty_like``: the closure of the names it uses), in a namespace that holds only ``torch``,
``nn``, ``math``, ``numpy`` and a logger. Every line that computes the reference's assignment is the reference's;
without the files, or when the class uses a name outside that closure, the test skips and says why.
"""

from __future__ import annotations

import __future__
import ast
import builtins
import inspect
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo_loss.boxes import ciou_loss
from yolo_loss.losses.assigners.tal import ciou_ultralytics, tal_assign

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(os.environ.get("ULTRALYTICS_REPO", ROOT.parent / "ultralytics"))
REFERENCE_FILES = ("tal.py", "metrics.py", "ops.py")  # searched in this order for each name


def _names(node: ast.AST) -> tuple[set[str], set[str]]:
    """Names a definition reads, and names it binds itself (parameters, assignments, loop and except variables)."""
    loaded, bound = set(), set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            (loaded if isinstance(child.ctx, ast.Load) else bound).add(child.id)
        elif isinstance(child, ast.arg):
            bound.add(child.arg)
        elif isinstance(child, (ast.FunctionDef, ast.ClassDef)) and child is not node:
            bound.add(child.name)
        elif isinstance(child, ast.alias):
            bound.add((child.asname or child.name).split(".")[0])
        elif isinstance(child, ast.ExceptHandler) and child.name:
            bound.add(child.name)
    return loaded, bound


def reference_assigner_class() -> type:
    """ultralytics' TaskAlignedAssigner compiled from the checkout's source, or a skip naming what is missing."""
    folder = SOURCE / "ultralytics" / "utils"
    if not (folder / "tal.py").is_file():
        pytest.skip(f"no ultralytics checkout at {SOURCE} (git clone https://github.com/ultralytics/ultralytics "
                    "there, or unzip the wheel from 'pip download ultralytics --no-deps' there, or set "
                    "$ULTRALYTICS_REPO)")
    definitions: dict[str, tuple[ast.stmt, Path]] = {}
    for name in REFERENCE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        for node in ast.parse(path.read_text(), filename=str(path)).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                definitions.setdefault(node.name, (node, path))
    namespace = {"__name__": "ultralytics_reference", "__builtins__": builtins, "torch": torch, "nn": torch.nn,
                 "math": math, "np": np, "LOGGER": logging.getLogger("ultralytics_reference")}
    wanted, done, missing = ["TaskAlignedAssigner"], [], set()
    while wanted:
        name = wanted.pop()
        if name in done:
            continue
        done.append(name)
        loaded, bound = _names(definitions[name][0])
        for free in loaded - bound - set(namespace) - set(dir(builtins)):
            (wanted.append(free) if free in definitions else missing.add(free))
    if missing:
        pytest.skip(f"{SOURCE}'s TaskAlignedAssigner uses {sorted(missing)}, defined outside "
                    f"{', '.join(REFERENCE_FILES)}: extend the parity loader")
    for name in done:
        node, path = definitions[name]
        code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec",
                       flags=__future__.annotations.compiler_flag, dont_inherit=True)
        exec(code, namespace)  # noqa: S102 -- the reference's own source, read from the checkout
    return namespace["TaskAlignedAssigner"]


# ---------------------------------------------------------------------------------------------------------------
# Hand-worked cases. Predicted boxes equal to their truth give CIoU 1 (to 1e-7), so the metric is sqrt(score).


def assign(points, pred_boxes, pred_scores, truth_boxes, truth_labels, truth_mask, **kwargs):
    """One image: plain lists in, tal_assign on a batch of one."""
    def tensor(x, dtype=torch.float32):
        return torch.tensor(x, dtype=dtype)[None]
    return tal_assign(tensor(pred_scores), tensor(pred_boxes), torch.tensor(points, dtype=torch.float32),
                      tensor(truth_boxes), tensor(truth_labels, torch.long), tensor(truth_mask, torch.bool),
                      num_classes=len(pred_scores[0]), **kwargs)


def test_outside_never_positive_topk_limits_and_padding_never_assigned() -> None:
    """Truth 0 (0, 0, 40, 40) class 1, truth 1 (100, 0, 140, 40) class 0, truth 2 padding (0, 0, 200, 200); topk 2.

    Candidates 0-3 lie in truth 0, 4-6 in truth 1, 7-11 in no real truth (11 inside the padding box). Each predicts
    its truth's box exactly (CIoU 1); 7-10 predict truth 0's box with score 1, 11 the padding box with score 1.

    Truth 0: metrics sqrt(0.9, 0.6, 0.3, 0.1) on class 1 -> top 2 are candidates 0 and 1; targets
    t / max t * max u = 1 and sqrt(0.6 / 0.9) = 0.8165.
    Truth 1: sqrt(0.2, 0.8, 0.5) on class 0 -> candidates 5 and 6; targets 1 and sqrt(0.5 / 0.8) = 0.7906.
    7-11: outside every real truth, never positive whatever they predict.
    """
    t0, t1, pad = [0, 0, 40, 40], [100, 0, 140, 40], [0, 0, 200, 200]
    points = [[10, 10], [20, 20], [30, 30], [20, 10], [110, 10], [120, 20], [130, 30],
              [60, 20], [80, 20], [160, 20], [20, 60], [180, 180]]
    pred_boxes = [t0] * 4 + [t1] * 3 + [t0] * 4 + [pad]
    pred_scores = ([[0.0, 0.9], [0.0, 0.6], [0.0, 0.3], [0.0, 0.1], [0.2, 0.0], [0.8, 0.0], [0.5, 0.0]]
                   + [[1.0, 1.0]] * 5)
    result = assign(points, pred_boxes, pred_scores, [t0, t1, pad], [1, 0, 0], [True, True, False], topk=2)

    expected_fg = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(result.fg, expected_fg)
    assert result.truth[0, [0, 1, 5, 6]].tolist() == [0, 0, 1, 1]
    assert not result.truth[~result.fg].any()  # 0 where not a positive
    expected_cls = torch.zeros(1, 12, 2)
    expected_cls[0, 0, 1], expected_cls[0, 1, 1] = 1.0, math.sqrt(0.6 / 0.9)
    expected_cls[0, 5, 0], expected_cls[0, 6, 0] = 1.0, math.sqrt(0.5 / 0.8)
    torch.testing.assert_close(result.cls_target, expected_cls, rtol=0, atol=1e-5)


def test_topk_one_and_topk_above_the_candidates() -> None:
    """The first case with topk 1 keeps only each truth's best (candidates 0 and 5, target 1); topk 100 with 12
    candidates takes every candidate inside a real truth (0-6), as topk 12 does."""
    t0, t1, pad = [0, 0, 40, 40], [100, 0, 140, 40], [0, 0, 200, 200]
    points = [[10, 10], [20, 20], [30, 30], [20, 10], [110, 10], [120, 20], [130, 30],
              [60, 20], [80, 20], [160, 20], [20, 60], [180, 180]]
    pred_boxes = [t0] * 4 + [t1] * 3 + [t0] * 4 + [pad]
    pred_scores = ([[0.0, 0.9], [0.0, 0.6], [0.0, 0.3], [0.0, 0.1], [0.2, 0.0], [0.8, 0.0], [0.5, 0.0]]
                   + [[1.0, 1.0]] * 5)
    args = (points, pred_boxes, pred_scores, [t0, t1, pad], [1, 0, 0], [True, True, False])
    one = assign(*args, topk=1)
    assert one.fg[0].nonzero().flatten().tolist() == [0, 5]
    torch.testing.assert_close(one.cls_target[0, [0, 5]], torch.tensor([[0.0, 1.0], [1.0, 0.0]]), atol=1e-5, rtol=0)
    many, exactly = assign(*args, topk=100), assign(*args, topk=12)
    assert many.fg[0].nonzero().flatten().tolist() == list(range(7))
    for field in ("fg", "truth", "cls_target"):
        assert torch.equal(getattr(many, field), getattr(exactly, field))


def test_candidate_inside_two_truths_goes_to_the_higher_ciou() -> None:
    """Truth 0 (0, 0, 60, 60) class 0, truth 1 (30, 0, 90, 60) class 1; candidate 1 at (45, 30) lies in both and
    predicts truth 1's box; candidates 0 (15, 30) and 2 (75, 30) lie in one each and predict their truth.

    Candidate 1 against truth 0: IoU 1800 / 5400 = 1/3, centres 30 px apart (rho^2 = 900), enclosing box 90 x 60
    (c^2 = 11700), same aspect (v = 0): CIoU = 1/3 - 900/11700 = 0.2564; against truth 1: CIoU 1. With topk 10
    both truths take it; it goes to truth 1, the higher CIoU, although its score for truth 1's class is 1e-8 and
    its metric is higher for truth 0: 1 * 0.2564^6 = 2.8e-4 against sqrt(1e-8) * 1 = 1e-4.
    Targets: truth 0 keeps candidate 0 only: 1. Truth 1 has candidates 1 (metric 1e-4) and 2 (sqrt(0.5) = 0.7071):
    1e-4 / 0.7071 = 1.414e-4 and 1.
    """
    t0, t1 = [0, 0, 60, 60], [30, 0, 90, 60]
    result = assign([[15, 30], [45, 30], [75, 30]], [t0, t1, t1], [[0.5, 0.5], [1.0, 1e-8], [0.5, 0.5]],
                    [t0, t1], [0, 1], [True, True])
    assert result.fg.tolist() == [[True, True, True]]
    assert result.truth.tolist() == [[0, 1, 1]]
    expected = torch.tensor([[[1.0, 0.0], [0.0, 1e-4 / math.sqrt(0.5)], [0.0, 1.0]]])
    torch.testing.assert_close(result.cls_target, expected, rtol=1e-4, atol=1e-6)


def test_small_truth_is_widened_to_the_second_stride() -> None:
    """Truth (100, 100, 108, 108) is 8 px: widened to 16 px about its centre (96..112), so the point (110, 104)
    outside the box itself is a candidate, and with min_truth_side 0 it is not."""
    truth = [100, 100, 108, 108]
    args = ([[104, 104], [110, 104], [114, 104]], [truth] * 3, [[0.5]] * 3, [truth], [0], [True])
    assert assign(*args).fg.tolist() == [[True, True, False]]
    assert assign(*args, min_truth_side=0.0).fg.tolist() == [[True, False, False]]


def test_ciou_matches_the_worked_value_and_the_project_ciou_loss() -> None:
    """The worked value above (0.2564), and 1 - ciou_loss for random boxes (same quantity, other eps placement)."""
    value = ciou_ultralytics(torch.tensor([[0.0, 0, 60, 60]]), torch.tensor([[30.0, 0, 90, 60]]))
    torch.testing.assert_close(value, torch.tensor([1 / 3 - 900 / 11700]), rtol=1e-6, atol=0)
    gen = torch.Generator().manual_seed(0)
    corner = torch.rand(200, 2, 2, generator=gen, dtype=torch.float64) * 100
    a = torch.cat([corner[:, 0], corner[:, 0] + 1 + corner[:, 1]], -1)
    b = a + torch.randn(200, 4, generator=gen, dtype=torch.float64) * 10
    b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2] + 1)
    torch.testing.assert_close(ciou_ultralytics(a, b), 1 - ciou_loss(b, a), rtol=0, atol=1e-6)


def test_image_without_truths_and_all_padding_batch() -> None:
    """Image 1 of two has only padding (with a box that would take candidates): no positives, zero targets, while
    image 0 is assigned as alone. A batch of padding only, and M = 0, give nothing at all."""
    gen = torch.Generator().manual_seed(1)
    points = torch.rand(12, 2, generator=gen) * 64
    pred_boxes = torch.cat([points - 10, points + 10], -1).expand(2, -1, -1).contiguous()
    pred_scores = torch.rand(2, 12, 3, generator=gen)
    truth_boxes = torch.tensor([[[0.0, 0, 64, 64]], [[0.0, 0, 64, 64]]])
    truth_labels = torch.tensor([[2], [1]])
    result = tal_assign(pred_scores, pred_boxes, points, truth_boxes, truth_labels, torch.tensor([[True], [False]]),
                        num_classes=3)
    alone = tal_assign(pred_scores[:1], pred_boxes[:1], points, truth_boxes[:1], truth_labels[:1],
                       torch.tensor([[True]]), num_classes=3)
    assert result.fg[0].sum() == 10 and not result.fg[1].any()
    assert not result.cls_target[1].any() and not result.truth[1].any()
    assert torch.equal(result.cls_target[:1], alone.cls_target) and torch.equal(result.fg[:1], alone.fg)

    padding = tal_assign(pred_scores, pred_boxes, points, truth_boxes, truth_labels, torch.zeros(2, 1, dtype=bool),
                         num_classes=3)
    empty = tal_assign(pred_scores, pred_boxes, points, truth_boxes[:, :0], truth_labels[:, :0],
                       torch.zeros(2, 0, dtype=bool), num_classes=3)
    for nothing in (padding, empty):
        assert nothing.fg.shape == (2, 12) and nothing.fg.dtype == torch.bool and not nothing.fg.any()
        assert nothing.truth.dtype == torch.long and not nothing.truth.any()
        assert nothing.cls_target.shape == (2, 12, 3) and not nothing.cls_target.any()


def test_float64_gives_the_float32_assignment() -> None:
    inputs = random_batch(seed=3, dtype=torch.float32)
    single = tal_assign(*inputs, num_classes=NUM_CLASSES)
    double = tal_assign(*(x.double() if x.is_floating_point() else x for x in inputs), num_classes=NUM_CLASSES)
    assert double.cls_target.dtype == torch.float64
    assert single.fg.any() and torch.equal(single.fg, double.fg)
    assert torch.equal(single.truth, double.truth)
    torch.testing.assert_close(double.cls_target.float(), single.cls_target, rtol=0, atol=1e-5)


def test_num_classes_must_match_the_scores() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        tal_assign(*random_batch(seed=0, dtype=torch.float32), num_classes=NUM_CLASSES + 1)


# ---------------------------------------------------------------------------------------------------------------
# Parity with ultralytics on a real layout: 3 levels (strides 8, 16, 32) of a 96 x 96 input, 3 anchors per cell:
# N = 3 * (144 + 36 + 9) = 567 candidates, flattened level, anchor, row, column as the assigners' package says.

IMG, STRIDES, ANCHORS, NUM_CLASSES = 96, (8, 16, 32), 3, 4


def candidate_points() -> torch.Tensor:
    points = []
    for stride in STRIDES:
        cells = IMG // stride
        y, x = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
        cell_xy = torch.stack([(x + 0.5) * stride, (y + 0.5) * stride], -1).reshape(-1, 2).float()
        points.append(cell_xy.repeat(ANCHORS, 1))  # anchor-major within the level
    return torch.cat(points)


def random_batch(seed: int, dtype: torch.dtype, batch: int = 3, crowded: bool = False) -> tuple[torch.Tensor, ...]:
    """0-6 truths per image (sides 4-70 px, some under 16 px), padded with garbage boxes; every candidate predicts
    a jittered copy of a random truth of its image, so most candidates overlap some truth.

    ``crowded``: the truths' centres within a few pixels of the image centre and the scores spread over orders of
    magnitude, so that many candidates are taken by several truths and the truth of highest CIoU is often not the
    one of highest metric (which is what decides between ultralytics' rule and a plausible other one)."""
    gen = torch.Generator().manual_seed(seed)
    points = candidate_points()
    counts = torch.randint(0, 7, (batch,), generator=gen)
    counts[0] = max(int(counts[0]), 2)  # at least one image with truths
    num_truths = int(counts.max())
    centre = torch.rand(batch, num_truths, 2, generator=gen) * IMG
    if crowded:
        centre = IMG / 2 + (centre - IMG / 2) / 8
    size = 4 + torch.rand(batch, num_truths, 2, generator=gen) * 66
    truth_boxes = torch.cat([centre - size / 2, centre + size / 2], -1).clamp(0, IMG)
    truth_mask = torch.arange(num_truths)[None] < counts[:, None]
    garbage = torch.rand(batch, num_truths, 4, generator=gen) * IMG
    truth_boxes = torch.where(truth_mask[..., None], truth_boxes, garbage)
    truth_labels = torch.randint(0, NUM_CLASSES, (batch, num_truths), generator=gen)

    num_candidates = points.shape[0]
    which = (torch.rand(batch, num_candidates, generator=gen) * counts.clamp(min=1)[:, None]).long()
    source = truth_boxes.gather(1, which[..., None].expand(-1, -1, 4))
    source_cxcy, source_wh = (source[..., :2] + source[..., 2:]) / 2, source[..., 2:] - source[..., :2]
    cxcy = source_cxcy + torch.randn(batch, num_candidates, 2, generator=gen) * source_wh * 0.3
    wh = source_wh * torch.exp(torch.randn(batch, num_candidates, 2, generator=gen) * 0.3)
    pred_boxes = torch.cat([cxcy - wh / 2, cxcy + wh / 2], -1)
    pred_scores = torch.rand(batch, num_candidates, NUM_CLASSES, generator=gen) ** (8 if crowded else 2)
    return (pred_scores.to(dtype), pred_boxes.to(dtype), points.to(dtype), truth_boxes.to(dtype), truth_labels,
            truth_mask)


def reference_assign(assigner_class: type, inputs: tuple[torch.Tensor, ...], topk: int = 10):
    """ultralytics' assigner as v8DetectionLoss calls it: labels and mask as (B, M, 1) floats."""
    pred_scores, pred_boxes, points, truth_boxes, truth_labels, truth_mask = inputs
    kwargs = {"topk": topk, "num_classes": NUM_CLASSES, "alpha": 0.5, "beta": 6.0}
    if "stride" in inspect.signature(assigner_class).parameters:
        kwargs["stride"] = list(STRIDES)
    assigner = assigner_class(**kwargs)
    _, _, target_scores, fg_mask, target_gt_idx = assigner(
        pred_scores, pred_boxes, points, truth_labels[..., None].to(truth_boxes.dtype), truth_boxes,
        truth_mask[..., None].to(truth_boxes.dtype))
    # Versions without the stride argument test the truth boxes as given.
    min_truth_side = float(STRIDES[1]) if "stride" in kwargs else 0.0
    return target_scores, fg_mask.bool(), target_gt_idx.long(), min_truth_side


@pytest.mark.parametrize(("seed", "dtype", "topk", "crowded"), [
    (0, torch.float32, 10, False), (1, torch.float32, 10, False), (2, torch.float32, 10, False),
    (3, torch.float32, 3, False), (4, torch.float64, 10, False), (5, torch.float32, 30, False),
    (6, torch.float32, 10, True), (7, torch.float32, 10, True), (8, torch.float64, 10, True)])
def test_parity_with_ultralytics_task_aligned_assigner(seed: int, dtype: torch.dtype, topk: int,
                                                       crowded: bool) -> None:
    """fg and the truth of every positive equal ultralytics'; cls_target equal to float rounding (in practice
    bit for bit). The crowded cases have 8-39 candidates taken by several truths each; resolving those by the
    metric instead of the CIoU changes the result in every one of them."""
    assigner_class = reference_assigner_class()
    inputs = random_batch(seed, dtype, crowded=crowded)
    target_scores, fg_mask, target_gt_idx, min_truth_side = reference_assign(assigner_class, inputs, topk)
    result = tal_assign(*inputs, num_classes=NUM_CLASSES, topk=topk, min_truth_side=min_truth_side)

    assert fg_mask.sum() > 20  # the case is not trivial
    assert torch.equal(result.fg, fg_mask)
    assert torch.equal(result.truth[fg_mask], target_gt_idx[fg_mask])
    assert result.cls_target.dtype == target_scores.dtype
    torch.testing.assert_close(result.cls_target, target_scores, rtol=0, atol=torch.finfo(dtype).eps)
