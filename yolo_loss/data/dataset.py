"""The detection dataset: records to letterboxed (or augmented) network inputs with normalised targets.

Bad input follows ``data.on_bad`` (:mod:`yolo_loss.data.bad_input`). Most bad images are caught when the dataset is
built (missing, empty, truncated; a cache decodes every image), the rest (a file corrupt in the middle) when first
read; see :class:`DetectionDataset`.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from yolo_loss.boxes import box_xyxy_to_cxcywh
from yolo_loss.config.schema import AugmentConfig
from yolo_loss.data.bad_input import SIZE_MISMATCH, BadImageError, BadInputReport
from yolo_loss.data.cache import IO_THREADS, ImageCache
from yolo_loss.data.coco import to_coco_gt
from yolo_loss.data.images import check_image_file, decode_image_file
from yolo_loss.data.records import ImageRecord
from yolo_loss.data.transforms import PAD_VALUE, Placement, darknet_augment, letterbox, letterbox_size

if TYPE_CHECKING:
    from pycocotools.coco import COCO


class DetectionDataset(Dataset):
    """Images and boxes for the YOLO loss, letterboxed (or augmented) to an ``img_size`` square.

    ``dataset[i]`` is ``(image, target, meta)``:

    - ``image``: ``Tensor[3, S, S]`` float32 RGB in ``[0, 1]``;
    - ``target``: ``Tensor[n, 5]`` float32 rows ``(class index, cx, cy, w, h)``, the box normalised by
      ``S`` (fractions of the network input); difficult/crowd boxes are left out;
    - ``meta``: ``{"image_id": int, "orig_size": (h, w), "scale": (scale_x, scale_y), "pad": (pad_x, pad_y),
      "flip": bool}``: input pixel ``= original pixel * scale + pad`` (then mirrored when ``flip``), so
      :func:`~yolo_loss.data.transforms.unletterbox_boxes` (``meta["scale"], meta["pad"]``) maps unflipped
      predictions back. ``scale`` is a pair because whole-pixel rounding of the resized image makes the two
      axes differ slightly (and the training jitter makes them differ on purpose).

    Construction checks every image file cheaply (:func:`check_image_file`) and drops the bad ones under
    ``skip``. With ``cache=True`` every image is decoded at once (threads), resized so its long side is
    ``img_size`` and kept as uint8 in one buffer (shared copy-on-write by forked loader workers); construction
    refuses with a :class:`DataError` when that needs more than :data:`CACHE_MEMORY_FRACTION` of the available
    memory. Without a cache, an image that passes the checks but fails to decode later (corrupt in the middle)
    is, under ``skip``, replaced by a grey image without boxes (its ``image_id`` kept, so evaluation counts its
    objects as missed rather than scoring another image twice), warned about and counted in ``bad_input`` of
    the process that read it (a loader worker's count does not reach the main process).

    Args:
        records: the annotations.
        class_names, category_ids: per class index, as the reader gives them.
        img_size: side ``S`` of the network input.
        augment: darknet's augmentation settings for training; ``None`` gives the deterministic letterbox.
        cache: keep decoded, resized images in memory.
        on_bad: ``"skip"`` or ``"error"``.
        bad_input: the reader's report, continued here; a new one when ``None``.
    """

    def __init__(self, records: Sequence[ImageRecord], class_names: Sequence[str], category_ids: Sequence[int],
                 img_size: int, augment: AugmentConfig | None = None, cache: bool = False, on_bad: str = "skip",
                 *, bad_input: BadInputReport | None = None) -> None:
        if len(class_names) != len(category_ids):
            raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")
        self.class_names = list(class_names)
        self.category_ids = list(category_ids)
        self.img_size = img_size
        self.augment = augment
        self.on_bad = on_bad
        self.bad_input = bad_input if bad_input is not None else BadInputReport(on_bad)
        if self.bad_input.on_bad != on_bad:
            raise ValueError(f"on_bad={on_bad!r} but the report given applies on_bad={self.bad_input.on_bad!r}")
        self.records = self._drop_bad_files(list(records))
        self.cache: ImageCache | None = None
        if cache:
            self._build_cache()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def cache_nbytes(self) -> int:
        """Bytes held by the image cache (0 without one)."""
        return 0 if self.cache is None else self.cache.nbytes

    @cached_property
    def ground_truth_coco(self) -> "COCO":
        """The records as a pycocotools ``COCO`` object (difficult boxes ``iscrowd=1``), built on first use."""
        return to_coco_gt(self.records, self.class_names, self.category_ids)

    def __len__(self) -> int:
        return len(self.records)

    def _drop_bad_files(self, records: list[ImageRecord]) -> list[ImageRecord]:
        with ThreadPoolExecutor(IO_THREADS) as pool:
            problems = list(pool.map(check_image_file, (r.path for r in records)))
        kept = []
        for record, problem in zip(records, problems):
            if problem is None:
                kept.append(record)
            else:
                self.bad_input.reject(problem.kind, problem.path, problem.reason)
        return kept

    def _decode(self, record: ImageRecord) -> Tensor:
        """``Tensor[3, H, W]`` uint8 of ``record``; raises :class:`BadImageError`."""
        image = decode_image_file(record.path)
        height, width = image.shape[-2:]
        if (height, width) != (record.height, record.width):
            hint = " (EXIF orientation is not applied: was the file rotated after annotation?)" \
                if (height, width) == (record.width, record.height) else ""
            raise BadImageError(SIZE_MISMATCH, record.path, f"decoded {width}x{height}, annotated "
                                                            f"{record.width}x{record.height}{hint}")
        return image

    def _build_cache(self) -> None:
        self.cache, kept, problems = ImageCache.build(self.records, self.img_size, self._decode)
        for problem in problems:
            self.bad_input.reject(problem.kind, problem.path, problem.reason)
        self.records = [self.records[index] for index in kept]

    def _image(self, index: int) -> Tensor:
        """``Tensor[3, h, w]`` uint8 of image ``index``: from the cache (long side ``S``) or decoded."""
        return self.cache[index] if self.cache is not None else self._decode(self.records[index])

    def _grey_sample(self, record: ImageRecord) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """A grey letterbox without boxes for an image that cannot be read (``skip``)."""
        new_height, new_width = letterbox_size(record.height, record.width, self.img_size)
        placement = Placement(new_width / record.width, new_height / record.height,
                              (self.img_size - new_width) // 2, (self.img_size - new_height) // 2)
        image = torch.full((3, self.img_size, self.img_size), PAD_VALUE)
        return image, torch.zeros((0, 5)), self._meta(record, placement)

    @staticmethod
    def _meta(record: ImageRecord, placement: Placement) -> dict[str, Any]:
        return {"image_id": record.image_id, "orig_size": (record.height, record.width),
                "scale": placement.scale, "pad": placement.pad, "flip": placement.flip}

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Sample ``item``: an index, or ``(index, seed)`` from :class:`EpochSampler`, whose augmentation then draws
        from a generator seeded with ``seed`` (from torch's global generator for a bare index)."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        record = self.records[index]
        try:
            image = self._image(index)
        except BadImageError as error:
            self.bad_input.reject(error.kind, error.path, error.reason)  # raises under on_bad=error
            warnings.warn(f"{error}; using a grey image without boxes (data.on_bad=skip)", stacklevel=2)
            return self._grey_sample(record)

        trained = ~record.difficult
        boxes_xyxy = torch.from_numpy(record.boxes_xyxy[trained])
        labels = torch.from_numpy(record.labels[trained])
        # A cached image is already resized: boxes follow it, and the factor is folded into the placement.
        stored_height, stored_width = image.shape[-2:]
        factor_x, factor_y = stored_width / record.width, stored_height / record.height
        if (factor_x, factor_y) != (1.0, 1.0):
            boxes_xyxy = boxes_xyxy * boxes_xyxy.new_tensor([factor_x, factor_y, factor_x, factor_y])

        if self.augment is None:
            result = letterbox(image, boxes_xyxy, labels, self.img_size)
        else:
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            result = darknet_augment(image, boxes_xyxy, labels, self.img_size, self.augment, generator)
        placement = Placement(result.placement.scale_x * factor_x, result.placement.scale_y * factor_y,
                              result.placement.pad_x, result.placement.pad_y, result.placement.flip)
        boxes_cxcywh = box_xyxy_to_cxcywh(result.boxes_xyxy) / self.img_size
        target = torch.cat((result.labels.to(torch.float32)[:, None], boxes_cxcywh), dim=1)
        return result.image, target, self._meta(record, placement)
