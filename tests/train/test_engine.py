"""End to end: short trainings on a tiny synthetic set, the train.py / eval.py command lines, the real subsets.

The trainings here are a few dozen steps of the smallest model at 64 px: enough to show that the loss falls and
that every piece (data, model, loss, optimiser, evaluation, checkpoints, TensorBoard) is wired, not to reach AP.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from yolo_loss.checkpoint import load_checkpoint
from yolo_loss.config.load import config_from_dict, config_to_dict, load_config
from yolo_loss.data import build_dataset, build_loader
from yolo_loss.head import build_head
from yolo_loss.model import build_model
from yolo_loss.tensorboard.tags import LEVEL_NAMES
from yolo_loss.train.engine import METRIC_KEYS, ResumeError, evaluate, train
from yolo_loss.train.run_folder import RunStatus

if TYPE_CHECKING:
    from conftest import RunScript

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
PRESETS = REPO / "configs" / "presets"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shapes")


def tiny_config(shapes_root: Path, out_dir: Path, preset: str = "darknet", **train: object):
    """A preset (its loss and the decode keys of its model section) on 32 training images of 64 px, no
    augmentation, no EMA."""
    preset_model = yaml.safe_load((PRESETS / f"{preset}.yaml").read_text()).get("model", {})
    data = {
        "model": {"width": 0.25, "depth": 0.33, **preset_model},
        "data": {"format": "shapes", "root": str(shapes_root), "img_size": 64, "cache": True, "workers": 0,
                 "shapes": {"num_train": 32, "num_val": 8, "image_size": 64, "max_objects": 3, "seed": 0},
                 "augment": {"flip": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "jitter": 0.0}},
        "loss": config_to_dict(load_config(PRESETS / f"{preset}.yaml"))["loss"],  # the preset's loss, all of it
        "train": {"epochs": 10, "batch_size": 8, "lr": 0.01, "burn_in": 5, "ema": False, "eval_points": 1,
                  "eval_at_start": False,
                  "log_interval": 1, "seed": 0, "device": "cpu", "out_dir": str(out_dir), **train},
        "eval": {"batch_size": 8},
        "name": "tiny",
    }
    return config_from_dict(data)


def scalar_series(run_dir: Path, tag: str, split: str = "train") -> list[float]:
    """The values of a scalar tag of ``run_dir/<split>`` (training and validation share tags)."""
    events = EventAccumulator(str(run_dir / split))
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


@pytest.mark.parametrize("preset", ["darknet", "paper"])
def test_short_training_lowers_the_loss_and_writes_the_run(preset: str, shapes_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(shapes_root, tmp_path, preset)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = train(cfg, run_dir)

    assert result.steps == 40  # 32 images, batch 8, 10 epochs
    losses = scalar_series(run_dir, "loss/total")
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, f"{preset}: loss {first:.2f} -> {last:.2f}"
    # not only the objectness of the negatives: the terms of the positives fall too
    for term in ("cls", "obj_pos"):
        series = scalar_series(run_dir, f"loss/{term}/sum")
        assert sum(series[-5:]) < sum(series[:5]), term

    assert set(METRIC_KEYS) <= set(result.metrics)
    assert all(0.0 <= result.metrics[key] <= 1.0 for key in METRIC_KEYS)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["metrics"] == pytest.approx(result.metrics) and saved["steps"] == 40
    assert set(saved["final_terms"]) == {"xy", "wh", "obj_pos", "obj_neg", "cls", "total"}
    assert saved["final_terms"]["total"] == pytest.approx(sum(losses[-4:]) / 4, rel=1e-5)  # the last epoch's mean
    assert saved["train_seconds"] > 0 and saved["images_per_sec"] == pytest.approx(320 / saved["train_seconds"])
    state = load_checkpoint(run_dir / "last.pt")
    assert state["step"] == 40 and state["epoch"] == 10
    assert (run_dir / "best.pt").exists()


@pytest.mark.parametrize("assign", ["tal", "simota", "atss"])
def test_a_dynamic_assigner_trains_through_the_engine(assign: str, shapes_root: Path, tmp_path: Path) -> None:
    """loss.assign: tal | simota | atss with a CIoU box term: the whole loop (training, the positives' TensorBoard
    diagnostics, evaluation, metrics.json) runs, and the positives' boxes improve. (The loss itself need not fall:
    the positives and their soft targets change with the predictions, e.g. SimOTA's dynamic k grows with the IoUs.)"""
    cfg = tiny_config(shapes_root, tmp_path, "darknet")
    cfg.loss = dataclasses.replace(cfg.loss, xy="none", wh="none", box="ciou", assign=assign)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = train(cfg, run_dir)
    iou = [sum(values) for values in zip(*(scalar_series(run_dir, f"diag/iou_pos/{level}")
                                           for level in LEVEL_NAMES))]
    assert sum(iou[-10:]) > 1.1 * sum(iou[:10]), iou
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == result.steps == 40
    assert all(0.0 <= result.metrics[key] <= 1.0 for key in METRIC_KEYS)


@pytest.mark.parametrize("preset", ["yolov4", "yolov5"])
def test_later_presets_train_evaluate_and_export_as_darknet_allows(preset: str, shapes_root: Path, tmp_path: Path,
                                                                  run_script: RunScript) -> None:
    """The yolov4 preset (scale_x_y, AB's CIoU deltas, multi-anchor) and the yolov5 one (its decode, neighbour
    cells, kept collisions, balanced objectness) train: the loss falls, the box term with it, and the model is
    evaluated with its decode. pjreddie's darknet cannot decode either: exporting the head is refused, the
    backbone is written. (ultralytics' loss, a mean per term times the batch, is some 20x smaller than darknet's
    sum per image here: it takes a larger lr.)"""
    cfg = tiny_config(shapes_root, tmp_path, preset, epochs=6, lr=0.05 if preset == "yolov5" else 0.01)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = train(cfg, run_dir)
    losses = scalar_series(run_dir, "loss/total")
    assert sum(losses[-4:]) < 0.9 * sum(losses[:4]), preset
    box = scalar_series(run_dir, "loss/box/sum")
    assert sum(box[-4:]) < sum(box[:4])
    assert set(METRIC_KEYS) <= set(result.metrics)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved["final_terms"]) == {"box", "obj_pos", "obj_neg", "cls", "total"}
    weights = tmp_path / "model.weights"
    done = run_script("scripts/export_darknet_weights.py", str(run_dir / "last.pt"), str(weights))
    assert done.returncode == 2 and "model.decode" in done.stderr
    done = run_script("scripts/export_darknet_weights.py", str(run_dir / "last.pt"), str(weights), "--layers", "52")
    assert done.returncode == 0, done.stderr


def test_resume_refuses_a_changed_config(shapes_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(shapes_root, tmp_path, max_steps=4, epochs=1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(cfg, run_dir)
    changed = tiny_config(shapes_root, tmp_path, "paper", max_steps=4, epochs=1)
    with pytest.raises(ResumeError, match="different config"):
        train(changed, run_dir, resume=run_dir / "last.pt")


def test_training_starts_from_darknet_weights(shapes_root: Path, tmp_path: Path) -> None:
    """model.pretrained: the run starts from the .weights file (the first step's burn-in lr is 0, so the
    convolutions are still the file's after it); a file that does not fit stops the run before any step."""
    from yolo_loss.darknet.weights import DarknetWeightsError, save_darknet_weights
    from yolo_loss.data.shapes import SHAPE_CLASSES
    from yolo_loss.model import YOLOv3

    source = YOLOv3(len(SHAPE_CLASSES), width=0.25, depth=0.33)
    save_darknet_weights(source, tmp_path / "init.weights")
    cfg = tiny_config(shapes_root, tmp_path, max_steps=1, epochs=1)
    cfg.model.pretrained = str(tmp_path / "init.weights")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(cfg, run_dir)
    trained = load_checkpoint(run_dir / "last.pt")["model"]
    for name, value in source.state_dict().items():
        if name.endswith("conv.weight") or name.endswith("pred.bias"):
            assert torch.equal(trained[name], value), name

    cfg.model.pretrained_layers = 0
    save_darknet_weights(YOLOv3(80, width=0.25, depth=0.33), tmp_path / "coco.weights")
    cfg.model.pretrained = str(tmp_path / "coco.weights")
    (tmp_path / "run2").mkdir()
    with pytest.raises(DarknetWeightsError, match="coco.weights does not fit this model"):
        train(cfg, tmp_path / "run2")
    assert not (tmp_path / "run2" / "last.pt").exists()


def shifted_class_logits(state: dict, shift: float, num_classes: int) -> dict:
    """A model state dict with ``shift`` added to the bias of every class logit of the three output convolutions."""
    state = {name: value.clone() for name, value in state.items()}
    for name, bias in state.items():
        if name.endswith("pred.bias"):
            per_anchor = bias.view(-1, 5 + num_classes)  # tx, ty, tw, th, to, tc_0 .. tc_{C-1} per anchor
            per_anchor[:, 5:] += shift
    return state


def same_detections(plain: list[dict], shifted: list[dict]) -> bool:
    """Whether two evaluations' detections are the same ones, in any order: each of ``plain`` matched to one of
    ``shifted`` of its image and class with a box within 1e-3 and a score within 1e-5. Not in order, since the
    float rounding that a shift leaves (about 1e-9 here) can swap two detections of near-equal score."""
    if len(plain) != len(shifted):
        return False
    left = list(shifted)
    for a in plain:
        match = next((i for i, b in enumerate(left)
                      if (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
                      and all(abs(x - y) <= 1e-3 for x, y in zip(a["bbox"], b["bbox"]))
                      and abs(a["score"] - b["score"]) <= 1e-5), None)
        if match is None:
            return False
        left.pop(match)
    return True


@pytest.mark.parametrize("loss_cls, invariant", [("ce", True), ("poly1", True), ("bce", False)])
def test_a_softmax_model_is_scored_with_its_softmax(loss_cls: str, invariant: bool, shapes_root: Path,
                                                    tmp_path: Path) -> None:
    """What is trained is what is evaluated. A softmax over the classes ignores a constant added to all class
    logits; sigmoids do not. So shifting every class bias of a trained ``cls: ce`` (or ``poly1``) checkpoint by +3
    leaves its detections as they were (scores to 1e-5; :func:`same_detections`), and the same shift changes a
    ``cls: bce`` model's."""
    cfg = tiny_config(shapes_root, tmp_path, epochs=4)
    cfg.loss.cls = loss_cls
    cfg.eval.conf_thresh = 1e-4  # a model of 16 steps scores low: keep enough detections to compare
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(cfg, run_dir)
    state = load_checkpoint(run_dir / "last.pt")
    dataset = build_dataset(cfg.data, "val", train=False)
    loader = build_loader(dataset, cfg.eval.batch_size, shuffle=False, workers=0, seed=0)
    model = build_model(cfg.model, dataset.num_classes)
    detections = []
    for shift in (0.0, 3.0):
        model.load_state_dict(shifted_class_logits(state["model"], shift, dataset.num_classes))
        _, _, evaluator = evaluate(model, loader, build_head(cfg, dataset.num_classes), None, cfg,
                                   torch.device("cpu"))
        detections.append(evaluator.results())
    plain, shifted = detections
    assert len(plain) > 20
    assert same_detections(plain, shifted) == invariant


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python ARGS`` in a new process, in the repository (where the commands run in this process, ``run_script``,
    would not show what the test is about)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_train_and_eval_command_lines(shapes_root: Path, tmp_path: Path, run_script: RunScript) -> None:
    """train.py writes its run folder; eval.py on the checkpoint reproduces the metrics training reported."""
    config_file = tmp_path / "tiny.yaml"
    data = config_to_dict(tiny_config(shapes_root, tmp_path / "runs", epochs=2, ema=True))
    config_file.write_text(yaml.safe_dump(data))
    # train.py and eval.py as a user runs them, each a new process (the allocator's re-exec included); the
    # commands after them run in this process (run_script)
    done = run_cli("train.py", "--config", str(config_file), "--set", "train.lr=0.005")
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "runs" / "tiny"
    assert "tensorboard --logdir" in done.stdout and "| AP | AP50 |" in done.stdout
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"] == 0.005
    assert "train.lr=0.005" in (run_dir / "command.txt").read_text()
    trained = json.loads((run_dir / "metrics.json").read_text())["metrics"]

    out = tmp_path / "eval"
    done = run_cli("eval.py", "--checkpoint", str(run_dir / "last.pt"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    evaluated = json.loads((out / "eval_metrics.json").read_text())
    assert evaluated == pytest.approx(trained, abs=1e-9)
    detections = json.loads((out / "detections.json").read_text())
    assert all(set(d) == {"image_id", "category_id", "bbox", "score"} for d in detections)

    # Exported to darknet's format and evaluated from it (--config), the same weights give the same metrics.
    weights = tmp_path / "tiny.weights"
    done = run_script("scripts/export_darknet_weights.py", str(run_dir / "last.pt"), str(weights))
    assert done.returncode == 0, done.stderr
    done = run_script("eval.py", "--config", str(config_file), "--set", f"model.pretrained={weights}",
                      "--out", str(tmp_path / "eval_darknet"))
    assert done.returncode == 0, done.stderr
    assert "loaded all 47 of 47 convolutions" in done.stdout
    assert json.loads((tmp_path / "eval_darknet" / "eval_metrics.json").read_text()) == pytest.approx(trained,
                                                                                                      abs=1e-9)
    done = run_script("scripts/export_darknet_weights.py", str(run_dir / "last.pt"), str(weights), "--layers", "24")
    done = run_script("eval.py", "--config", str(config_file), "--set", f"model.pretrained={weights}")
    assert done.returncode == 2 and "holds 24 of the model's 47 convolutions: a backbone" in done.stderr

    # a second run of the same config gets a new folder, never the old one
    done = run_script("train.py", "--config", str(config_file), "--set", "train.max_steps=1")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "tiny-1" / "last.pt").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["metrics"] == trained


@pytest.mark.parametrize("override, named", [
    ("loss.xy=bec", "loss.xy"),
    ("train.lr=-1", "train.lr"),
    ("loss.focal_alpha=2", "loss.focal_alpha"),
    ("trian.epochs=1", "did you mean 'train'"),
])
def test_train_command_line_rejects_bad_config_with_status_2(override: str, named: str,
                                                             run_script: RunScript) -> None:
    done = run_script("train.py", "--config", "configs/shapes_nano.yaml", "--set", override)
    assert done.returncode == 2
    assert named in done.stderr and "Traceback" not in done.stderr


def test_train_command_line_names_a_missing_data_folder(tmp_path: Path, run_script: RunScript) -> None:
    done = run_script("train.py", "--config", "configs/coco128.yaml", "--set", f"data.root={tmp_path / 'nowhere'}",
                      f"train.out_dir={tmp_path}")
    assert done.returncode == 2
    assert "nowhere" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "coco128").exists() and not list(tmp_path.iterdir())  # no stub folder left


def test_a_run_that_fails_before_training_leaves_no_folder(shapes_root: Path, tmp_path: Path,
                                                           run_script: RunScript) -> None:
    """A missing data folder stops train.py before its first step: the folder it created goes, so the next run
    gets the name (not tiny-1); a --run-dir that existed before, or a study's folder, is never removed."""
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(config_to_dict(tiny_config(shapes_root, tmp_path / "runs", epochs=1))))
    missing = ("--set", "data.format=coco", f"data.root={tmp_path / 'nowhere'}")
    for _ in range(2):
        done = run_script("train.py", "--config", str(config_file), *missing)
        assert done.returncode == 2 and "nowhere" in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert f"run folder: {tmp_path / 'runs' / 'tiny'}\n" in done.stdout  # the name again, not tiny-1
        assert not list((tmp_path / "runs").iterdir())
    given = tmp_path / "given"  # --run-dir: removed if train.py created it, kept if it existed
    done = run_script("train.py", "--config", str(config_file), "--run-dir", str(given), *missing)
    assert done.returncode == 2 and not given.exists()
    given.mkdir()
    done = run_script("train.py", "--config", str(config_file), "--run-dir", str(given), *missing)
    assert done.returncode == 2 and sorted(path.name for path in given.iterdir()) == ["command.txt", "config.yaml",
                                                                                     "status.json"]
    failed = RunStatus.read(given)  # what a study runner reads: the reason, not the printed text
    assert failed.state == "failed" and failed.exit_status == 2 and "nowhere: data.root does not exist" in failed.reason

    done = run_script("train.py", "--config", str(config_file), "--set", "train.max_steps=1")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "tiny" / "metrics.json").exists() and not (tmp_path / "runs" / "tiny-1").exists()
    # a resumed run that fails keeps its folder, though train.py's config.yaml and command.txt are all it wrote
    done = run_script("train.py", "--config", str(config_file), "--resume", str(tmp_path / "runs" / "tiny" / "last.pt"),
                      *missing)
    assert done.returncode == 2 and (tmp_path / "runs" / "tiny" / "last.pt").exists()


def test_eval_command_line_names_a_broken_checkpoint(tmp_path: Path, run_script: RunScript) -> None:
    broken = tmp_path / "best.pt"
    broken.write_bytes(b"not a checkpoint")
    done = run_script("eval.py", "--checkpoint", str(broken))
    assert done.returncode == 2
    assert str(broken) in done.stderr and "Traceback" not in done.stderr


def test_bad_data_trains_under_skip_and_stops_under_error(tmp_path: Path, run_script: RunScript) -> None:
    """The COCO set of tests/data/test_data.py with one of each bad input: training under skip drops and counts them
    (the list in the run folder); under error it stops naming the first; eval.py stops by default."""
    from test_data import build_bad_coco

    from yolo_loss.data import DataError

    root = build_bad_coco(tmp_path / "bad")
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump({
        "model": {"width": 0.25, "depth": 0.33},
        "data": {"format": "coco", "root": str(root), "img_size": 64, "train_images": "images/val",
                 "train_annotations": "annotations/val.json", "val_images": "images/val",
                 "val_annotations": "annotations/val.json"},
        "train": {"epochs": 1, "batch_size": 1, "eval_points": 1, "eval_at_start": False, "device": "cpu",
                  "out_dir": str(tmp_path / "runs")},
        "name": "bad"}))
    done = run_script("train.py", "--config", str(config_file))
    assert done.returncode == 0, done.stderr
    assert "duplicate_image_id: 2" in done.stdout and "bad_box: 4" in done.stdout, done.stdout  # the summary
    listed = (tmp_path / "runs" / "bad" / "bad_inputs.txt").read_text().splitlines()
    kinds = [line.split("\t")[0] for line in listed]
    assert {kind: kinds.count(kind) for kind in set(kinds)} == {
        "missing_image": 1, "empty_image": 1, "truncated_image": 1, "corrupt_image": 1, "bad_box": 4,
        "clipped_box": 1, "unknown_category": 1, "duplicate_image_id": 2}
    with pytest.raises(DataError, match=r"twin_a\.jpg: image id 30 in val\.json is shared by 2 images"):
        cfg = load_config(config_file, ["data.on_bad=error"])
        train(cfg, tmp_path / "runs")
    done = run_script("eval.py", "--checkpoint", str(tmp_path / "runs" / "bad" / "last.pt"))
    assert done.returncode == 2 and "is shared by 2 images" in done.stderr and "Traceback" not in done.stderr
    done = run_script("eval.py", "--checkpoint", str(tmp_path / "runs" / "bad" / "last.pt"), "--set",
                      "data.on_bad=skip")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("config, folder", [("coco128", "coco128"), ("voc_coco128", "voc_coco128")])
def test_real_subsets_train_and_evaluate(config: str, folder: str, tmp_path: Path) -> None:
    if not (SHARED_DATA / folder).is_dir():
        pytest.skip(f"{SHARED_DATA / folder} is absent (the real subsets live in ../shared/data)")
    cfg = load_config(REPO / "configs" / f"{config}.yaml",
                      ["train.max_steps=2", "train.epochs=1", "train.batch_size=4", "data.img_size=128",
                       "data.cache=false", "train.device=cpu", f"train.out_dir={tmp_path}"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = train(cfg, run_dir)
    assert result.steps == 2
    assert all(torch.isfinite(torch.tensor(scalar_series(run_dir, "loss/total"))))
    assert all(0.0 <= result.metrics[key] <= 1.0 for key in METRIC_KEYS)


def test_resume_names_the_changed_keys_and_accepts_keys_added_since(shapes_root: Path, tmp_path: Path) -> None:
    """A changed value is refused with its key named; a checkpoint whose config predates keys (absent there) that
    are at their defaults here resumes, as a checkpoint of an older version would, and still refuses a change."""
    from yolo_loss.checkpoint import load_checkpoint, save_checkpoint

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(tiny_config(shapes_root, tmp_path, max_steps=4, epochs=1), run_dir)
    changed = tiny_config(shapes_root, tmp_path, max_steps=4, epochs=1)
    changed.loss.ignore_thresh = 0.6
    with pytest.raises(ResumeError, match=r"differing: loss\.ignore_thresh\)"):
        train(changed, run_dir, resume=run_dir / "last.pt")

    saved = load_checkpoint(run_dir / "last.pt", map_location="cpu")
    del saved["config"]["loss"]["assign"], saved["config"]["loss"]["tal_topk"]  # as written before those keys
    saved["config_hash"] = "0123456789ab"
    save_checkpoint(saved, run_dir / "older.pt")
    train(tiny_config(shapes_root, tmp_path, max_steps=4, epochs=1), run_dir, resume=run_dir / "older.pt")
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 4  # resumed at its step 4, none added
    with pytest.raises(ResumeError, match=r"differing: loss\.ignore_thresh\)"):
        train(changed, run_dir, resume=run_dir / "older.pt")
