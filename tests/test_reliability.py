"""Reliability: a NaN in a loss term is named, its batch and weights saved, and the run stops or skips the step;
the last good checkpoint is never replaced by NaN weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import yolo_loss.engine as engine
from yolo_loss.checkpoint import load_checkpoint, state_has_nonfinite
from yolo_loss.config import config_from_dict
from yolo_loss.engine import NonFiniteLoss, train

pytestmark = pytest.mark.slow


def tiny(root: Path, out: Path, **train_keys: object):
    return config_from_dict({
        "model": {"width": 0.25, "depth": 0.33},
        "data": {"format": "shapes", "root": str(root), "img_size": 64, "cache": True, "workers": 0,
                 "shapes": {"num_train": 16, "num_val": 4, "image_size": 64, "max_objects": 2}},
        "train": {"epochs": 3, "batch_size": 8, "burn_in": 1, "ema": False, "eval_interval": 0, "log_interval": 1,
                  "device": "cpu", "out_dir": str(out), **train_keys},
        "eval": {"batch_size": 4}})


class Poisoned:
    """The real criterion, except that its 'cls' term at level P4 is NaN on the given training calls (from 0)."""

    def __init__(self, criterion, at_calls: set[int]) -> None:
        self.criterion, self.at_calls, self.calls = criterion, at_calls, 0

    def __getattr__(self, name: str):
        return getattr(self.criterion, name)

    def __call__(self, preds, targets, img_size):
        result = self.criterion(preds, targets, img_size)
        if torch.is_grad_enabled():  # training steps only, not evaluation
            if self.calls in self.at_calls:
                nan = torch.tensor([0.0, float("nan"), 0.0])
                result.terms["cls"] = result.terms["cls"] + nan
                result.total = result.total + nan.sum()
            self.calls += 1
        return result


def poison(monkeypatch: pytest.MonkeyPatch, at_calls: set[int]) -> None:
    build = engine.build_criterion
    monkeypatch.setattr(engine, "build_criterion", lambda *args, **kwargs: Poisoned(build(*args, **kwargs), at_calls))


def test_nan_stops_the_run_naming_the_term_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison(monkeypatch, {3})  # epoch 2, its second step (2 steps per epoch)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(NonFiniteLoss, match=r"step 3: loss term 'cls' at level P4 is nan"):
        train(tiny(tmp_path / "data", tmp_path), run_dir)
    dump = load_checkpoint(run_dir / "nonfinite" / "step3.pt")
    assert dump["images"].shape == (8, 3, 64, 64) and dump["targets"].shape[1] == 6
    assert len(dump["image_ids"]) == 8 and dump["step"] == 3
    assert not state_has_nonfinite(dump["model"])  # the weights before the bad step, to reproduce it
    last = load_checkpoint(run_dir / "last.pt")
    assert last["epoch"] == 1 and last["step"] == 2 and not state_has_nonfinite(last["model"])
    assert not (run_dir / "metrics.json").exists()


def test_nan_steps_are_skipped_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison(monkeypatch, {1, 4})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = train(tiny(tmp_path / "data", tmp_path, on_nonfinite="skip", max_nonfinite=2), run_dir)
    assert result.steps == 6
    assert sorted(p.name for p in (run_dir / "nonfinite").iterdir()) == ["step1.pt", "step4.pt"]
    assert load_checkpoint(run_dir / "last.pt")["nonfinite_skipped"] == 2
    assert not state_has_nonfinite(load_checkpoint(run_dir / "last.pt")["model"])


def test_skipping_stops_past_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison(monkeypatch, {0, 1, 2})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(NonFiniteLoss, match="step 2"):  # the third one is over the limit of 2
        train(tiny(tmp_path / "data", tmp_path, on_nonfinite="skip", max_nonfinite=2), run_dir)
