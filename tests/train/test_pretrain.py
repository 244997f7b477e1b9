"""The backbone's classification pretraining: crops cut where they should be, the cache reused for the same
parameters and rebuilt for changed ones, the caller's random state untouched, and the weights loaded."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from yolo_loss.config.load import config_from_dict
from yolo_loss.data.bad_input import DataError
from yolo_loss.model import build_model
from yolo_loss.train import pretrain
from yolo_loss.train.pretrain import (ObjectCrops, cache_path, cut_crops, fingerprint, load_pretrained_backbone,
                               pretrained_backbone)

pytestmark = pytest.mark.slow


def tiny(root: Path, **pretrain_keys):
    return config_from_dict({
        "model": {"width": 0.125, "depth": 0.33,
                  "pretrain": {"epochs": 1, "crop_size": 32, "batch_size": 8, **pretrain_keys}},
        "data": {"format": "shapes", "root": str(root), "img_size": 64,
                 "shapes": {"num_train": 24, "num_val": 6, "image_size": 64, "max_objects": 3}},
        "train": {"device": "cpu"}})


def test_crops_are_cut_around_the_box():
    """A 40 x 40 image, white square at x, y in [10, 20): a crop at context 1 of the box (10, 10, 20, 20) resampled to
    32 px is white inside; at context 2 its outer quarter on every side is the image's black around the square; a
    box at the image corner gets grey 0.5 beyond the border; a flipped crop of an asymmetric image is mirrored."""
    image = torch.zeros(1, 3, 40, 40, dtype=torch.uint8)
    image[..., 10:20, 10:20] = 255
    image[..., 10:20, 15:20] = 128  # right half grey: tells a flip
    objects = ObjectCrops(image, torch.tensor([0, 0]), torch.tensor([[10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 8.0, 8.0]]),
                          torch.tensor([0, 1]))
    plain = cut_crops(objects, torch.tensor([0]), 32, context=torch.tensor([1.0]), shift=torch.zeros(1, 2),
                      flip=torch.tensor([False]))[0]
    assert plain[:, 2:30, 2:14].min() == 1.0 and torch.allclose(plain[:, 2:30, 18:30], torch.tensor(128 / 255))
    flipped = cut_crops(objects, torch.tensor([0]), 32, context=torch.tensor([1.0]), shift=torch.zeros(1, 2),
                        flip=torch.tensor([True]))[0]
    assert torch.allclose(flipped, plain.flip(-1), atol=1e-6)
    wide = cut_crops(objects, torch.tensor([0]), 32, context=torch.tensor([2.0]), shift=torch.zeros(1, 2),
                     flip=torch.tensor([False]))[0]
    assert wide[:, :6, :].max() == 0.0 and wide[:, 10:22, 10:14].min() == 1.0
    corner = cut_crops(objects, torch.tensor([1]), 32, context=torch.tensor([2.0]), shift=torch.zeros(1, 2),
                       flip=torch.tensor([False]))[0]
    assert torch.allclose(corner[:, :6, :6], torch.tensor(0.5)) and corner[:, 20:26, 20:26].max() == 0.0


def test_cache_is_reused_for_the_same_parameters_and_rebuilt_for_others(tmp_path: Path, monkeypatch) -> None:
    cfg = tiny(tmp_path)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    weights, info, path = pretrained_backbone(cfg, echo=lambda line: None)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is left as it was
    assert path == cache_path(cfg) and path.is_file() and info["steps"] > 0 and 0.0 <= info["val_accuracy"] <= 1.0

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained again although the cache holds these parameters")

    monkeypatch.setattr(pretrain, "pretrain_backbone", must_not_train)
    again, _, again_path = pretrained_backbone(tiny(tmp_path), echo=lambda line: None)
    assert again_path == path and all(torch.equal(again[k], weights[k]) for k in weights)
    monkeypatch.undo()

    changed = tiny(tmp_path, lr=0.01)
    other, _, other_path = pretrained_backbone(changed, echo=lambda line: None)
    assert other_path != path and other_path.is_file()
    assert not all(torch.equal(other[k], weights[k]) for k in weights if k.endswith("conv.weight"))
    wider = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, width=0.25))
    assert cache_path(wider) != path  # another backbone size is another cache file

    model = build_model(cfg.model, 6)
    line = load_pretrained_backbone(model, cfg, echo=lambda line: None)
    assert str(path) in line and fingerprint(weights) in line
    assert all(torch.equal(model.backbone.state_dict()[k], weights[k]) for k in weights)


def test_fingerprint_tells_weights_apart_and_nothing_else() -> None:
    """Equal weights (other tensor objects, any key order): one fingerprint; one value, a dtype or a shape
    changed: another."""
    state = {"a.weight": torch.arange(6.0).view(2, 3), "a.bias": torch.zeros(2), "bn.num_batches": torch.tensor(7)}
    same = {k: state[k].clone() for k in reversed(list(state))}
    assert fingerprint(same) == fingerprint(state) and len(fingerprint(state)) == 12
    nudged = dict(state, **{"a.weight": state["a.weight"].clone()})
    nudged["a.weight"][1, 2] = torch.nextafter(torch.tensor(5.0), torch.tensor(6.0))
    assert fingerprint(nudged) != fingerprint(state)
    assert fingerprint(dict(state, **{"a.bias": torch.zeros(2, dtype=torch.float64)})) != fingerprint(state)
    assert fingerprint(dict(state, **{"a.weight": state["a.weight"].view(3, 2)})) != fingerprint(state)


def test_too_few_objects_for_a_batch_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"model.pretrain.batch_size: 500 is more than the \d+ training objects"):
        pretrained_backbone(tiny(tmp_path, batch_size=500), echo=lambda line: None)
    assert not cache_path(tiny(tmp_path, batch_size=500)).exists()  # nothing half-written is left to be reused


def test_training_starts_from_the_pretrained_backbone(tmp_path: Path) -> None:
    """model.pretrain in a run: the backbone's convolutions after one step at burn-in lr 0 are the cached ones;
    the neck and the head keep their random initialisation (the same as a run without pretraining)."""
    from yolo_loss.checkpoint import load_checkpoint
    from yolo_loss.train.engine import train

    def cfg_with(pretrain_epochs: int):
        cfg = tiny(tmp_path / "data")
        cfg.model.pretrain.epochs = pretrain_epochs
        cfg.train.max_steps, cfg.train.epochs, cfg.train.ema, cfg.train.eval_points = 1, 1, False, 1
        cfg.train.eval_at_start = False
        cfg.train.out_dir = str(tmp_path)
        return cfg

    weights, _, _ = pretrained_backbone(cfg_with(1), echo=lambda line: None)
    trained = {}
    for epochs in (1, 0):
        run_dir = tmp_path / f"run{epochs}"
        run_dir.mkdir()
        train(cfg_with(epochs), run_dir)
        trained[epochs] = load_checkpoint(run_dir / "last.pt")["model"]
        start = json.loads((run_dir / "metrics.json").read_text())["start"]
        assert start == ({"backbone": fingerprint(weights), "backbone_val_accuracy": pytest.approx(
            pretrained_backbone(cfg_with(1), echo=lambda line: None)[1]["val_accuracy"])} if epochs else {})
    convs = [name for name in weights if name.endswith("conv.weight")]
    assert all(torch.equal(trained[1][f"backbone.{name}"], weights[name]) for name in convs)
    assert not torch.equal(trained[0]["backbone.stem.conv.weight"], weights["stem.conv.weight"])
    head = [name for name in trained[0] if not name.startswith("backbone.") and name.endswith("weight")]
    assert all(torch.equal(trained[0][name], trained[1][name]) for name in head)
