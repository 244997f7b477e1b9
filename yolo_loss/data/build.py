"""The data set a config describes: the synthetic shapes (generated once), COCO or VOC, as one
:class:`~yolo_loss.data.dataset.DetectionDataset`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from yolo_loss.config.schema import DataConfig
from yolo_loss.data.bad_input import BadInputReport, DataError
from yolo_loss.data.coco import read_coco
from yolo_loss.data.dataset import DetectionDataset
from yolo_loss.data.records import AnnotationSet, ImageRecord
from yolo_loss.data.shapes import shapes_dataset
from yolo_loss.data.voc import read_voc


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: {what} does not exist")
    return path


def build_dataset(cfg: DataConfig, split: str, *, train: bool) -> DetectionDataset:
    """The ``split`` (``"train"`` or ``"val"``) of the data set ``cfg`` describes.

    - ``shapes``: generated (once, cached) under ``cfg.root`` by :func:`yolo_loss.data.shapes.shapes_dataset`;
      reads ``images/<split>`` and ``annotations/instances_<split>.json`` of the generated folder.
    - ``coco``: ``cfg.root / cfg.<split>_images`` and ``cfg.root / cfg.<split>_annotations``; the categories
      named in ``cfg.classes`` when given.
    - ``voc``: ``cfg.train_sets`` or ``cfg.val_sets`` under ``cfg.root`` (the VOCdevkit folder, or any folder of
      VOC-layout folders), the classes ``cfg.classes`` (default: the 20 VOC classes).

    ``train=True`` turns on ``cfg.augment``; otherwise the deterministic letterbox. Bad input follows
    ``cfg.on_bad``; the dataset's ``bad_input`` holds what the reader and the dataset dropped. A split whose
    classes do not fit the data stops (:func:`check_split`): it never trains or evaluates on nothing.

    Raises:
        DataError: a data path that does not exist (named), bad input under ``on_bad=error``, or a split that
            :func:`check_split` refuses.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    report = BadInputReport(cfg.on_bad)
    root = Path(cfg.root)
    if cfg.format == "shapes":
        select = split == "val" and cfg.shapes.val_split == "select"  # a study's selection split
        folder = shapes_dataset(cfg.shapes, root, select=select)
        name = "select" if select else split
        annotation_file = folder / "annotations" / f"instances_{name}.json"
        annotations = read_coco(annotation_file, folder / "images" / name, report=report)
        source = str(annotation_file)
    elif cfg.format == "coco":
        _existing(root, "data.root")
        images, annotation_file = ((cfg.train_images, cfg.train_annotations) if split == "train"
                                   else (cfg.val_images, cfg.val_annotations))
        annotations = read_coco(root / annotation_file, root / images, classes=cfg.classes or None, report=report)
        source = str(root / annotation_file)
    elif cfg.format == "voc":
        _existing(root, "data.root")
        image_sets = cfg.train_sets if split == "train" else cfg.val_sets
        annotations = read_voc(root, image_sets, classes=cfg.classes or None, report=report)
        source = f"data.{split}_sets {', '.join(image_sets)} under {root}"
    else:
        raise ValueError(f"unknown data.format {cfg.format!r} (valid: shapes, coco, voc)")
    check_split(cfg, split, source, annotations, annotations.records)  # before the image files are opened
    dataset = DetectionDataset(annotations.records, annotations.class_names, annotations.category_ids,
                               img_size=cfg.img_size, augment=cfg.augment if train else None, cache=cfg.cache,
                               on_bad=cfg.on_bad, bad_input=report)
    check_split(cfg, split, source, annotations, dataset.records)  # and without the images dropped as bad
    return dataset


def _named_counts(counts: dict[str, int], limit: int = 8) -> str:
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    shown = ", ".join(f"{name!r} {count}" for name, count in ordered[:limit])
    return shown + (f", ... ({len(ordered)} names)" if len(ordered) > limit else "")


def _class_way_out(cfg: DataConfig, annotations: AnnotationSet) -> str:
    """What to change when objects were dropped for their class."""
    if cfg.format != "voc":
        return ("the annotations name category ids that the file's 'categories' list does not have: add those "
                "categories to the file, or fix the ids")
    if not cfg.classes:
        names = list(annotations.unknown_classes)  # in the order first met
        example = yaml.safe_dump(names[:10], default_flow_style=True, allow_unicode=True).strip()
        return (f"data.classes is not set, so only the 20 VOC classes are read: list the data set's class names "
                f"in the config (their order is the model's), e.g. data.classes: {example}"
                + (f" and {len(names) - 10} more" if len(names) > 10 else ""))
    return (f"add the missing names to data.classes (now {', '.join(cfg.classes)}), or correct them in the "
            f"annotations")


def check_split(cfg: DataConfig, split: str, source: str, annotations: AnnotationSet,
                records: Sequence[ImageRecord]) -> None:
    """Refuse a split that would train or evaluate on nothing, or on a fraction of its objects: ``records``, what
    is left of ``annotations`` (all of them, or those the dataset kept after checking the image files).

    It stops (``DataError``, under both ``data.on_bad`` policies), naming the split, the cause and the way out:

    - when more than ``cfg.max_unknown`` (default one half) of the objects in the split's annotations were
      dropped for their class (a VOC name not in ``data.classes``, a COCO category id not in the file). In a set
      whose classes are listed an unknown name is a rare slip (VOC's, COCO's and BCCD's files have none); a class list
      that does not fit the data (the VOC default on a custom set, a misspelt list) drops whole classes, usually most
      objects. ``data.max_unknown: 1`` turns this off, for a deliberate subset of a VOC set's classes;
    - when no box is left to train on (or to score: difficult boxes are neither), whatever the cause;
    - in training, when a class that ``data.classes`` lists has no box left: the model could never learn it,
      and it is the sign of a misspelt name whose objects a smaller share of unknown classes hides.
    """
    what = f"{'training' if split == 'train' else 'validation'} set ({source})"
    read, unknown = annotations.objects_read, annotations.unknown_total
    dropped = f"dropped for their class ({_named_counts(annotations.unknown_classes)})"
    boxes = np.bincount(np.concatenate([r.labels[~r.difficult] for r in records] or [np.zeros(0, np.int64)]),
                        minlength=len(annotations.class_names))
    if not boxes.sum():
        if unknown:
            cause = (f"all {read} objects were {dropped}" if unknown == read else
                     f"{unknown} of its {read} objects were {dropped}, the others as bad input or difficult "
                     f"({report_line(annotations)})") + f"; {_class_way_out(cfg, annotations)}"
        elif read:
            cause = (f"none of its {read} objects is left, dropped as bad input or difficult "
                     f"({report_line(annotations)}); fix the annotations or the images")
        else:
            cause = "its annotations hold no object; point the config at the annotated images"
        raise DataError(f"{what}: no box to {'train on' if split == 'train' else 'evaluate'}: {cause}")
    if read and unknown / read > cfg.max_unknown:
        raise DataError(f"{what}: {unknown} of its {read} objects ({unknown / read:.0%}) were {dropped}, more "
                        f"than data.max_unknown={cfg.max_unknown:g} allows; {_class_way_out(cfg, annotations)}"
                        + ("; or set data.max_unknown: 1 to use the listed classes only"
                           if cfg.classes and cfg.format == "voc" else ""))
    absent = [name for name, count in zip(annotations.class_names, boxes.tolist()) if count == 0]
    if split == "train" and cfg.classes and absent:
        hint = (f"; objects dropped for their class: {_named_counts(annotations.unknown_classes)} (a spelling or "
                f"case difference?)" if unknown else "")
        raise DataError(f"{what}: data.classes lists {', '.join(repr(n) for n in absent)}, but no box of the "
                        f"training set has that class: the model could never learn it{hint}; correct or remove "
                        f"the name")


def report_line(annotations: AnnotationSet) -> str:
    """The bad-input counts in one line."""
    counts = annotations.bad_input.counts
    return ("bad input: " + ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items()))
            if counts else "no bad input")
