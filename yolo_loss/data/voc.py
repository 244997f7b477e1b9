"""PASCAL VOC annotations to records.

Layout, under the ``VOCdevkit`` folder ``root``::

    <root>/<year folder>/Annotations/<stem>.xml
                         JPEGImages/<stem>.jpg
                         ImageSets/Main/<split>.txt     one stem per line

A set is named ``"<year folder>/<split>"`` (``"VOC2007/trainval"``); several sets are read in order.

Box convention: VOC corners are 1-based pixel indices, inclusive at both ends (``xmin = 1, xmax = W`` is the
whole width). In the continuous 0-based coordinates used everywhere else (pixel ``j`` spans ``[j, j + 1)``)
the box covering pixel indices ``xmin .. xmax`` is ``x1 = xmin - 1, x2 = xmax`` (and ``y`` alike): only the
minimum corner moves. A one-pixel box ``xmin = xmax = 5`` becomes ``[4, 5]``, one pixel wide.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from yolo_loss.data.bad_input import (BAD_BOX, UNKNOWN_CLASS, UNREADABLE_ANNOTATION, BadInputReport, DataError,
                                      clip_box_xyxy)
from yolo_loss.data.records import AnnotationSet, ImageRecord

# The 20 VOC classes in the standard order (the devkit's VOCopts.classes).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_CATEGORY_IDS: tuple[int, ...] = tuple(range(1, len(VOC_CLASSES) + 1))  # the evaluation's category ids


def _set_stems(root: Path, image_set: str) -> tuple[Path, list[str]]:
    """The year folder of ``"<year folder>/<split>"`` and the stems its list names, in file order."""
    year, _, split = image_set.partition("/")
    if not year or not split or "/" in split:
        raise DataError(f"VOC set {image_set!r}: expected '<year folder>/<split>', e.g. 'VOC2007/trainval'")
    year_folder = root / year
    if not year_folder.is_dir():
        raise DataError(f"{year_folder}: VOC year folder of set {image_set!r} does not exist")
    list_file = year_folder / "ImageSets" / "Main" / f"{split}.txt"
    if not list_file.is_file():
        raise DataError(f"{list_file}: VOC image list of set {image_set!r} does not exist")
    # Main/<split>.txt has one stem per line; the per-class lists add a +-1 column, which is ignored.
    stems = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    return year_folder, stems


def _text(element: ElementTree.Element, path: str) -> str | None:
    found = element.find(path)
    return found.text.strip() if found is not None and found.text is not None else None


def _parse_objects(xml_path: Path, report: BadInputReport
                   ) -> tuple[int, int, list[tuple[float, float, float, float]], list[int], list[bool]] | None:
    """Size and objects of one XML, boxes converted to 0-based xyxy and clipped; ``None`` if unreadable."""
    try:
        tree = ElementTree.parse(xml_path).getroot()
    except FileNotFoundError:
        report.reject(UNREADABLE_ANNOTATION, xml_path, "annotation file does not exist")
        return None
    except (ElementTree.ParseError, OSError) as error:
        report.reject(UNREADABLE_ANNOTATION, xml_path, f"annotation is not readable XML ({error})")
        return None
    try:
        width, height = int(float(_text(tree, "size/width") or 0)), int(float(_text(tree, "size/height") or 0))
    except ValueError:
        width = height = 0
    if width <= 0 or height <= 0:
        report.reject(UNREADABLE_ANNOTATION, xml_path, f"no positive <size> (width={_text(tree, 'size/width')}, "
                                                       f"height={_text(tree, 'size/height')})")
        return None

    boxes, labels, difficult = [], [], []
    for number, obj in enumerate(tree.iterfind("object"), start=1):
        name = _text(obj, "name") or ""
        what = f"object {number} ({name!r})"
        if name not in VOC_CLASSES:
            report.reject(UNKNOWN_CLASS, xml_path, f"{what}: not one of the 20 VOC classes")
            continue
        try:
            xmin, ymin, xmax, ymax = (float(_text(obj, f"bndbox/{corner}") or "nan")
                                      for corner in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as error:
            report.reject(BAD_BOX, xml_path, f"{what}: unreadable <bndbox> ({error})")
            continue
        # 1-based inclusive pixel indices -> 0-based continuous corners (module docstring). Messages show both.
        what = f"object {number} ({name!r}, 1-based <bndbox> {xmin:g} {ymin:g} {xmax:g} {ymax:g})"
        box = clip_box_xyxy(report, xml_path, what, (xmin - 1.0, ymin - 1.0, xmax, ymax), width, height)
        if box is None:
            continue
        boxes.append(box)
        labels.append(VOC_CLASSES.index(name))
        difficult.append((_text(obj, "difficult") or "0") not in ("0", ""))
    return width, height, boxes, labels, difficult


def read_voc(root: Path, image_sets: Sequence[str], *, report: BadInputReport | None = None,
             on_bad: str = "skip") -> AnnotationSet:
    """Read VOC sets into :class:`~yolo_loss.data.records.ImageRecord` s.

    - Image ids are ``1, 2, ...``: the position in the concatenated lists (a stem listed twice is read once,
      and an image dropped as bad keeps its number free), so they are stable for the same lists. The record's
      ``name`` keeps ``"<year folder>/<stem>"``.
    - ``difficult`` objects are kept with ``difficult=True``: not trained on, ignored by the evaluation.
    - Images without objects (after dropping bad ones) are kept as negatives.
    - Bad input: an unreadable or missing XML or one without a size drops the image; an unknown class name
      or a bad box (non-finite, non-positive size, outside the image) drops the object; a box partly outside
      is clipped and counted. Image files are checked later, by the dataset.

    Args:
        root: the ``VOCdevkit`` folder.
        image_sets: ``"<year folder>/<split>"`` names, e.g. ``["VOC2007/trainval", "VOC2012/trainval"]``.
        report: where to record bad input (its ``on_bad`` applies); a new one with ``on_bad`` when ``None``.

    Raises:
        DataError: ``root``, a year folder or an image list does not exist (under both policies), or bad input
            under ``error``.
    """
    report = report if report is not None else BadInputReport(on_bad)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: VOC root folder (VOCdevkit) does not exist")
    records = []
    seen: set[tuple[str, str]] = set()
    for image_set in image_sets:
        year_folder, stems = _set_stems(root, image_set)
        for stem in stems:
            if (year_folder.name, stem) in seen:
                continue
            seen.add((year_folder.name, stem))
            image_path = year_folder / "JPEGImages" / f"{stem}.jpg"
            parsed = _parse_objects(year_folder / "Annotations" / f"{stem}.xml", report)
            if parsed is None:
                continue
            width, height, boxes, labels, difficult = parsed
            records.append(ImageRecord(
                image_id=len(seen), path=image_path, width=width, height=height,
                boxes_xyxy=np.array(boxes, dtype=np.float32).reshape(-1, 4),
                labels=np.array(labels, dtype=np.int64), difficult=np.array(difficult, dtype=bool),
                name=f"{year_folder.name}/{stem}"))
    return AnnotationSet(records, list(VOC_CLASSES), list(VOC_CATEGORY_IDS), report)
