"""configs/presets/yolov5.yaml against the real ultralytics ComputeLoss (ultralytics/yolov3 utils/loss.py).

The test runs ultralytics' own code: a checkout of https://github.com/ultralytics/yolov3 beside the project
(``../yolov3``, or the folder in ``$ULTRALYTICS_YOLOV3``) and the ``ultralytics`` and ``pandas`` packages it imports
(``pip install ultralytics pandas``; neither is a dependency of this project). Without them it skips with the reason.
The hyper-parameters are read from that checkout's ``data/hyps/hyp.scratch-low.yaml`` and scaled as its
``train.py`` scales them.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from yolo_loss.config.load import load_config
from yolo_loss.head import build_head
from yolo_loss.losses.criterion import build_criterion

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(os.environ.get("ULTRALYTICS_YOLOV3", ROOT.parent / "yolov3"))
NUM_CLASSES, IMG, BATCH = 3, 160, 4


def compute_loss_class():
    """ultralytics' ComputeLoss, imported from the checkout, or a skip naming what is missing."""
    if not (SOURCE / "utils" / "loss.py").is_file():
        pytest.skip(f"no ultralytics/yolov3 checkout at {SOURCE} (git clone https://github.com/ultralytics/yolov3 "
                    "there, or set $ULTRALYTICS_YOLOV3)")
    for package in ("ultralytics", "pandas"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"ultralytics/yolov3's utils/loss.py imports {package!r}: pip install ultralytics pandas")
    sys.path.insert(0, str(SOURCE))
    try:
        return importlib.import_module("utils.loss").ComputeLoss
    finally:
        sys.path.remove(str(SOURCE))


class Detect(torch.nn.Module):
    """What ComputeLoss reads of ultralytics' Detect module: nl, na, nc, stride and the anchors in grid units."""

    def __init__(self, anchors_px: list[torch.Tensor], strides: tuple[int, ...]):
        super().__init__()
        self.nl, self.na, self.nc = len(strides), anchors_px[0].shape[0], NUM_CLASSES
        self.stride = torch.tensor(strides, dtype=torch.float64)
        self.anchors = torch.stack([a / s for a, s in zip(anchors_px, strides)])
        self.weight = torch.nn.Parameter(torch.zeros(1))  # ComputeLoss takes its device from a parameter


class Model(torch.nn.Module):
    def __init__(self, detect: Detect, hyp: dict):
        super().__init__()
        self.model = torch.nn.Sequential(detect)
        self.hyp = hyp


def scratch_low_hyp(num_levels: int) -> dict:
    """hyp.scratch-low.yaml with train.py's scaling to the layers, the class count and the image size."""
    hyp = yaml.safe_load((SOURCE / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    hyp["box"] *= 3 / num_levels
    hyp["cls"] *= NUM_CLASSES / 80 * 3 / num_levels
    hyp["obj"] *= (IMG / 640) ** 2 * 3 / num_levels
    hyp["label_smoothing"] = 0.0
    return hyp


def random_targets(gen: torch.Generator) -> torch.Tensor:
    """Truths over the batch: random ones, two pairs that collide (same cell, same size: the same anchors) and
    one at the image border, so that neighbour cells, collisions and the grid's edge all occur."""
    rows = []
    for image in range(BATCH):
        for _ in range(5):
            cx, cy = torch.rand(2, generator=gen).tolist()
            w, h = (torch.rand(2, generator=gen) * 0.5 + 0.03).tolist()
            rows.append([image, int(torch.randint(NUM_CLASSES, (1,), generator=gen)), cx, cy, w, h])
    rows.append([0, 1, rows[0][2] + 0.001, rows[0][3] - 0.001, rows[0][4], rows[0][5]])  # collides with row 0
    rows.append([2, 2, rows[11][2], rows[11][3], rows[11][4] * 1.02, rows[11][5]])  # collides with row 11
    rows.append([1, 0, 0.02, 0.97, 0.04, 0.05])  # in the grid's outer cells
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_yolov5_preset_equals_ultralytics_compute_loss(seed: int) -> None:
    """The preset's total loss and its gradient with respect to every head output equal ComputeLoss's (1e-5
    relative), on random head maps and truths with collisions, neighbour-cell positives and border truths."""
    ComputeLoss = compute_loss_class()
    cfg = load_config(ROOT / "configs" / "presets" / "yolov5.yaml", (f"data.img_size={IMG}",))
    head = build_head(cfg, NUM_CLASSES)
    ours = build_criterion(cfg.loss, head, img_size=IMG)
    anchors = [a.double() for a in head.anchors()]
    theirs = ComputeLoss(Model(Detect(anchors, head.strides), scratch_low_hyp(head.num_levels)).double())

    gen = torch.Generator().manual_seed(seed)
    channels = head.num_anchors * (5 + NUM_CLASSES)
    preds = [(torch.randn(BATCH, channels, IMG // s, IMG // s, generator=gen, dtype=torch.float64) * 1.5)
             .requires_grad_() for s in head.strides]
    targets = random_targets(gen)

    result = ours([p.double() for p in preds], targets, IMG)
    our_grads = torch.autograd.grad(result.total, preds)
    # ultralytics' layout: [B, A, H, W, 5 + C], a view of the same maps
    views = [p.view(BATCH, head.num_anchors, 5 + NUM_CLASSES, *p.shape[-2:]).permute(0, 1, 3, 4, 2) for p in preds]
    total, _ = theirs(views, targets)
    their_grads = torch.autograd.grad(total.sum(), preds)

    assert sum(pos.num_positives for pos in result.positives) > len(targets)  # neighbour cells took part
    assert any(not bool(pos.objectness_row.all()) for pos in result.positives)  # and a collision kept two rows
    # ComputeLoss accumulates its three parts in float32 zeros(1) tensors, whatever the dtype of the maps
    torch.testing.assert_close(result.total.float(), total.sum(), rtol=1e-5, atol=0)
    for level, (mine, reference) in enumerate(zip(our_grads, their_grads)):
        scale = reference.abs().max()
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5 * float(scale), msg=f"level {level}")
