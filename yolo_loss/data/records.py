"""The common form every reader produces: one :class:`ImageRecord` per image (boxes ``xyxy`` in original pixels,
contiguous class indices) and the :class:`AnnotationSet` of a split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yolo_loss.data.bad_input import BadInputReport

@dataclass(frozen=True)
class ImageRecord:
    """The annotation of one image, in the common form every reader produces.

    Attributes:
        image_id: a positive integer, unique in the data set (COCO: the file's id; VOC: the position in the
            image lists, from 1; COCOeval reserves 0).
        path: the image file.
        width, height: the image size in pixels as annotated (the decoded size must match).
        boxes_xyxy: ``float32[n, 4]`` ``(x1, y1, x2, y2)`` in continuous pixels of the stored (not
            EXIF-rotated) image, 0-based, clipped to ``[0, width] x [0, height]``, ``x2 > x1``, ``y2 > y1``.
        labels: ``int64[n]`` contiguous class indices ``0 .. C-1``.
        difficult: ``bool[n]``: VOC ``difficult`` objects and COCO ``iscrowd`` regions. Not trained on;
            the evaluation ground truth marks them ``iscrowd=1`` so that matching them neither helps nor hurts.
        name: the file name (COCO) or ``"<year folder>/<stem>"`` (VOC), for messages and reports.
        areas: ``float32[n]`` COCO's ``area`` (the segment area, which sets APs/APm/APl) when the annotation
            has it; ``None`` means the box areas.
    """

    image_id: int
    path: Path
    width: int
    height: int
    boxes_xyxy: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    name: str = ""
    areas: np.ndarray | None = None

    @property
    def num_boxes(self) -> int:
        return len(self.labels)


@dataclass
class AnnotationSet:
    """What a reader returns: the records, ``class_names[i]`` and ``category_ids[i]`` of class index ``i``
    (the original COCO id; ``1 .. C`` for VOC), and the report of what was dropped.

    Attributes:
        objects_read: the objects (VOC ``<object>`` s, COCO annotations) of the images read, before any was
            dropped; COCO annotations left out by ``data.classes`` are not counted.
        unknown_classes: the objects dropped for their class, by what named it: a VOC class name
            (``'widget'``) or a COCO category id (``'category 99'``).
        left_out: COCO annotations of categories that ``data.classes`` leaves out (not bad input).
    """

    records: list[ImageRecord]
    class_names: list[str]
    category_ids: list[int]
    bad_input: BadInputReport
    objects_read: int = 0
    unknown_classes: dict[str, int] = field(default_factory=dict)
    left_out: int = 0

    @property
    def unknown_total(self) -> int:
        """Objects dropped for their class."""
        return sum(self.unknown_classes.values())
