"""The head description: anchors scaled to the input, the class activation decided by the class component alone,
and what it refuses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from yolo_loss.config.components import COMPONENTS
from yolo_loss.config.load import load_config
from yolo_loss.config.schema import YOLOV3_ANCHORS, Config, ModelConfig
from yolo_loss.head import HeadSpec, anchors_per_level, build_head, class_activation


def test_anchors_per_level_scaled_to_the_input():
    cfg = ModelConfig()  # YOLOv3 anchors given at 416 px
    levels = anchors_per_level(cfg, 160)
    assert [tuple(a.shape) for a in levels] == [(3, 2)] * 3
    scale = 160 / 416
    assert torch.allclose(levels[0][0], torch.tensor([10 * scale, 13 * scale]))
    assert torch.allclose(levels[2][2], torch.tensor([373 * scale, 326 * scale]))
    assert torch.allclose(torch.cat(levels), torch.tensor(YOLOV3_ANCHORS) * scale)
    assert torch.equal(torch.cat(anchors_per_level(cfg, 416)), torch.tensor(YOLOV3_ANCHORS, dtype=torch.float32))

    unscaled = anchors_per_level(ModelConfig(anchors_img_size=0), 160)
    assert torch.equal(torch.cat(unscaled), torch.tensor(YOLOV3_ANCHORS, dtype=torch.float32))


def test_build_head_from_a_config():
    """The shipped main job: 6 classes at 160 px; the anchors are the float32 ones the criterion used to hold, and
    come back in any dtype and device asked for."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "shapes_nano.yaml")
    head = build_head(cfg, 6)
    assert head.strides == (8, 16, 32) and head.num_classes == 6 and head.num_anchors == 3
    assert head.channels == 3 * (5 + 6) and head.class_activation == "sigmoid" and head.decode == "darknet"
    for got, expected in zip(head.anchors(), anchors_per_level(cfg.model, 160)):
        assert got.dtype == torch.float32 and torch.equal(got, expected)
    like = torch.zeros(1, dtype=torch.float64)
    assert all(a.dtype == torch.float64 for a in head.anchors(like=like))
    assert build_head(dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, cls="ce")), 6).class_activation \
        == "softmax"


@pytest.mark.parametrize("entry", [e for e in COMPONENTS if e.term == "cls"], ids=lambda e: e.name)
def test_the_class_activation_is_the_class_components_property(entry):
    assert class_activation(entry.name) == ("softmax" if entry.softmax else "sigmoid")
    head = build_head(dataclasses.replace(Config(), loss=dataclasses.replace(Config().loss, cls=entry.name)), 3)
    assert head.class_activation == class_activation(entry.name)


def test_class_probabilities():
    """Sigmoid: each logit alone; softmax: the row sums to 1 and a constant added to the row changes nothing."""
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    head = HeadSpec.from_anchors([torch.ones(1, 2)], strides=(8,), num_classes=3)
    torch.testing.assert_close(head.class_probabilities(logits), logits.sigmoid())
    softmax = dataclasses.replace(head, class_activation="softmax")
    torch.testing.assert_close(softmax.class_probabilities(logits), logits.softmax(-1))
    torch.testing.assert_close(softmax.class_probabilities(logits + 7.0), softmax.class_probabilities(logits))
    assert not torch.allclose(head.class_probabilities(logits + 7.0), head.class_probabilities(logits))


@pytest.mark.parametrize("kwargs, message", [
    ({"strides": (8, 16)}, "3 anchor groups for 2 strides"),
    ({"num_classes": 0}, "num_classes must be positive"),
    ({"class_activation": "tanh"}, "class_activation 'tanh'"),
    ({"decode": "yolov9"}, "decode 'yolov9'"),
])
def test_bad_descriptions_are_refused(kwargs, message):
    anchors = [torch.ones(3, 2)] * 3
    with pytest.raises(ValueError, match=message):
        HeadSpec.from_anchors(anchors, **{"strides": (8, 16, 32), "num_classes": 2, **kwargs})
