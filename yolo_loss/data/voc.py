"""PASCAL VOC annotations to records.

Layout, under the ``VOCdevkit`` folder ``root``::

    <root>/<year folder>/Annotations/<stem>.xml
                         JPEGImages/<stem>.jpg
                         ImageSets/Main/<split>.txt     one stem per line

A set is named ``"<year folder>/<split>"`` (``"VOC2007/trainval"``); several sets are read in order. Any folder
in this layout is read, whatever its name (``root = bccd``, set ``"BCCD/train"``).

Classes: the names of ``data.classes`` in that order (class index ``i``, category id ``i + 1``), by default the 20
VOC classes. An object of another name is bad input (``unknown_class``): dropped and counted under
``data.on_bad=skip``, an error naming the file, the object and the name under ``error``.

Box convention: VOC corners are 1-based pixel indices, inclusive at both ends (``xmin = 1, xmax = W`` is the
whole width). In the continuous 0-based coordinates used everywhere else (pixel ``j`` spans ``[j, j + 1)``)
the box covering pixel indices ``xmin .. xmax`` is ``x1 = xmin - 1, x2 = xmax`` (and ``y`` alike): only the
minimum corner moves. A box with ``xmin = xmax`` or ``ymin = ymax`` as written is a zero-size box, dropped as a
bad box: read as inclusive indices it would be one pixel wide, but a point or a line is what a click without a
drag leaves in a labelling tool (BCCD has two such boxes), and darknet's ``voc_label.py`` converts it to
``w = xmax - xmin = 0``. The smallest box kept, ``xmin = 5, xmax = 6``, becomes ``[4, 6]``, two pixels wide.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections import Counter
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


def _unknown_class_reason(name: str, classes: Sequence[str] | None) -> str:
    """Why an object of class ``name`` is not read, with a close listed name when the case alone differs."""
    close = [c for c in (classes or VOC_CLASSES) if c.casefold() == name.casefold()]
    hint = f"; did you mean {close[0]!r}? (names are case-sensitive)" if close else ""
    if classes is None:
        return ("not one of the 20 VOC classes (data.classes is not set, so the VOC classes are read; list the data "
                f"set's class names in data.classes){hint}")
    return f"not in data.classes ({', '.join(classes)}){hint}"


def _parse_objects(xml_path: Path, report: BadInputReport, classes: Sequence[str] | None, unknown: Counter[str]
                   ) -> tuple[int, int, list[tuple[float, float, float, float]], list[int], list[bool], int] | None:
    """Size and objects of one XML, boxes converted to 0-based xyxy and clipped, and the number of objects in the
    file; ``None`` if unreadable. ``classes``: the names read (``None``: the VOC classes); the objects dropped for
    their name are counted in ``unknown``."""
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

    index_of = {name: index for index, name in enumerate(classes if classes is not None else VOC_CLASSES)}
    boxes, labels, difficult = [], [], []
    number = 0
    for number, obj in enumerate(tree.iterfind("object"), start=1):
        name = _text(obj, "name") or ""
        what = f"object {number} ({name!r})"
        if name not in index_of:
            report.reject(UNKNOWN_CLASS, xml_path, f"{what}: {_unknown_class_reason(name, classes)}")
            unknown[name] += 1
            continue
        try:
            xmin, ymin, xmax, ymax = (float(_text(obj, f"bndbox/{corner}") or "nan")
                                      for corner in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as error:
            report.reject(BAD_BOX, xml_path, f"{what}: unreadable <bndbox> ({error})")
            continue
        # 1-based inclusive pixel indices -> 0-based continuous corners (module docstring). Messages show both.
        what = f"object {number} ({name!r}, 1-based <bndbox> {xmin:g} {ymin:g} {xmax:g} {ymax:g})"
        if xmax < xmin or ymax < ymin:
            report.reject(BAD_BOX, xml_path, f"{what}: negative width or height (xmax < xmin or ymax < ymin)")
            continue
        if xmax == xmin or ymax == ymin:
            report.reject(BAD_BOX, xml_path, f"{what}: zero width or height (xmin = xmax or ymin = ymax: a point "
                                             f"or a line, not an object)")
            continue
        box = clip_box_xyxy(report, xml_path, what, (xmin - 1.0, ymin - 1.0, xmax, ymax), width, height)
        if box is None:
            continue
        boxes.append(box)
        labels.append(index_of[name])
        difficult.append((_text(obj, "difficult") or "0") not in ("0", ""))
    return width, height, boxes, labels, difficult, number


def read_voc(root: Path, image_sets: Sequence[str], *, classes: Sequence[str] | None = None,
             report: BadInputReport | None = None, on_bad: str = "skip") -> AnnotationSet:
    """Read VOC sets into :class:`~yolo_loss.data.records.ImageRecord` s.

    - Image ids are ``1, 2, ...``: the position in the concatenated lists (a stem listed twice is read once,
      and an image dropped as bad keeps its number free), so they are stable for the same lists. The record's
      ``name`` keeps ``"<year folder>/<stem>"``.
    - ``difficult`` objects are kept with ``difficult=True``: not trained on, ignored by the evaluation.
    - Images without objects (after dropping bad ones) are kept as negatives.
    - Class index ``i`` is ``classes[i]`` (category id ``i + 1``); the 20 VOC classes when ``classes`` is
      ``None`` or empty.
    - Bad input: an unreadable or missing XML or one without a size drops the image; a class name not among
      ``classes`` or a bad box (non-finite, zero or negative size as written, outside the image) drops the
      object; a box partly outside is clipped and counted. Image files are checked later, by the dataset.

    Args:
        root: the ``VOCdevkit`` folder (any folder holding VOC-layout folders).
        image_sets: ``"<year folder>/<split>"`` names, e.g. ``["VOC2007/trainval", "VOC2012/trainval"]``.
        classes: the class names to read, in class-index order (``data.classes``); ``None``: the VOC classes.
        report: where to record bad input (its ``on_bad`` applies); a new one with ``on_bad`` when ``None``.

    Raises:
        DataError: ``root``, a year folder or an image list does not exist (under both policies), or bad input
            under ``error``.
    """
    report = report if report is not None else BadInputReport(on_bad)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: VOC root folder (VOCdevkit) does not exist")
    classes = list(classes) if classes else None
    records = []
    unknown: Counter[str] = Counter()
    objects_read = 0
    seen: set[tuple[str, str]] = set()
    for image_set in image_sets:
        year_folder, stems = _set_stems(root, image_set)
        for stem in stems:
            if (year_folder.name, stem) in seen:
                continue
            seen.add((year_folder.name, stem))
            image_path = year_folder / "JPEGImages" / f"{stem}.jpg"
            parsed = _parse_objects(year_folder / "Annotations" / f"{stem}.xml", report, classes, unknown)
            if parsed is None:
                continue
            width, height, boxes, labels, difficult, objects = parsed
            objects_read += objects
            records.append(ImageRecord(
                image_id=len(seen), path=image_path, width=width, height=height,
                boxes_xyxy=np.array(boxes, dtype=np.float32).reshape(-1, 4),
                labels=np.array(labels, dtype=np.int64), difficult=np.array(difficult, dtype=bool),
                name=f"{year_folder.name}/{stem}"))
    class_names = classes if classes is not None else list(VOC_CLASSES)
    return AnnotationSet(records, class_names, list(range(1, len(class_names) + 1)), report,
                         objects_read=objects_read, unknown_classes=dict(unknown))
