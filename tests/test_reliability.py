"""Reliability: a NaN in a loss term is named, its batch and weights saved, and the run stops or skips the step;
the last good checkpoint is never replaced by NaN weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import yolo_loss.train.engine as engine
from yolo_loss.checkpoint import load_checkpoint, state_has_nonfinite
from yolo_loss.config.load import config_from_dict
from yolo_loss.train.engine import NonFiniteLoss, train
from yolo_loss.train.run_folder import RunMetrics, RunStatus

pytestmark = pytest.mark.slow


def tiny(root: Path, out: Path, **train_keys: object):
    return config_from_dict({
        "model": {"width": 0.25, "depth": 0.33},
        "data": {"format": "shapes", "root": str(root), "img_size": 64, "cache": True, "workers": 0,
                 "shapes": {"num_train": 16, "num_val": 4, "image_size": 64, "max_objects": 2}},
        "train": {"epochs": 3, "batch_size": 8, "burn_in": 1, "ema": False, "eval_points": 1,
                  "eval_at_start": False, "log_interval": 1,
                  "device": "cpu", "out_dir": str(out), **train_keys},
        "eval": {"batch_size": 4}})


class Poisoned:
    """The real criterion, except that its 'cls' term at level P4 is NaN on the given training calls (from 0)."""

    def __init__(self, criterion, at_calls: set[int]) -> None:
        self.criterion, self.at_calls, self.calls = criterion, at_calls, 0

    def __getattr__(self, name: str):
        return getattr(self.criterion, name)

    def __call__(self, preds, targets, img_size, **keywords):
        result = self.criterion(preds, targets, img_size, **keywords)
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


# --------------------------------------------------------------------------------------------------------------------
# Exact resume: a run killed (SIGKILL) or stopped (SIGINT) mid-epoch and resumed ends bitwise where an uninterrupted
# run ends, with the same logged losses. Real train.py processes, augmentation and multi-scale on, EMA on.

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH, EPOCHS = 4, 5


def resume_config(tmp_path: Path) -> Path:
    """A tiny run with Wise-IoU as its box loss, whose running mean of 1 - IoU is the criterion's state across
    steps: the resumes below must restore it too (a resume that restarted it at 1 would not end bitwise equal)."""
    import yaml

    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump({"loss": {"xy": "none", "wh": "none", "box": "wiou", "wiou_momentum": 0.2},
        "model": {"width": 0.25, "depth": 0.33},
        "data": {"format": "shapes", "root": str(tmp_path / "data"), "img_size": 64, "cache": True, "workers": 0,
                 "shapes": {"num_train": 8 * STEPS_PER_EPOCH, "num_val": 4, "image_size": 64, "max_objects": 2},
                 "augment": {"jitter": 0.3, "multiscale": [64, 96]}},
        "train": {"epochs": EPOCHS, "batch_size": 8, "burn_in": 2, "ema": True, "eval_points": EPOCHS,
                  "eval_at_start": False,
                  "log_interval": 1, "grad_terms_interval": 3, "checkpoint_interval": 2, "device": "cpu",
                  "log_images": 0},
        "eval": {"batch_size": 4}, "name": "resume"}))
    return path


def start_training(config: Path, run_dir: Path, *extra: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), "--config", str(config), "--run-dir",
                             str(run_dir), "--deterministic", *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def wait_for_mid_epoch_checkpoint(process, last: Path, min_epoch: int = 1) -> dict:
    """Poll ``last`` until it is a mid-epoch checkpoint of epoch ``min_epoch`` (0-based) or later."""
    import time

    seen = None
    while process.poll() is None:
        if last.exists() and last.stat().st_mtime_ns != seen:
            seen = last.stat().st_mtime_ns
            try:
                state = load_checkpoint(last)
            except Exception:  # replaced while being read: read the new one next time
                continue
            if state["epoch"] >= min_epoch and state["epoch_progress"]["batches"] > 0:
                return state
        time.sleep(0.005)
    raise AssertionError(f"the run ended before a mid-epoch checkpoint:\n{process.stdout.read()}")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The uninterrupted run, and its config (whose data the interrupted runs share)."""
    tmp_path = tmp_path_factory.mktemp("straight")
    config = resume_config(tmp_path)
    finish(start_training(config, tmp_path / "run"))
    return config, tmp_path / "run"


def assert_same_run(run: Path, reference: Path) -> None:
    from yolo_loss.tensorboard.log import read_scalars

    final, expected = load_checkpoint(run / "last.pt"), load_checkpoint(reference / "last.pt")
    assert final["step"] == expected["step"] == STEPS_PER_EPOCH * EPOCHS
    for key in ("model", "ema"):
        a, b = final[key] if key == "model" else final[key]["module"], (
            expected[key] if key == "model" else expected[key]["module"])
        mismatched = [name for name in b if not torch.equal(a[name], b[name])]
        assert not mismatched, f"{key}: {mismatched[:5]}"
    for split, tag in (("train", "loss/total"), ("train", "loss/obj_neg/sum"), ("train", "optim/lr"),
                       ("train", "grad/total/all"), ("val", "loss/total")):
        logged = read_scalars(run, split, tag)
        assert logged[0] and logged == read_scalars(reference, split, tag), (split, tag)
    import json

    saved, reference_saved = (json.loads((r / "metrics.json").read_text()) for r in (run, reference))
    assert saved["metrics"] == reference_saved["metrics"] and saved["final_terms"] == reference_saved["final_terms"]
    # the validation curve, one evaluation an epoch: those before the interruption come back from the checkpoint
    assert [e["epoch"] for e in saved["evaluations"]] == list(range(1, EPOCHS + 1))
    assert saved["evaluations"] == reference_saved["evaluations"]
    assert torch.equal(final["criterion"]["iou_mean"], expected["criterion"]["iou_mean"])


def test_kill_9_mid_epoch_then_resume_is_bitwise_identical(straight_run, tmp_path: Path) -> None:
    config, reference = straight_run
    run = tmp_path / "run"
    process = start_training(config, run)
    state = wait_for_mid_epoch_checkpoint(process, run / "last.pt")
    process.kill()  # SIGKILL: no handler runs, nothing is flushed
    process.wait()
    assert process.returncode == -9
    assert 0 < state["step"] < STEPS_PER_EPOCH * EPOCHS
    assert state["criterion"]["iou_mean"].item() != 1.0  # Wise-IoU's running mean has moved
    output = finish(start_training(config, run, "--resume", str(run / "last.pt")))
    assert "resumed from" in output
    assert_same_run(run, reference)


def test_sigint_saves_mid_epoch_and_resumes_exactly(straight_run, tmp_path: Path) -> None:
    import signal

    config, reference = straight_run
    run = tmp_path / "run"
    process = start_training(config, run)
    wait_for_mid_epoch_checkpoint(process, run / "last.pt")
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 130, output
    stopped = load_checkpoint(run / "last.pt")
    assert f"stopped at step {stopped['step']}" in output
    assert RunStatus.read(run) == RunStatus("stopped", stopped["step"])  # what the study runner reads
    output = finish(start_training(config, run, "--resume", str(run / "last.pt")))
    assert f"batch {stopped['epoch_progress']['batches']}, step {stopped['step']}" in output
    assert_same_run(run, reference)
    assert RunStatus.read(run) == RunStatus("finished", STEPS_PER_EPOCH * EPOCHS)


def test_a_run_resumed_after_its_last_epoch_writes_what_it_measured(straight_run, tmp_path: Path) -> None:
    """Killed between its last checkpoint and metrics.json: the resume trains nothing and writes the same
    metrics.json (the final terms and the validation curve come back from the checkpoint)."""
    import shutil

    config, reference = straight_run
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "metrics.json").unlink()
    output = finish(start_training(config, run, "--resume", str(run / "last.pt")))
    assert "resumed from" in output
    resumed, expected = RunMetrics.read(run), RunMetrics.read(reference)
    assert resumed.final_terms and resumed.final_terms == expected.final_terms
    assert (resumed.metrics, resumed.evaluations, resumed.steps) == (expected.metrics, expected.evaluations,
                                                                    expected.steps)


def test_deterministic_switch_is_recorded(straight_run) -> None:
    import yaml

    _, reference = straight_run
    assert yaml.safe_load((reference / "config.yaml").read_text())["train"]["deterministic"] is True
    assert "--deterministic" in (reference / "command.txt").read_text()
