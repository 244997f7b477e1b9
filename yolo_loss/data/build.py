"""The data set a config describes: the synthetic shapes (generated once), COCO or VOC, as one
:class:`~yolo_loss.data.dataset.DetectionDataset`."""

from __future__ import annotations

from pathlib import Path

from yolo_loss.data.bad_input import BadInputReport, DataError
from yolo_loss.data.coco import read_coco
from yolo_loss.data.dataset import DetectionDataset
from yolo_loss.data.shapes import shapes_dataset
from yolo_loss.data.voc import read_voc
from yolo_loss.schema import DataConfig


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: {what} does not exist")
    return path


def build_dataset(cfg: DataConfig, split: str, *, train: bool) -> DetectionDataset:
    """The ``split`` (``"train"`` or ``"val"``) of the data set ``cfg`` describes.

    - ``shapes``: generated (once, cached) under ``cfg.root`` by :func:`yolo_loss.data.shapes.shapes_dataset`;
      reads ``images/<split>`` and ``annotations/instances_<split>.json`` of the generated folder.
    - ``coco``: ``cfg.root / cfg.<split>_images`` and ``cfg.root / cfg.<split>_annotations``.
    - ``voc``: ``cfg.train_sets`` or ``cfg.val_sets`` under ``cfg.root`` (the VOCdevkit folder).

    ``train=True`` turns on ``cfg.augment``; otherwise the deterministic letterbox. Bad input follows
    ``cfg.on_bad``; the dataset's ``bad_input`` holds what the reader and the dataset dropped.

    Raises:
        DataError: a data path that does not exist (named), or bad input under ``on_bad=error``.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    report = BadInputReport(cfg.on_bad)
    root = Path(cfg.root)
    if cfg.format == "shapes":
        folder = shapes_dataset(cfg.shapes, root)
        annotations = read_coco(folder / "annotations" / f"instances_{split}.json", folder / "images" / split,
                                report=report)
    elif cfg.format == "coco":
        _existing(root, "data.root")
        images, annotation_file = ((cfg.train_images, cfg.train_annotations) if split == "train"
                                   else (cfg.val_images, cfg.val_annotations))
        annotations = read_coco(root / annotation_file, root / images, report=report)
    elif cfg.format == "voc":
        _existing(root, "data.root")
        annotations = read_voc(root, cfg.train_sets if split == "train" else cfg.val_sets, report=report)
    else:
        raise ValueError(f"unknown data.format {cfg.format!r} (valid: shapes, coco, voc)")
    return DetectionDataset(annotations.records, annotations.class_names, annotations.category_ids,
                            img_size=cfg.img_size, augment=cfg.augment if train else None, cache=cfg.cache,
                            on_bad=cfg.on_bad, bad_input=report)
