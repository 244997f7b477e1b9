"""atss_assign: hand-worked cases, edge cases, and parity with mmdetection's own ATSSAssigner.

The parity test runs mmdetection's code from a checkout beside the project (``../mmdetection``, or the folder in
``$MMDETECTION_REPO``; ``git clone https://github.com/open-mmlab/mmdetection`` there). It reads three files:
``mmdet/models/task_modules/assigners/atss_assigner.py`` (the assigner), ``.../assigners/iou2d_calculator.py``
(``BboxOverlaps2D``, the IoU calculator it builds by default) and ``mmdet/structures/bbox/bbox_overlaps.py``
(the IoU itself). Importing them as a package would need mmengine and mmcv (a compiled extension, with OpenCV and
more behind it), none of them a dependency of this project. But the two modules import only a handful of names
from them: ``InstanceData``, ``TASK_UTILS``, ``ConfigType``, ``AssignResult``, ``BaseAssigner`` and
``bbox_overlaps``, ``get_box_tensor``. So the test loads the checkout's files with importlib, under stand-in
``mmengine``/``mmdet`` modules (placed in ``sys.modules`` only while loading) that provide exactly those names:
an attribute bag for ``InstanceData``, a registry that records classes and builds them from ``dict(type=...)``,
an ``AssignResult`` that records its arguments, ``object`` for ``BaseAssigner``, the identity for
``get_box_tensor`` (what it is for a plain tensor) and the checkout's own ``bbox_overlaps``. Every line that computes
the assignment is mmdetection's. Without the files, or when they import a name the stand-ins lack, the test skips
and says why.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import torch

from yolo_loss.losses.assigners.atss import _anchor_truth_iou, atss_assign

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(os.environ.get("MMDETECTION_REPO", ROOT.parent / "mmdetection"))
ASSIGNERS = Path("mmdet/models/task_modules/assigners")
OVERLAPS = Path("mmdet/structures/bbox/bbox_overlaps.py")

# --- small layouts for the hand-worked cases -----------------------------------------------------------------


def square_grid(stride: float, cells: int, side: float) -> torch.Tensor:
    """One anchor of ``side x side`` per cell of a ``cells x cells`` grid: ``Tensor[cells * cells, 4]``, index
    ``y * cells + x``, centred on ``((x + 0.5) * stride, (y + 0.5) * stride)``."""
    ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
    centres = (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * stride
    return torch.cat([centres - side / 2, centres + side / 2], -1)


# Level 0: a 4 x 4 grid of stride 10 with 10 x 10 anchors (anchor = cell); level 1: 2 x 2, stride 20, 20 x 20.
LEVEL0 = square_grid(10, 4, 10)
TWO_LEVELS = torch.cat([LEVEL0, square_grid(20, 2, 20)])
TWO_LEVEL_SIZES = [16, 4]


def assign_one(anchors: torch.Tensor, level_sizes: list[int], boxes: list[list[float]], *, topk: int,
               labels: list[int] | None = None, mask: list[bool] | None = None, num_classes: int = 3):
    truth_boxes = torch.tensor([boxes], dtype=anchors.dtype).reshape(1, -1, 4)
    m = truth_boxes.shape[1]
    truth_labels = torch.tensor([labels if labels is not None else [0] * m], dtype=torch.long).reshape(1, m)
    truth_mask = torch.tensor([mask if mask is not None else [True] * m], dtype=torch.bool).reshape(1, m)
    return atss_assign(anchors, level_sizes, truth_boxes, truth_labels, truth_mask, num_classes=num_classes,
                       topk=topk)


def positives(assignment, image: int = 0) -> dict[int, int]:
    """{anchor: truth} of an image's positives."""
    fg = assignment.fg[image]
    return dict(zip(fg.nonzero().flatten().tolist(), assignment.truth[image][fg].tolist()))


# --- hand-worked cases ----------------------------------------------------------------------------------------


def test_topk_per_level_by_centre_distance():
    """Truth (3, 17, 30, 26): centre (16.5, 21.5), 27 x 9, area 243; two levels, topk 2.

    Level 0 (cell (x, y) is anchor 4y + x), distances to the cell centres:
        anchor 9 (15, 25): sqrt(1.5^2 + 3.5^2) = 3.81;  anchor 5 (15, 15): sqrt(1.5^2 + 6.5^2) = 6.67;
        anchor 10 (25, 25): sqrt(8.5^2 + 3.5^2) = 9.19 (third: not a candidate).
    Level 1 (anchor 16 + 2y + x): 18 (10, 30): 10.70; 16 (10, 10): 13.21; 19 (30, 30): 15.95; 17 (30, 10): 17.73.
    Candidates 9, 5, 18, 16, IoUs:
        9:  (10, 20, 20, 30): 10 x 6 = 60 / (100 + 243 - 60) = 0.212014
        5:  (10, 10, 20, 20): 10 x 3 = 30 / 313 = 0.095847
        18: (0, 20, 20, 40):  17 x 6 = 102 / 541 = 0.188540
        16: (0, 0, 20, 20):   17 x 3 = 51 / 592 = 0.086149
    mean 0.145638, unbiased std sqrt(0.0122644 / 3) = 0.063939, threshold 0.209577: only 9 passes (its centre
    (15, 25) lies inside the truth). Anchor 10 has the very same IoU, 0.212014 (10 x 6 as well), above the
    threshold, but is the third nearest of its level: not a candidate, not positive.
    """
    result = assign_one(TWO_LEVELS, TWO_LEVEL_SIZES, [[3, 17, 30, 26]], topk=2, labels=[2])
    assert positives(result) == {9: 0}
    iou = _anchor_truth_iou(TWO_LEVELS, torch.tensor([[[3.0, 17, 30, 26]]]))[0, :, 0]
    expected_iou = torch.tensor([60 / 283, 30 / 313, 102 / 541, 51 / 592, 60 / 283])
    torch.testing.assert_close(iou[[9, 5, 18, 16, 10]], expected_iou)
    assert result.cls_target[0, 9].tolist() == [0.0, 0.0, 1.0]
    assert result.cls_target[0].sum() == 1


def test_threshold_is_mean_plus_unbiased_std():
    """Truth (1, 2, 17, 14): centre (9, 8), 16 x 12, area 192; level 0 alone.

    Nearest anchors: 0 (5, 5) at 5.00, 1 (15, 5) at 6.71, 4 (5, 15) at 8.06, 5 (15, 15) at 9.22. IoUs:
        0: 9 x 8 = 72 / (100 + 192 - 72) = 0.327273;  1: 7 x 8 = 56 / 236 = 0.237288;
        4: 9 x 4 = 36 / 256 = 0.140625;               5: 7 x 4 = 28 / 264 = 0.106061.
    topk 3: mean 0.235062; squared deviations 0.0085029 + 0.0000050 + 0.0089183 = 0.0174262; torch's unbiased std
    sqrt(0.0174262 / 2) = 0.093344, threshold 0.328406 > 0.327273: no positive at all (the population std,
    sqrt(0.0174262 / 3) = 0.076215, would give 0.311277 and make anchor 0 positive).
    topk 4: mean 0.202811, std sqrt(0.0299077 / 3) = 0.099845, threshold 0.302657: anchor 0 alone.
    """
    assert positives(assign_one(LEVEL0, [16], [[1, 2, 17, 14]], topk=3)) == {}
    assert positives(assign_one(LEVEL0, [16], [[1, 2, 17, 14]], topk=4)) == {0: 0}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iou_equal_to_threshold_is_positive(dtype):
    """Truth (2, 2, 18, 18) is centred on the corner (10, 10) of anchors 0, 1, 4, 5 (all at distance 7.07; the next
    at 15.8). topk 4: each overlaps it by 8 x 8 = 64, IoU 64 / (100 + 256 - 64) = 0.219178, the same float for all
    four; std 0, so the threshold is that IoU itself, and ``>=`` makes all four positive (``>``, YOLOv6's test,
    would make none). Their centres lie inside by 3.
    """
    result = assign_one(LEVEL0.to(dtype), [16], [[2, 2, 18, 18]], topk=4)
    assert positives(result) == {0: 0, 1: 0, 4: 0, 5: 0}


def test_candidate_centre_must_lie_inside_truth_by_more_than_0_01():
    """Truth (0, 0, x2, 8), x2 near 5, level 0, topk 3: centre (x2 / 2, 4); candidates anchors 0 (5, 5), 4 (5, 15)
    and 1 (15, 5). Only anchor 0 overlaps: IoU v = 8 x2 / 100 (the truth lies inside it), the others 0; with
    IoUs (v, 0, 0) the threshold is v / 3 + v / sqrt(3) = 0.91 v, so anchor 0 passes it. Its centre (5, 5) is inside
    the truth by min(5, 5, x2 - 5, 3) = x2 - 5, which must exceed 0.01 px: x2 = 5.02 gives a positive; x2 = 5.005
    (inside, by 0.005) and x2 = 4.99 (outside, though it is the highest IoU) give none.
    """
    assert positives(assign_one(LEVEL0, [16], [[0, 0, 5.02, 8]], topk=3)) == {0: 0}
    assert positives(assign_one(LEVEL0, [16], [[0, 0, 5.005, 8]], topk=3)) == {}
    assert positives(assign_one(LEVEL0, [16], [[0, 0, 4.99, 8]], topk=3)) == {}


def test_anchor_wanted_by_two_truths_goes_to_higher_iou():
    """Level 0, topk 3. Truth A (0, 0, 5.02, 8) makes anchor 0 positive with IoU 40.16 / 100 = 0.4016 (previous
    test). Truth B (1, 1, 9, 9) is centred on anchor 0 (distance 0; anchors 1 and 4 tie at 10, both taken): IoUs
    (0.64, 0, 0), threshold 0.91 x 0.64, so anchor 0 is positive for B too, centre inside by 4. It goes to B, the
    higher IoU, in either order of the truths; nothing else is positive.
    """
    a, b = [0, 0, 5.02, 8], [1, 1, 9, 9]
    assert positives(assign_one(LEVEL0, [16], [a, b], topk=3, labels=[0, 1])) == {0: 1}
    result = assign_one(LEVEL0, [16], [b, a], topk=3, labels=[1, 0])
    assert positives(result) == {0: 0}
    assert result.cls_target[0, 0].tolist() == [0.0, 1.0, 0.0]
    # Each alone makes anchor 0 positive: the above is the resolution, not one of them failing.
    assert positives(assign_one(LEVEL0, [16], [a], topk=3)) == {0: 0}
    assert positives(assign_one(LEVEL0, [16], [b], topk=3)) == {0: 0}


def test_padding_truths_are_never_matched_and_change_nothing():
    """A padding slot holding an anchor's own box (IoU 1 with it) and label -1, placed between the real truths,
    is matched by nothing, and the real truths keep their assignment (their indices shift by the slot)."""
    a, b = [3, 17, 30, 26], [1, 1, 9, 9]
    alone = assign_one(TWO_LEVELS, TWO_LEVEL_SIZES, [a, b], topk=2, labels=[2, 1])
    padded = assign_one(TWO_LEVELS, TWO_LEVEL_SIZES, [a, TWO_LEVELS[9].tolist(), b], topk=2, labels=[2, -1, 1],
                        mask=[True, False, True])
    expected = {anchor: {0: 0, 1: 2}[truth] for anchor, truth in positives(alone).items()}
    assert expected and positives(padded) == expected
    torch.testing.assert_close(padded.cls_target, alone.cls_target)


def test_image_without_truths_has_no_positives():
    """Image 1 has only padding (boxes that would match): no positive there; image 0 is as if alone."""
    boxes = torch.tensor([[[3, 17, 30, 26], [1, 1, 9, 9]], [[3, 17, 30, 26], [1, 1, 9, 9]]], dtype=torch.float32)
    labels = torch.tensor([[2, 1], [2, 1]])
    mask = torch.tensor([[True, True], [False, False]])
    result = atss_assign(TWO_LEVELS, TWO_LEVEL_SIZES, boxes, labels, mask, num_classes=3, topk=2)
    alone = atss_assign(TWO_LEVELS, TWO_LEVEL_SIZES, boxes[:1], labels[:1], mask[:1], num_classes=3, topk=2)
    assert not result.fg[1].any() and not result.truth[1].any() and not result.cls_target[1].any()
    assert positives(result, 0) == positives(alone, 0) != {}


# --- edge cases -----------------------------------------------------------------------------------------------


def test_all_padding_and_no_truth_slots():
    for m in (0, 3):
        boxes = torch.rand(2, m, 4) * 20
        boxes[..., 2:] += boxes[..., :2]
        result = atss_assign(TWO_LEVELS, TWO_LEVEL_SIZES, boxes, torch.full((2, m), -1),
                             torch.zeros(2, m, dtype=torch.bool), num_classes=3)
        assert result.fg.shape == result.truth.shape == (2, 20) and result.cls_target.shape == (2, 20, 3)
        assert not result.fg.any() and not result.truth.any() and not result.cls_target.any()


def test_level_smaller_than_topk_takes_all_its_anchors():
    """With topk 9, level 1 (4 anchors) gives all of its 4 and level 0 its nearest 9: 13 candidates. With topk 16
    every anchor of both levels is a candidate, so the rule reduces to: IoU >= mean + std over all 20 anchors, and
    centre inside by more than 0.01 (computed here directly)."""
    truth = [[2, 3, 31, 27]]
    iou = _anchor_truth_iou(TWO_LEVELS, torch.tensor([truth]))[0, :, 0]
    centres = (TWO_LEVELS[:, :2] + TWO_LEVELS[:, 2:]) / 2
    t = torch.tensor(truth[0])
    inside = torch.cat([centres - t[:2], t[2:] - centres], -1).amin(-1) > 0.01
    expected = ((iou >= iou.mean() + iou.std()) & inside).nonzero().flatten().tolist()
    assert expected and sorted(positives(assign_one(TWO_LEVELS, TWO_LEVEL_SIZES, truth, topk=16))) == expected
    # topk 9 on a level of 4: no error, and level 1's best anchor (16, IoU 0.387) stays positive.
    assert 16 in positives(assign_one(TWO_LEVELS, TWO_LEVEL_SIZES, truth, topk=9))


def test_float64_matches_float32_and_keeps_its_dtype():
    gen = torch.Generator().manual_seed(3)
    anchors, sizes = yolo_layout()
    boxes, labels, mask = random_truths(gen, batch=4)
    single = atss_assign(anchors, sizes, boxes, labels, mask, num_classes=3)
    double = atss_assign(anchors.double(), sizes, boxes.double(), labels, mask, num_classes=3)
    assert double.cls_target.dtype == torch.float64
    assert single.fg.any()
    assert torch.equal(single.fg, double.fg) and torch.equal(single.truth, double.truth)


def test_level_sizes_must_cover_the_anchors():
    with pytest.raises(ValueError, match="level_sizes"):
        assign_one(TWO_LEVELS, [16, 3], [[1, 1, 9, 9]], topk=9)


# --- parity with mmdetection ----------------------------------------------------------------------------------

IMG, STRIDES, NUM_CLASSES, MAX_TRUTHS = 128, (8, 16, 32), 3, 8
ANCHORS_WH = ((10, 13), (16, 30), (33, 23)), ((30, 61), (62, 45), (59, 119)), ((116, 90), (156, 198), (373, 326))


def yolo_layout() -> tuple[torch.Tensor, list[int]]:
    """The head's candidates at 128 px (package layout: level, anchor, row, column): ``Tensor[N, 4]``, sizes."""
    boxes, sizes = [], []
    for stride, anchors in zip(STRIDES, ANCHORS_WH):
        cells = IMG // stride
        ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
        centres = (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * stride  # row-major cells
        for w, h in anchors:
            half = torch.tensor([w / 2, h / 2])
            boxes.append(torch.cat([centres - half, centres + half], -1))
        sizes.append(len(anchors) * cells * cells)
    return torch.cat(boxes), sizes


def random_truths(gen: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """0-6 truths per image in random slots of ``MAX_TRUTHS`` (padding interleaved, holding junk boxes and label
    -1). A third of the truths have their centre on the stride-8 half-cell lattice, so that distances tie (cell
    centres, edges and corners), and some are tiny or clipped at the border."""
    boxes = torch.rand(batch, MAX_TRUTHS, 4, generator=gen) * IMG  # junk for the padding
    labels = torch.full((batch, MAX_TRUTHS), -1)
    mask = torch.zeros(batch, MAX_TRUTHS, dtype=torch.bool)
    for image in range(batch):
        count = int(torch.randint(0, 7, (), generator=gen))
        slots = torch.randperm(MAX_TRUTHS, generator=gen)[:count]
        centre = torch.rand(count, 2, generator=gen) * IMG
        on_lattice = torch.rand(count, generator=gen) < 1 / 3
        centre[on_lattice] = (centre[on_lattice] / 4).round() * 4
        wh = torch.exp(torch.rand(count, 2, generator=gen) * (torch.log(torch.tensor(120.0)) - 1) + 1)  # 2.7-120
        boxes[image, slots] = torch.cat([centre - wh / 2, centre + wh / 2], -1).clamp(0, IMG)
        labels[image, slots] = torch.randint(0, NUM_CLASSES, (count,), generator=gen)
        mask[image, slots] = True
    return boxes, labels, mask


class InstanceData:
    """Stand-in for mmengine's InstanceData: the attributes given, and ``in`` over their names."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __contains__(self, name: str) -> bool:
        return name in self.__dict__


class AssignResult:
    """Stand-in for mmdet's AssignResult: records what the assigner returns."""

    def __init__(self, num_gts, gt_inds, max_overlaps, labels=None):
        self.num_gts, self.gt_inds, self.max_overlaps, self.labels = num_gts, gt_inds, max_overlaps, labels


class Registry:
    """Stand-in for mmdet's TASK_UTILS: ``register_module()`` records a class, ``build(dict(type=...))`` makes it."""

    def __init__(self):
        self.classes = {}

    def register_module(self):
        def register(cls):
            self.classes[cls.__name__] = cls
            return cls
        return register

    def build(self, cfg: dict):
        kwargs = dict(cfg)
        return self.classes[kwargs.pop("type")](**kwargs)


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__path__ = []  # a package, so that submodules and relative imports resolve
    return module


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def reference_assigner(topk: int = 9):
    """mmdetection's ATSSAssigner (``alpha=None``, default ``BboxOverlaps2D``) loaded from the checkout under
    stand-in modules, or a skip naming what is missing."""
    files = [SOURCE / ASSIGNERS / "atss_assigner.py", SOURCE / ASSIGNERS / "iou2d_calculator.py", SOURCE / OVERLAPS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        pytest.skip(f"no mmdetection checkout at {SOURCE} (missing {', '.join(missing)}; git clone "
                    "https://github.com/open-mmlab/mmdetection there, or set $MMDETECTION_REPO)")
    registry = Registry()
    package = "mmdet.models.task_modules.assigners"
    stubs = {
        "mmengine": _module("mmengine"),
        "mmengine.structures": _module("mmengine.structures", InstanceData=InstanceData),
        "mmdet": _module("mmdet"),
        "mmdet.registry": _module("mmdet.registry", TASK_UTILS=registry),
        "mmdet.utils": _module("mmdet.utils", ConfigType=dict),
        "mmdet.models": _module("mmdet.models"),
        "mmdet.models.task_modules": _module("mmdet.models.task_modules"),
        package: _module(package),
        f"{package}.assign_result": _module(f"{package}.assign_result", AssignResult=AssignResult),
        f"{package}.base_assigner": _module(f"{package}.base_assigner", BaseAssigner=object),
        "mmdet.structures": _module("mmdet.structures"),
    }
    with mock.patch.dict(sys.modules, stubs):
        try:
            overlaps = _load("mmdet.structures.bbox.bbox_overlaps", files[2])
            sys.modules["mmdet.structures.bbox"] = _module("mmdet.structures.bbox",
                                                           bbox_overlaps=overlaps.bbox_overlaps,
                                                           get_box_tensor=lambda boxes: boxes)
            _load(f"{package}.iou2d_calculator", files[1])
            atss = _load(f"{package}.atss_assigner", files[0])
        except ImportError as error:  # a name the stand-ins lack: a newer layout of the checkout
            pytest.skip(f"mmdetection's files at {SOURCE} import something the test's stand-ins lack: {error}")
    return atss.ATSSAssigner(topk=topk), InstanceData


def reference_assign(assigner, instance_data, anchors, sizes, boxes, labels, mask):
    """The reference per image, its 1-based indices into the image's real truths mapped back to the padded slots:
    ``(fg, truth, label)`` each ``Tensor[B, N]`` (label -1 where negative)."""
    fg, truth, label = [], [], []
    for image in range(boxes.shape[0]):
        slots = mask[image].nonzero().flatten()
        result = assigner.assign(instance_data(priors=anchors), sizes,
                                 instance_data(bboxes=boxes[image, slots], labels=labels[image, slots]))
        positive = result.gt_inds > 0
        fg.append(positive)
        truth_per_image = torch.zeros_like(result.gt_inds)
        truth_per_image[positive] = slots[result.gt_inds[positive] - 1]
        truth.append(truth_per_image)
        label.append(result.labels)
    return torch.stack(fg), torch.stack(truth), torch.stack(label)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity_with_mmdetection(dtype):
    """Eight seeds of four images at 128 px, 3 anchors per cell (N = 3 x (256 + 64 + 16) = 1008), 0-6 truths
    among 8 slots: every anchor's assignment (positive or not, which truth) and label equal mmdetection's."""
    assigner, instance_data = reference_assigner()
    anchors, sizes = yolo_layout()
    anchors = anchors.to(dtype)
    total_positives = 0
    for seed in range(8):
        gen = torch.Generator().manual_seed(seed)
        boxes, labels, mask = random_truths(gen, batch=4)
        boxes = boxes.to(dtype)
        result = atss_assign(anchors, sizes, boxes, labels, mask, num_classes=NUM_CLASSES)
        fg, truth, label = reference_assign(assigner, instance_data, anchors, sizes, boxes, labels, mask)
        assert torch.equal(result.fg, fg), f"seed {seed}: positives differ at {(result.fg != fg).nonzero().tolist()}"
        assert torch.equal(result.truth, truth), f"seed {seed}: assigned truths differ"
        ours_label = torch.where(result.fg, result.cls_target.argmax(-1), -1)
        assert torch.equal(ours_label, label), f"seed {seed}: labels differ"
        assert torch.equal(result.cls_target.sum(-1), result.fg.to(dtype))
        total_positives += int(fg.sum())
    assert total_positives > 100  # the comparison covers many positives, not only negatives


def test_parity_with_mmdetection_on_small_levels_and_topk():
    """Levels smaller than topk (the 2 x 2 level of TWO_LEVELS with topk 9 and 5), truths centred on a corner shared
    by four cells (distance ties) and the equal-IoU case above, against mmdetection."""
    boxes = torch.tensor([[[3, 17, 30, 26], [1, 1, 9, 9], [2, 3, 31, 27], [10, 10, 30, 30]],
                          [[2, 2, 18, 18], [0, 0, 5.02, 8], [0, 0, 40, 40], [12, 2, 28, 18]]])
    labels, mask = torch.tensor([[0, 1, 2, 0], [1, 2, 0, 1]]), torch.ones(2, 4, dtype=torch.bool)
    for anchors, sizes in ((TWO_LEVELS, TWO_LEVEL_SIZES), (LEVEL0, [16])):
        for topk in (9, 5, 4, 2):
            assigner, instance_data = reference_assigner(topk)
            result = atss_assign(anchors, sizes, boxes, labels, mask, num_classes=3, topk=topk)
            fg, truth, _ = reference_assign(assigner, instance_data, anchors, sizes, boxes, labels, mask)
            assert torch.equal(result.fg, fg) and torch.equal(result.truth, truth), f"topk {topk}, sizes {sizes}"
            assert fg.any()
