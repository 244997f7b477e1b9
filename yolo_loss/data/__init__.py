"""Data: COCO, VOC and the synthetic shapes as one record format, darknet's transforms, the dataset and loader.

One concern a module: ``bad_input.py`` (what is bad and the ``data.on_bad`` policy), ``records.py`` (the common
record form), ``images.py`` (checking and decoding image files), ``cache.py`` (decoded images in memory),
``coco.py``, ``voc.py`` and ``shapes.py`` (the sources), ``transforms.py`` (letterbox and darknet's augmentation),
``dataset.py`` (records to network inputs), ``loader.py`` (batches, the training order) and ``build.py`` (the data
set a config describes, with ``data.classes``, and the checks that refuse a split left with no box or most of its
objects dropped for their class). ``build_dataset(cfg.data, split, train=...)`` and ``build_loader(...)`` are what the
recipes call; the rest is exported for tests and tools.
"""

from yolo_loss.data.bad_input import BAD_INPUT_KINDS, BadInputReport, DataError
from yolo_loss.data.build import build_dataset
from yolo_loss.data.coco import read_coco, to_coco_gt
from yolo_loss.data.dataset import DetectionDataset
from yolo_loss.data.loader import EpochSampler, RankBatchSampler, build_loader, collate, seed_worker
from yolo_loss.data.records import AnnotationSet, ImageRecord
from yolo_loss.data.transforms import Placement, darknet_augment, letterbox, unletterbox_boxes
from yolo_loss.data.voc import VOC_CLASSES, read_voc

__all__ = [
    "BAD_INPUT_KINDS", "AnnotationSet", "BadInputReport", "DataError", "DetectionDataset", "EpochSampler",
    "ImageRecord", "Placement", "RankBatchSampler", "VOC_CLASSES", "build_dataset", "build_loader", "collate",
    "darknet_augment", "letterbox", "read_coco", "read_voc", "seed_worker", "to_coco_gt", "unletterbox_boxes",
]
