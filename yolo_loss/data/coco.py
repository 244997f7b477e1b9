"""COCO instances files in and out: :func:`read_coco` to records, :func:`to_coco_gt` back to a ``COCO`` object.

COCO boxes are ``[x, y, w, h]`` with ``(x, y)`` the top-left corner in continuous 0-based pixels (pixel ``j``
spans ``[j, j + 1)``), so the corners are ``x1 = x, x2 = x + w``, without the VOC ``-1``. Category ids are
not contiguous (1..90 for the 80 COCO classes); class index ``i`` is the ``i``-th id in increasing order, and
``category_ids[i]`` maps it back for the results file. With ``data.classes`` the classes are those categories,
found by name, in that order; the annotations of the other categories are left out (a chosen subset, not bad
input).
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from yolo_loss.data.bad_input import (DUPLICATE_IMAGE_ID, UNKNOWN_CATEGORY, UNREADABLE_ANNOTATION, BadInputReport,
                                      DataError, clip_box_xyxy)
from yolo_loss.data.records import AnnotationSet, ImageRecord


def _quiet_coco(dataset: dict[str, Any]) -> COCO:
    """A ``COCO`` object over an in-memory dict, without pycocotools' progress prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _drop_duplicate_image_ids(dataset: dict[str, Any], annotation_file: Path, image_folder: Path,
                              report: BadInputReport) -> dict[str, Any]:
    """``dataset`` without the images whose id several image entries share, nor their annotations (which of the
    images an annotation belongs to cannot be known; pycocotools would silently keep the last entry)."""
    entries: dict[Any, list[str]] = {}
    for image in dataset["images"]:
        if isinstance(image, dict):
            entries.setdefault(image.get("id"), []).append(str(image.get("file_name", "")))
    duplicated = {image_id for image_id, names in entries.items() if len(names) > 1}
    for image_id in sorted(duplicated, key=str):
        names = entries[image_id]
        for name in names:
            report.reject(DUPLICATE_IMAGE_ID, image_folder / name,
                          f"image id {image_id} in {annotation_file.name} is shared by {len(names)} images "
                          f"({', '.join(names)}): its annotations cannot be attributed")
    if not duplicated:
        return dataset
    return {**dataset,
            "images": [i for i in dataset["images"] if not isinstance(i, dict) or i.get("id") not in duplicated],
            "annotations": [a for a in dataset["annotations"]
                            if not isinstance(a, dict) or a.get("image_id") not in duplicated]}


def _select_categories(categories: list[dict[str, Any]], classes: Sequence[str], annotation_file: Path
                       ) -> list[dict[str, Any]]:
    """The category of each name of ``classes`` (``data.classes``), in that order.

    Raises:
        DataError: a name that no category, or several, of the file has (under both policies: the class list
            and the file disagree, nothing is bad input).
    """
    names = [str(c["name"]) for c in categories]
    chosen = []
    for name in classes:
        matches = [c for c in categories if str(c["name"]) == name]
        if len(matches) == 1:
            chosen.append(matches[0])
            continue
        if matches:
            raise DataError(f"{annotation_file}: data.classes names {name!r}, which several categories of the file "
                            f"have (ids {', '.join(str(c['id']) for c in matches)}): the class is ambiguous")
        close = [n for n in names if n.casefold() == name.casefold()] or difflib.get_close_matches(name, names, n=1)
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
        raise DataError(f"{annotation_file}: data.classes names {name!r}, which is not a category of the file"
                        + (f"; did you mean {close[0]!r}?" if close else "") + f" (its categories: {shown or 'none'})")
    return chosen


def read_coco(annotation_file: Path, image_folder: Path, *, classes: Sequence[str] | None = None,
              report: BadInputReport | None = None, on_bad: str = "skip") -> AnnotationSet:
    """Read a COCO instances JSON into :class:`~yolo_loss.data.records.ImageRecord` s, sorted by image id.

    - Class index ``i`` is the ``i``-th category id in increasing order; the names come with it. With
      ``classes`` (``data.classes``), class index ``i`` is the category named ``classes[i]``, and the
      annotations of the other categories are left out (counted in ``left_out``, not bad input).
    - ``iscrowd`` boxes are kept with ``difficult=True``: not trained on, ignored by the evaluation.
    - Images without boxes are kept (negatives).
    - ``area`` is kept for the evaluation's size ranges.
    - Bad boxes (non-finite, non-positive size, outside the image) and unknown category ids are dropped
      (``skip``) or raise (``error``); boxes partly outside are clipped and counted. An image entry without a
      positive ``width``/``height`` is dropped, and so are all the images sharing an image id. Image files are
      checked later, by the dataset.

    Args:
        annotation_file: the instances JSON.
        image_folder: where the ``file_name`` s of the JSON are.
        report: where to record bad input (its ``on_bad`` applies); a new one with ``on_bad`` when ``None``.

    Raises:
        DataError: the file or the folder does not exist, the JSON does not parse or is not a COCO instances
            file, a name of ``classes`` is not (or not one) category of the file (these are errors under both
            policies: nothing of the file can be used).
    """
    report = report if report is not None else BadInputReport(on_bad)
    annotation_file, image_folder = Path(annotation_file), Path(image_folder)
    if not annotation_file.is_file():
        raise DataError(f"{annotation_file}: COCO annotation file does not exist")
    if not image_folder.is_dir():
        raise DataError(f"{image_folder}: COCO image folder does not exist")
    try:
        dataset = json.loads(annotation_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{annotation_file}: cannot read the COCO annotation file ({error})") from None
    if not isinstance(dataset, dict) or not all(isinstance(dataset.get(key), list)
                                                for key in ("images", "annotations", "categories")):
        raise DataError(f"{annotation_file}: not a COCO instances file (needs lists 'images', 'annotations' "
                        f"and 'categories')")
    dataset = _drop_duplicate_image_ids(dataset, annotation_file, image_folder, report)
    try:
        coco = _quiet_coco(dataset)
    except (KeyError, TypeError) as error:
        raise DataError(f"{annotation_file}: not a COCO instances file (an entry lacks {error})") from None

    categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    file_category_ids = {c["id"] for c in categories}
    if classes:
        categories = _select_categories(categories, classes, annotation_file)
    category_ids = [int(c["id"]) for c in categories]
    class_names = [str(c["name"]) for c in categories]
    index_of_category = {category_id: index for index, category_id in enumerate(category_ids)}

    records = []
    unknown: Counter[str] = Counter()
    objects_read = left_out = 0
    for image_id in sorted(coco.getImgIds()):
        image = coco.imgs[image_id]
        path = image_folder / str(image.get("file_name", ""))
        width, height = image.get("width"), image.get("height")
        if not (isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0):
            report.reject(UNREADABLE_ANNOTATION, path, f"image {image_id} in {annotation_file.name}: no positive "
                                                       f"width and height (width={width}, height={height})")
            continue
        width, height = int(width), int(height)
        boxes, labels, crowd, areas = [], [], [], []
        for annotation in coco.imgToAnns.get(image_id, []):
            what = f"annotation {annotation.get('id')} (category {annotation.get('category_id')})"
            if annotation.get("category_id") not in index_of_category:
                if annotation.get("category_id") in file_category_ids:
                    left_out += 1  # a category that data.classes does not list
                    continue
                objects_read += 1
                report.reject(UNKNOWN_CATEGORY, path, f"{what}: category id not in the categories of "
                                                      f"{annotation_file.name}")
                unknown[f"category {annotation.get('category_id')}"] += 1
                continue
            objects_read += 1
            bbox = annotation.get("bbox")
            try:
                x, y, w, h = (float(v) for v in bbox)
            except (TypeError, ValueError):
                x = y = w = h = float("nan")  # not four numbers: reported as a non-finite box
            box = clip_box_xyxy(report, path, what, (x, y, x + w, y + h), width, height)
            if box is None:
                continue
            boxes.append(box)
            labels.append(index_of_category[annotation["category_id"]])
            crowd.append(bool(annotation.get("iscrowd", 0)))
            areas.append(float(annotation.get("area", w * h)))
        records.append(ImageRecord(
            image_id=int(image_id), path=path, width=width, height=height,
            boxes_xyxy=np.array(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.array(labels, dtype=np.int64), difficult=np.array(crowd, dtype=bool),
            name=str(image.get("file_name", "")), areas=np.array(areas, dtype=np.float32)))
    return AnnotationSet(records, class_names, category_ids, report, objects_read=objects_read,
                         unknown_classes=dict(unknown), left_out=left_out)


def to_coco_gt(records: Sequence[ImageRecord], class_names: Sequence[str], category_ids: Sequence[int]) -> COCO:
    """The records as an in-memory pycocotools ``COCO`` ground truth, for COCO and VOC evaluation alike.

    Boxes go back to ``[x, y, w, h]`` with ``category_ids[label]``; difficult boxes (VOC ``difficult``, COCO
    crowds) become ``iscrowd=1``, which COCOeval ignores: a detection matching one is neither a true nor a
    false positive. (COCOeval matches crowds by intersection over the *detection's* area, slightly more
    lenient than VOC's IoU rule for difficult objects.) ``area`` is the record's area when known, else the
    box area. Image ids are the records' (the original COCO ids for COCO).
    """
    images, annotations = [], []
    for record in records:
        images.append({"id": record.image_id, "file_name": record.name or record.path.name,
                       "width": record.width, "height": record.height})
        widths = record.boxes_xyxy[:, 2] - record.boxes_xyxy[:, 0]
        heights = record.boxes_xyxy[:, 3] - record.boxes_xyxy[:, 1]
        areas = record.areas if record.areas is not None else widths * heights
        for box, width, height, area, label, difficult in zip(record.boxes_xyxy.tolist(), widths.tolist(),
                                                              heights.tolist(), areas.tolist(),
                                                              record.labels.tolist(), record.difficult.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": record.image_id,
                                "category_id": int(category_ids[label]), "bbox": [box[0], box[1], width, height],
                                "area": area, "iscrowd": int(difficult)})
    categories = [{"id": int(category_id), "name": name, "supercategory": ""}
                  for category_id, name in zip(category_ids, class_names)]
    return _quiet_coco({"info": {"description": "yolo-loss ground truth"}, "licenses": [], "images": images,
                        "annotations": annotations, "categories": categories})
