"""Custom classes (``data.classes``): any VOC-layout folder with its own class names, COCO narrowed to some
categories, the checks that stop a split whose classes do not fit the data, and the class names reaching the
checkpoint, TensorBoard and eval.py.

The small sets are written into tmp_path (random-noise JPEGs, a year folder named ``CUSTOM``, classes 'widget'
and 'gadget'); the BCCD tests read ``../shared/data/bccd`` (or ``$YOLO_LOSS_SHARED_DATA/bccd``) and skip, saying
why, when it is absent. Nothing here downloads.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
import yaml

from yolo_loss.config.load import ConfigError, config_from_dict, load_config
from yolo_loss.config.schema import DataConfig
from yolo_loss.data import VOC_CLASSES, DataError, build_dataset, read_coco, read_voc

from test_data import coco_folder, voc_xml, write_jpeg  # noqa: F401  (coco_folder is a fixture)

if TYPE_CHECKING:
    from conftest import RunScript

REPO = Path(__file__).resolve().parents[2]


def write_custom_voc(root: Path, splits: dict[str, dict[str, list[tuple[str, tuple[int, int, int, int]]]]],
                     size: tuple[int, int] = (64, 48)) -> Path:
    """``splits``: split -> stem -> objects ``(name, 1-based xmin, ymin, xmax, ymax)``, under ``root/CUSTOM``."""
    year = root / "CUSTOM"
    (year / "Annotations").mkdir(parents=True, exist_ok=True)
    (year / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for split, images in splits.items():
        for index, (stem, objects) in enumerate(images.items()):
            write_jpeg(year / "JPEGImages" / f"{stem}.jpg", *size, seed=index)
            (year / "Annotations" / f"{stem}.xml").write_text(
                voc_xml(*size, [(name, 0, box) for name, box in objects]))
        (year / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in images))
    return root


def widget_objects(index: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    return [("widget", (2 + index, 3, 30 + index, 33)), ("gadget", (28, 10 + index, 60, 44))]


@pytest.fixture()
def widgets(tmp_path: Path) -> Path:
    """train: 8 images with a widget and a gadget each, one also with a 'gizmo'; val: 4 images."""
    train = {f"t{i}": widget_objects(i) for i in range(8)}
    train["t3"] = [*train["t3"], ("gizmo", (40, 2, 50, 12))]
    return write_custom_voc(tmp_path / "widgets", {"train": train,
                                                   "val": {f"v{i}": widget_objects(i) for i in range(4)}})


def voc_cfg(root: Path, **kw: object) -> DataConfig:
    return DataConfig(format="voc", root=str(root), train_sets=["CUSTOM/train"], val_sets=["CUSTOM/val"],
                      img_size=64, **kw)


# ---------------------------------------------------------------------------------------------- the config key


@pytest.mark.parametrize("classes, message", [
    ("widget", "data.classes: expected list[str], got str"),
    (["widget", 3], "data.classes.1: expected str, got int"),
    (["widget", ""], "data.classes: class names must be non-empty, without leading or trailing spaces, got ''"),
    (["widget", " gadget"], "got ' gadget'"),
    (["widget", "gadget", "widget"], "data.classes: each class must be listed once; listed more than once: 'widget'"),
])
def test_classes_must_be_distinct_non_empty_names(tmp_path: Path, classes: object, message: str) -> None:
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump({"data": {"format": "voc", "classes": classes}}))
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        load_config(config_file)
    assert "bad.yaml" in str(error.value) and error.value.key.startswith("data.classes")


def test_classes_are_refused_for_the_synthetic_shapes_and_max_unknown_is_a_fraction() -> None:
    with pytest.raises(ConfigError, match=r"data\.classes: the synthetic shapes have their own classes"):
        config_from_dict({"data": {"format": "shapes", "classes": ["ellipse"]}})
    with pytest.raises(ConfigError, match=r"data\.max_unknown: must be in \[0, 1\], got 1\.5"):
        config_from_dict({"data": {"format": "voc", "max_unknown": 1.5}})
    cfg = config_from_dict({"data": {"format": "voc", "classes": ["RBC", "WBC", "Platelets"]}})
    assert cfg.data.classes == ["RBC", "WBC", "Platelets"] and cfg.data.max_unknown == 0.5
    assert config_from_dict({}).data.classes == []  # the default: the format's own classes


# ---------------------------------------------------------------------------------------------- VOC


def test_voc_reads_the_listed_classes_in_their_order(widgets: Path) -> None:
    """Class index i is data.classes[i], category id i + 1; the 'gizmo' is bad input, counted under skip, and stops
    under error naming the file, the object and the class."""
    result = read_voc(widgets, ["CUSTOM/train"], classes=["gadget", "widget"])
    assert result.class_names == ["gadget", "widget"] and result.category_ids == [1, 2]
    assert result.records[0].labels.tolist() == [1, 0]  # widget, gadget in the file
    assert result.bad_input.counts == {"unknown_class": 1} and result.unknown_classes == {"gizmo": 1}
    assert result.objects_read == 17
    (entry,) = result.bad_input.entries
    assert entry.path.endswith("CUSTOM/Annotations/t3.xml")
    assert entry.detail == "object 3 ('gizmo'): not in data.classes (gadget, widget)"
    with pytest.raises(DataError, match=r"CUSTOM/Annotations/t3\.xml: object 3 \('gizmo'\): not in data\.classes "
                                        r"\(gadget, widget\) \(data\.on_bad=error"):
        read_voc(widgets, ["CUSTOM/train"], classes=["gadget", "widget"], on_bad="error")
    with pytest.raises(DataError, match=r"t0\.xml: object 1 \('widget'\): not in data\.classes \(Widget, gadget\); "
                                        r"did you mean 'Widget'\? \(names are case-sensitive\)"):
        read_voc(widgets, ["CUSTOM/train"], classes=["Widget", "gadget"], on_bad="error")
    default = read_voc(widgets, ["CUSTOM/val"])
    assert default.class_names == list(VOC_CLASSES) and default.category_ids == list(range(1, 21))


def test_voc_default_classes_name_the_way_out(tmp_path: Path) -> None:
    root = write_custom_voc(tmp_path / "dogs", {"train": {"a": [("Dog", (2, 2, 20, 20))]}})
    with pytest.raises(DataError, match=r"a\.xml: object 1 \('Dog'\): not one of the 20 VOC classes \(data\.classes is "
                                        r"not set, so the VOC classes are read; list the data set's class names in "
                                        r"data\.classes\); did you mean 'dog'\?"):
        read_voc(root, ["CUSTOM/train"], on_bad="error")


def test_a_set_of_other_classes_stops_instead_of_training_on_nothing(widgets: Path) -> None:
    """The issue's case: without data.classes every box is an unknown VOC class; the split stops, naming the cause
    and the config that fixes it, in training and in validation, under both policies."""
    message = (r"training set \(data\.train_sets CUSTOM/train under .*widgets\): no box to train on: all 17 "
               r"objects were dropped for their class \('gadget' 8, 'widget' 8, 'gizmo' 1\); data\.classes is not "
               r"set, so only the 20 VOC classes are read: list the data set's class names in the config \(their "
               r"order is the model's\), e\.g\. data\.classes: \[widget, gadget, gizmo\]")
    with pytest.raises(DataError, match=message):
        build_dataset(voc_cfg(widgets), "train", train=True)
    with pytest.raises(DataError, match=r"validation set \(data\.val_sets CUSTOM/val .*no box to evaluate"):
        build_dataset(voc_cfg(widgets), "val", train=False)
    with pytest.raises(DataError, match=r"t0\.xml: object 1 \('widget'\): not one of the 20 VOC classes"):
        build_dataset(voc_cfg(widgets, on_bad="error"), "train", train=True)
    train = build_dataset(voc_cfg(widgets, classes=["widget", "gadget"]), "train", train=True)
    assert train.class_names == ["widget", "gadget"] and train.num_classes == 2
    assert train.bad_input.counts == {"unknown_class": 1}
    assert "VOC class name not in data.classes" in train.bad_input.summary()


def test_more_than_max_unknown_of_the_objects_dropped_stops(tmp_path: Path) -> None:
    """Exactly half dropped for their class trains; more than half stops; data.max_unknown: 1 is the way out for a
    deliberate subset."""
    def images(prefix: str, kept: int, dropped: int) -> dict:
        return {f"{prefix}{i}": [("widget" if i < kept else "gizmo", (2, 2, 20, 20))] for i in range(kept + dropped)}

    root = write_custom_voc(tmp_path / "half", {"train": images("t", 4, 4), "val": images("v", 3, 4)})
    cfg = voc_cfg(root, classes=["widget"])
    assert len(build_dataset(cfg, "train", train=True)) == 8
    with pytest.raises(DataError, match=r"validation set .*: 4 of its 7 objects \(57%\) were dropped for their class "
                                        r"\('gizmo' 4\), more than data\.max_unknown=0\.5 allows; add the missing "
                                        r"names to data\.classes \(now widget\), or correct them in the annotations; "
                                        r"or set data\.max_unknown: 1 to use the listed classes only"):
        build_dataset(cfg, "val", train=False)
    assert len(build_dataset(voc_cfg(root, classes=["widget"], max_unknown=1.0), "val", train=False)) == 7


def test_a_listed_class_without_training_boxes_stops(widgets: Path) -> None:
    """A misspelt name drops a class's objects and leaves the listed class empty: it stops even where the share of
    unknown classes alone would not (below max_unknown, or max_unknown: 1)."""
    with pytest.raises(DataError, match=r"data\.classes lists 'gadgets', but no box of the training set has that "
                                        r"class: the model could never learn it; objects dropped for their class: "
                                        r"'gadget' 8, 'gizmo' 1 \(a spelling or case difference\?\)"):
        build_dataset(voc_cfg(widgets, classes=["widget", "gadgets"], max_unknown=1.0), "train", train=True)


def test_no_box_left_after_bad_input_names_the_counts(tmp_path: Path) -> None:
    root = write_custom_voc(tmp_path / "zero", {"train": {"a": [("widget", (5, 5, 5, 5))]}})
    with pytest.raises(DataError, match=r"no box to train on: none of its 1 objects is left, dropped as bad input "
                                        r"or difficult \(bad input: bad_box 1\)"):
        build_dataset(voc_cfg(root, classes=["widget"]), "train", train=True)
    empty = write_custom_voc(tmp_path / "empty", {"train": {"a": []}})
    with pytest.raises(DataError, match=r"no box to train on: its annotations hold no object"):
        build_dataset(voc_cfg(empty, classes=["widget"]), "train", train=True)


# ---------------------------------------------------------------------------------------------- COCO


def test_coco_classes_narrow_the_categories_by_name(coco_folder: Path) -> None:  # noqa: F811
    """The fixture's categories are car (3), boat (7), zebra (12); boat is only a crowd. Listed classes keep their
    order and ids; the other categories' annotations are left out, not bad input, under both policies."""
    files = (coco_folder / "annotations" / "val.json", coco_folder / "images" / "val")
    default = read_coco(*files)
    assert default.class_names == ["car", "boat", "zebra"] and default.category_ids == [3, 7, 12]
    narrowed = read_coco(*files, classes=["zebra", "car"], on_bad="error")
    assert narrowed.class_names == ["zebra", "car"] and narrowed.category_ids == [12, 3]
    assert narrowed.left_out == 1 and narrowed.bad_input.counts == {"clipped_box": 1}
    image_5 = next(r for r in narrowed.records if r.image_id == 5)
    assert image_5.labels.tolist() == [0, 1] and not image_5.difficult.any()
    with pytest.raises(DataError, match=r"val\.json: data\.classes names 'Zebra', which is not a category of the "
                                        r"file; did you mean 'zebra'\? \(its categories: car, boat, zebra\)"):
        read_coco(*files, classes=["Zebra"])
    cfg = DataConfig(format="coco", root=str(coco_folder), val_images="images/val",
                     val_annotations="annotations/val.json", img_size=32, classes=["car", "zebra"])
    val = build_dataset(cfg, "val", train=False)
    assert val.class_names == ["car", "zebra"]
    assert [c["name"] for c in val.ground_truth_coco.loadCats(val.ground_truth_coco.getCatIds())] == ["car", "zebra"]


# ---------------------------------------------------------------------------------------------- train.py, eval.py


@pytest.mark.slow
def test_train_and_evaluate_a_custom_voc_set_through_the_command_lines(widgets: Path, tmp_path: Path,
                                                                        run_script: RunScript) -> None:
    """A few steps of train.py on the widgets with data.classes, then eval.py: the class names reach the
    checkpoint, the TensorBoard per-class AP and PR curves and eval.py's table; the 'gizmo' is counted under skip and
    stops the run under error, naming the file and the class; without data.classes the run stops at once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config_file = tmp_path / "widgets.yaml"
    config_file.write_text(yaml.safe_dump({
        "_base_": str(REPO / "configs" / "presets" / "darknet.yaml"),
        "name": "widgets",
        "model": {"width": 0.25, "depth": 0.33},
        "data": {"format": "voc", "root": str(widgets), "train_sets": ["CUSTOM/train"], "val_sets": ["CUSTOM/val"],
                 "classes": ["widget", "gadget"], "img_size": 64, "workers": 0},
        "train": {"epochs": 1, "batch_size": 4, "lr": 0.01, "burn_in": 1, "eval_points": 1, "eval_at_start": False,
                  "log_images": 2, "device": "cpu", "out_dir": str(tmp_path / "runs")},
        "eval": {"batch_size": 4}}))
    done = run_script("train.py", "--config", str(config_file))
    assert done.returncode == 0, done.stderr
    assert "unknown_class: 1" in done.stdout and "t3.xml" in done.stdout
    run_dir = tmp_path / "runs" / "widgets"
    (listed,) = (run_dir / "bad_inputs.txt").read_text().splitlines()
    assert listed.startswith("unknown_class\t") and listed.endswith("t3.xml\tobject 3 ('gizmo'): not in data.classes "
                                                                  "(widget, gadget)")
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 2
    checkpoint = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["class_names"] == ["widget", "gadget"] and checkpoint["category_ids"] == [1, 2]
    assert checkpoint["config"]["data"]["classes"] == ["widget", "gadget"]

    events = EventAccumulator(str(run_dir / "val"), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"metrics/AP50/widget", "metrics/AP50/gadget"} <= set(tags["scalars"])
    assert {"pr/widget", "pr/gadget"} <= set(tags["tensors"])
    assert any(tag.startswith("images/val_") for tag in tags["images"])

    done = run_script("eval.py", "--checkpoint", str(run_dir / "last.pt"), "--out", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr
    assert re.search(r"\| widget \| \d\.\d{3} \| 4 \|", done.stdout) and re.search(r"\| gadget \| \d\.\d{3} \| 4 \|",
                                                                                  done.stdout), done.stdout
    evaluated = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert evaluated == pytest.approx(json.loads((run_dir / "metrics.json").read_text())["metrics"], abs=1e-9)

    done = run_script("train.py", "--config", str(config_file), "--set", "data.on_bad=error")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.search(r"error: .*CUSTOM/Annotations/t3\.xml: object 3 \('gizmo'\): not in data\.classes", done.stderr)
    done = run_script("train.py", "--config", str(config_file), "--set", "data.classes=[]")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no box to train on" in done.stderr and "e.g. data.classes: [widget, gadget, gizmo]" in done.stderr


def test_eval_refuses_a_checkpoint_of_other_classes(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO))
    from eval import check_class_names

    check_class_names(["widget", "gadget"], ["widget", "gadget"], tmp_path / "x.pt")
    check_class_names(None, ["widget"], tmp_path / "x.pt")  # a checkpoint without names: nothing to compare
    with pytest.raises(DataError, match=r"x\.pt was trained on the classes widget, gadget; the evaluation set is "
                                        r"read with gadget, widget"):
        check_class_names(["widget", "gadget"], ["gadget", "widget"], tmp_path / "x.pt")


# ---------------------------------------------------------------------------------------------- BCCD (real data)


def bccd_root() -> Path:
    shared = Path(os.environ.get("YOLO_LOSS_SHARED_DATA", REPO.parent / "shared" / "data"))
    root = shared / "bccd"
    if not (root / "BCCD" / "Annotations").is_dir():
        pytest.skip(f"BCCD not found at {root} (set YOLO_LOSS_SHARED_DATA to the shared/data folder, or fetch it "
                    f"with scripts/download_bccd.sh and point YOLO_LOSS_SHARED_DATA at its data folder)")
    return root


def test_bccd_counts_and_its_two_zero_size_boxes() -> None:
    """364 images, 4888 objects in the files; the two zero-size boxes (xmin = xmax, ymin = ymax) are bad boxes,
    named, not trained on; nothing else is bad."""
    root = bccd_root()
    sets = {"BCCD/train": (205, 2805), "BCCD/val": (87, 1138), "BCCD/test": (72, 945)}
    total = {}
    for image_set, (images, objects) in sets.items():
        result = read_voc(root, [image_set], classes=["RBC", "WBC", "Platelets"])
        assert len(result.records) == images and result.objects_read == objects, image_set
        total[image_set] = result
    everything = read_voc(root, list(sets), classes=["RBC", "WBC", "Platelets"])
    assert everything.objects_read == 4888 and sum(r.num_boxes for r in everything.records) == 4886
    assert everything.bad_input.counts == {"bad_box": 2}
    assert sorted(Path(e.path).name for e in everything.bad_input.entries) == ["BloodImage_00338.xml",
                                                                              "BloodImage_00343.xml"]
    assert all("zero width or height" in e.detail for e in everything.bad_input.entries)
    labels = np.concatenate([r.labels for r in everything.records])
    assert np.bincount(labels).tolist() == [4153, 372, 361]  # RBC (less the two zero-size boxes), WBC, Platelets


def test_bccd_config_reads_train_and_val_and_the_voc_default_stops() -> None:
    root = bccd_root()
    cfg = load_config(REPO / "configs" / "bccd.yaml", [f"data.root={root}", "data.cache=false"])
    assert cfg.data.classes == ["RBC", "WBC", "Platelets"] and cfg.data.train_sets == ["BCCD/train"]
    train = build_dataset(cfg.data, "train", train=True)
    val = build_dataset(cfg.data, "val", train=False)
    assert (len(train), len(val)) == (205, 87) and train.class_names == val.class_names == ["RBC", "WBC", "Platelets"]
    with pytest.raises(DataError, match=r"no box to train on: all 2805 objects were dropped for their class .*"
                                        r"e\.g\. data\.classes: \[.*\]"):
        build_dataset(DataConfig(format="voc", root=str(root), train_sets=["BCCD/train"]), "train", train=True)
