"""Data: COCO, VOC and the synthetic shapes as one record format, darknet's transforms, the dataset and loader.

``build_dataset(cfg.data, split, train=...)`` and ``build_loader(...)`` are what the recipes call; the readers,
the transforms and :func:`to_coco_gt` are exported for tests and tools. The shapes generator
(:mod:`yolo_loss.data.shapes`) is imported only when a shapes data set is built.
"""

from yolo_loss.data.coco import read_coco, to_coco_gt
from yolo_loss.data.dataset import (BAD_INPUT_KINDS, AnnotationSet, BadInputReport, DataError, DetectionDataset,
                                    ImageRecord, build_dataset, build_loader, collate, seed_worker)
from yolo_loss.data.transforms import Placement, darknet_augment, letterbox, unletterbox_boxes
from yolo_loss.data.voc import VOC_CLASSES, read_voc

__all__ = [
    "BAD_INPUT_KINDS", "AnnotationSet", "BadInputReport", "DataError", "DetectionDataset", "ImageRecord",
    "Placement", "VOC_CLASSES", "build_dataset", "build_loader", "collate", "darknet_augment", "letterbox",
    "read_coco", "read_voc", "seed_worker", "to_coco_gt", "unletterbox_boxes",
]
