"""The detection dataset: annotation records, bad-input policy, image decoding, the cache and the loader.

Everything a reader produces is a list of :class:`ImageRecord` (one per image, boxes ``xyxy`` in original
pixels with contiguous class indices) plus the class names and the original category ids; COCO
(:mod:`yolo_loss.data.coco`), VOC (:mod:`yolo_loss.data.voc`) and the synthetic shapes (COCO files) all end here,
and :func:`yolo_loss.data.coco.to_coco_gt` turns the records back into the ground truth of the evaluation.

Images are decoded with ``torchvision.io.decode_image(..., mode=ImageReadMode.RGB)`` (libjpeg-turbo and libpng:
grayscale, CMYK, RGBA, palette and 16-bit files all come out as RGB uint8). PIL is the fallback only for
formats torchvision does not read (anything but JPEG, PNG, GIF and WebP: BMP, TIFF, ...). EXIF orientation is
*not* applied: COCO and VOC annotate the pixels as stored, and a phone picture whose EXIF says "rotate" keeps
its boxes aligned only if it is left unrotated.

Bad input follows ``data.on_bad``: ``error`` raises :class:`DataError` naming the file, the object and the
reason; ``skip`` drops the box or the image and records it in a :class:`BadInputReport`. Most bad images are
caught when the dataset is built (missing, empty, truncated; a cache decodes every image), the rest (a file
corrupt in the middle) when first read; see :class:`DetectionDataset`.
"""

from __future__ import annotations

import math
import os
import random
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as F

from yolo_loss.boxes import box_xyxy_to_cxcywh
from yolo_loss.data.transforms import PAD_VALUE, Placement, darknet_augment, letterbox, letterbox_size
from yolo_loss.schema import AugmentConfig, DataConfig

if TYPE_CHECKING:
    from pycocotools.coco import COCO

ON_BAD_CHOICES = ("skip", "error")

# Kinds of bad input and what ``skip`` does about them. CLIPPED_BOX is repaired, never an error.
MISSING_IMAGE = "missing_image"
EMPTY_IMAGE = "empty_image"
TRUNCATED_IMAGE = "truncated_image"
CORRUPT_IMAGE = "corrupt_image"
SIZE_MISMATCH = "size_mismatch"
UNREADABLE_ANNOTATION = "unreadable_annotation"
BAD_BOX = "bad_box"
CLIPPED_BOX = "clipped_box"
UNKNOWN_CLASS = "unknown_class"
UNKNOWN_CATEGORY = "unknown_category"
DUPLICATE_IMAGE_ID = "duplicate_image_id"
BAD_INPUT_KINDS: dict[str, str] = {
    MISSING_IMAGE: "image file missing; image dropped",
    EMPTY_IMAGE: "image file empty; image dropped",
    TRUNCATED_IMAGE: "image file truncated; image dropped",
    CORRUPT_IMAGE: "image file not decodable; image dropped",
    SIZE_MISMATCH: "decoded size differs from the annotated size; image dropped",
    UNREADABLE_ANNOTATION: "annotation missing, unparsable or without an image size; image dropped",
    BAD_BOX: "box with NaN, non-positive size or outside the image; box dropped",
    CLIPPED_BOX: "box partly outside the image; clipped to it",
    UNKNOWN_CLASS: "VOC class name not among the 20 classes; box dropped",
    UNKNOWN_CATEGORY: "COCO category id not in the categories list; box dropped",
    DUPLICATE_IMAGE_ID: "COCO image id used by several images, whose boxes cannot be told apart; all dropped",
}
REPAIRED_KINDS = frozenset({CLIPPED_BOX})

# What torchvision.io.decode_image reads (leading bytes); anything else goes to PIL.
_TORCHVISION_MAGIC: tuple[tuple[int, bytes], ...] = (
    (0, b"\xff\xd8\xff"),  # JPEG
    (0, b"\x89PNG\r\n\x1a\n"),
    (0, b"GIF87a"), (0, b"GIF89a"),
    (8, b"WEBP"),  # after b"RIFF" and the chunk size
)
# A complete JPEG ends with the EOI marker and a PNG with its IEND chunk; a few bytes of padding after them are
# common, so the end is looked for in the last TAIL_BYTES.
TAIL_BYTES = 64
_END_MARKERS: dict[bytes, bytes] = {b"\xff\xd8\xff": b"\xff\xd9", b"\x89PNG\r\n\x1a\n": b"IEND"}

CACHE_MEMORY_FRACTION = 0.8  # of the currently available memory that the image cache may take
IO_THREADS = 8  # file checks and cache decoding wait on the disk more than on the CPU


class DataError(Exception):
    """Bad input under ``data.on_bad=error``, or a data path that does not exist; the message names the file."""


class BadImageError(DataError):
    """An image file that cannot be used; ``kind`` is one of :data:`BAD_INPUT_KINDS`."""

    def __init__(self, kind: str, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.kind = kind
        self.path = str(path)
        self.reason = reason


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


@dataclass(frozen=True)
class BadInput:
    kind: str
    path: str
    detail: str


class BadInputReport:
    """Applies ``data.on_bad`` and keeps count of what was dropped or repaired.

    ``reject`` raises :class:`DataError` under ``error`` and records the item under ``skip``; ``repaired``
    always records (a clipped box is fixed, not dropped).
    """

    def __init__(self, on_bad: str = "skip") -> None:
        if on_bad not in ON_BAD_CHOICES:
            raise ValueError(f"on_bad must be one of {', '.join(ON_BAD_CHOICES)}, got {on_bad!r}")
        self.on_bad = on_bad
        self.entries: list[BadInput] = []

    def reject(self, kind: str, path: Path | str, detail: str) -> None:
        """A bad image or box: raise under ``error``, else record it; the caller drops it."""
        if kind not in BAD_INPUT_KINDS:
            raise ValueError(f"unknown bad-input kind {kind!r}")
        if self.on_bad == "error":
            raise DataError(f"{path}: {detail} (data.on_bad=error; data.on_bad=skip drops it and counts it)")
        self.entries.append(BadInput(kind, str(path), detail))

    def repaired(self, kind: str, path: Path | str, detail: str) -> None:
        self.entries.append(BadInput(kind, str(path), detail))

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(entry.kind for entry in self.entries))

    @property
    def total(self) -> int:
        return len(self.entries)

    def summary(self, examples: int = 3) -> str:
        """One line per kind: count, what was done and the first ``examples`` files."""
        if not self.entries:
            return "bad input: none"
        lines = [f"bad input (data.on_bad={self.on_bad}): {self.total} items"]
        for kind, count in sorted(self.counts.items()):
            paths = list(dict.fromkeys(e.path for e in self.entries if e.kind == kind))
            shown = ", ".join(paths[:examples]) + (", ..." if len(paths) > examples else "")
            lines.append(f"  {kind}: {count} ({BAD_INPUT_KINDS[kind]}); {shown}")
        return "\n".join(lines)

    def write(self, path: Path | str) -> None:
        """Every entry, one per line: ``kind<TAB>file<TAB>detail``."""
        Path(path).write_text("".join(f"{e.kind}\t{e.path}\t{e.detail}\n" for e in self.entries))


@dataclass
class AnnotationSet:
    """What a reader returns: the records, ``class_names[i]`` and ``category_ids[i]`` of class index ``i``
    (the original COCO id; 1..20 for VOC), and the report of what was dropped."""

    records: list[ImageRecord]
    class_names: list[str]
    category_ids: list[int]
    bad_input: BadInputReport


def clip_box_xyxy(report: BadInputReport, path: Path | str, what: str, box_xyxy: Sequence[float],
                  width: int, height: int) -> tuple[float, float, float, float] | None:
    """Check one box and clip it to the image; ``None`` when it is dropped (``skip``).

    A box is bad when a coordinate is not finite, ``x2 <= x1`` or ``y2 <= y1``, or nothing of it is left
    inside ``[0, width] x [0, height]``. A box partly outside is clipped and counted as :data:`CLIPPED_BOX`.

    Args:
        what: names the object in messages, e.g. ``"annotation 17 (category 3)"``.
        box_xyxy: ``(x1, y1, x2, y2)`` in pixels.
    """
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        reason = "non-finite coordinate"
    elif x2 <= x1 or y2 <= y1:
        reason = f"{'negative' if x2 < x1 or y2 < y1 else 'zero'} width or height"
    else:
        clipped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
                   min(max(x2, 0.0), width), min(max(y2, 0.0), height))
        if clipped == (x1, y1, x2, y2):
            return clipped  # the common case: no message is formatted
        if clipped[2] > clipped[0] and clipped[3] > clipped[1]:
            report.repaired(CLIPPED_BOX, path, f"{what}: clipped to the {width}x{height} image "
                                               f"(x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g})")
            return clipped
        reason = f"outside the {width}x{height} image"
    report.reject(BAD_BOX, path, f"{what}: {reason} (x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g})")
    return None


def _magic(head: bytes) -> bytes | None:
    """The torchvision-readable signature ``head`` starts with, or ``None`` (a format for PIL, or garbage)."""
    for offset, signature in _TORCHVISION_MAGIC:
        if head[offset:offset + len(signature)] == signature:
            return signature
    return None


def check_image_file(path: Path) -> BadImageError | None:
    """Cheap checks before any decoding: the file exists, is not empty, is an image, and is not cut short.

    Reads 16 bytes at the start and :data:`TAIL_BYTES` at the end. A JPEG or PNG without its end marker there
    is decoded in full to decide, since some writers append data after the marker. A file that is none of
    torchvision's formats must have a header PIL recognises. Damage in the middle of a file shows only when it
    is decoded.

    Returns:
        The problem, or ``None`` when the file looks usable.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return BadImageError(MISSING_IMAGE, path, "image file does not exist")
    except OSError as error:
        return BadImageError(MISSING_IMAGE, path, f"image file cannot be read ({error})")
    if size == 0:
        return BadImageError(EMPTY_IMAGE, path, "image file is empty (0 bytes)")
    try:
        with open(path, "rb") as file:
            head = file.read(16)
            file.seek(max(0, size - TAIL_BYTES))
            tail = file.read()
    except OSError as error:
        return BadImageError(MISSING_IMAGE, path, f"image file cannot be read ({error})")
    signature = _magic(head)
    if signature is None:
        # Not a format torchvision reads: PIL must at least recognise the header (it reads only the header).
        try:
            with Image.open(path):
                pass
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            return BadImageError(CORRUPT_IMAGE, path, f"not an image file torchvision or PIL can read ({error})")
        return None
    end_marker = _END_MARKERS.get(signature)
    if end_marker is not None and end_marker not in tail:
        try:
            decode_image_file(path)
        except BadImageError as error:
            return BadImageError(TRUNCATED_IMAGE, path, f"image file is truncated ({error.reason})")
    return None


def decode_image_file(path: Path) -> Tensor:
    """Decode an image file to ``Tensor[3, H, W]`` uint8 RGB, as stored (EXIF orientation not applied).

    torchvision decodes JPEG, PNG, GIF and WebP; PIL is used only for other formats (BMP, TIFF, ...), after
    torchvision has refused them. A file of a torchvision format that fails to decode is corrupt: PIL is not
    asked, it would only hide the problem.

    Raises:
        BadImageError: missing, empty or not decodable.
    """
    try:
        data = read_file(str(path))
    except (RuntimeError, OSError) as error:
        kind = MISSING_IMAGE if not path.exists() else CORRUPT_IMAGE
        raise BadImageError(kind, path, f"image file cannot be read ({error})") from None
    if data.numel() == 0:
        raise BadImageError(EMPTY_IMAGE, path, "image file is empty (0 bytes)")
    signature = _magic(data[:16].numpy().tobytes())
    try:
        image = decode_image(data, mode=ImageReadMode.RGB)
        # A 16-bit PNG decodes to uint16: scaled to uint8 (the top 8 bits), like every other image.
        return F.to_dtype(image, torch.uint8, scale=True) if image.dtype != torch.uint8 else image
    except RuntimeError as error:
        if signature is not None:
            # torchvision's message starts with the C++ source location; the reason is the last part.
            reason = str(error).rsplit(", ", 1)[-1].strip()
            raise BadImageError(CORRUPT_IMAGE, path, f"image file cannot be decoded ({reason})") from None
    try:
        with Image.open(path) as picture:
            return F.pil_to_tensor(picture.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadImageError(CORRUPT_IMAGE, path, f"image file cannot be decoded ({error})") from None


def available_memory_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` (Linux), else free physical pages; ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def cache_bytes(records: Sequence[ImageRecord], img_size: int) -> int:
    """Bytes the image cache needs: 3 uint8 channels per image, resized so the long side is ``img_size``."""
    return sum(3 * math.prod(letterbox_size(r.height, r.width, img_size)) for r in records)


def _format_bytes(count: float) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


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
        self._cache_pixels: np.ndarray | None = None
        self._cache_offsets: np.ndarray | None = None
        self._cache_shapes: np.ndarray | None = None
        if cache:
            self._build_cache()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def cache_nbytes(self) -> int:
        """Bytes held by the image cache (0 without one)."""
        return 0 if self._cache_pixels is None else self._cache_pixels.nbytes

    @cached_property
    def ground_truth_coco(self) -> "COCO":
        """The records as a pycocotools ``COCO`` object (difficult boxes ``iscrowd=1``), built on first use."""
        from yolo_loss.data.coco import to_coco_gt  # coco.py imports the record types from this module

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
        needed = cache_bytes(self.records, self.img_size)
        available = available_memory_bytes()
        if available is not None and needed > CACHE_MEMORY_FRACTION * available:
            raise DataError(
                f"data.cache=true needs about {_format_bytes(needed)} for {len(self.records)} images at "
                f"img_size {self.img_size}, but only {_format_bytes(available)} of memory is available "
                f"(the cache may use {CACHE_MEMORY_FRACTION:.0%} of it); set data.cache=false to read the "
                f"images from disk instead")

        # One flat buffer, laid out up front, rather than a list of tensors: it is never held twice while
        # being built, and forked workers share its pages copy-on-write, where the reference counts of many
        # small objects would make every worker copy them.
        shapes = np.array([(3, *letterbox_size(r.height, r.width, self.img_size)) for r in self.records],
                          dtype=np.int64).reshape(-1, 3)
        offsets = np.concatenate(([0], np.cumsum(shapes.prod(axis=1)))).astype(np.int64)
        pixels = np.empty(int(offsets[-1]), dtype=np.uint8)

        def load(index: int) -> BadImageError | None:
            try:
                image = self._decode(self.records[index])
            except BadImageError as error:
                return error
            new_size = tuple(shapes[index, 1:].tolist())
            if new_size != tuple(image.shape[-2:]):
                image = F.resize(image, list(new_size), antialias=True)
            pixels[offsets[index]:offsets[index + 1]] = image.numpy().ravel()
            return None

        with ThreadPoolExecutor(min(IO_THREADS, os.cpu_count() or 1)) as pool:
            problems = list(pool.map(load, range(len(self.records))))
        kept = [index for index, problem in enumerate(problems) if problem is None]
        for problem in problems:
            if problem is not None:
                self.bad_input.reject(problem.kind, problem.path, problem.reason)
        # A dropped image leaves its slot unused: a few bytes of waste rather than a second copy of the buffer.
        self.records = [self.records[index] for index in kept]
        self._cache_pixels = pixels
        self._cache_offsets = offsets[kept]
        self._cache_shapes = shapes[kept]

    def _image(self, index: int) -> Tensor:
        """``Tensor[3, h, w]`` uint8 of image ``index``: from the cache (long side ``S``) or decoded."""
        if self._cache_pixels is None:
            return self._decode(self.records[index])
        shape = self._cache_shapes[index].tolist()
        start = int(self._cache_offsets[index])
        return torch.from_numpy(self._cache_pixels[start:start + math.prod(shape)]).view(*shape)

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


def collate(batch: Sequence[tuple[Tensor, Tensor, dict[str, Any]]]) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """Stack samples of :class:`DetectionDataset`.

    Returns:
        ``images`` ``Tensor[B, 3, S, S]``; ``targets`` ``Tensor[N, 6]`` rows ``(image index in the batch,
        class, cx, cy, w, h)`` with the box normalised to the input size, ``N`` the boxes of all images;
        ``metas``, the ``B`` meta dicts in order.
    """
    images, targets, metas = zip(*batch)
    rows = [torch.cat((target.new_full((len(target), 1), float(i)), target), dim=1) for i, target in enumerate(targets)]
    return torch.stack(images), torch.cat(rows) if rows else torch.zeros((0, 6)), list(metas)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy and ``random`` with the worker's torch seed.

    PyTorch seeds each worker's torch generator with ``base_seed + worker_id``, ``base_seed`` drawn from the
    loader's generator. PyTorch 1.9 and later also seed numpy and ``random`` in workers, by a formula of their
    own; this hook states the rule here (numpy's and ``random``'s seed is the worker's torch seed) so that it
    does not depend on the PyTorch version. The transforms draw from torch only; this is for any numpy or
    ``random`` use added later.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class EpochSampler(Sampler[tuple[int, int]]):
    """The training order: every epoch, a permutation of the ``size`` samples and a seed for each, both drawn from
    ``generator``; yields ``(index, seed)`` pairs, which :class:`DetectionDataset` reads.

    Each sample's augmentation draws from its own generator seeded with its seed, so it depends only on the
    generator's state at the start of the epoch and the sample's position in it: the same with 0 or 8 loader
    workers, and exactly the same again when a run resumes mid-epoch. To resume, restore the generator's state
    from the start of the epoch and set ``start`` to the number of samples already trained (by all processes):
    the next epoch drawn skips them (without loading them) and continues identically; ``start`` then returns to 0.

    Under ``torchrun`` (``world_size`` N > 1) every process draws the same permutation and seeds from a generator
    seeded alike, and the order is cut into global batches of N * ``batch_size``: process ``rank`` takes the
    slice ``[rank * batch_size, (rank + 1) * batch_size)`` of each. N processes then see, step by step, exactly
    the batches one process with batch N * ``batch_size`` sees. The samples after the last whole global batch are
    left out of the epoch (one process drops its last partial batch too), so every process takes the same number
    of steps.
    """

    def __init__(self, size: int, generator: torch.Generator, *, batch_size: int = 1, rank: int = 0,
                 world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.size = size
        self.generator = generator
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.start = 0

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.size
        return self.size // (self.batch_size * self.world_size) * self.batch_size

    def __iter__(self):
        order = torch.randperm(self.size, generator=self.generator)
        seeds = torch.randint(0, 2**62, (self.size,), generator=self.generator)
        start, self.start = self.start, 0
        if self.world_size == 1:
            positions = torch.arange(start, self.size)
        else:
            global_batch = self.batch_size * self.world_size
            batches = (self.size - start) // global_batch
            # [global batch, process, place in the process's batch] -> this process's slice of every global batch
            grid = (start + torch.arange(batches * global_batch)).view(batches, self.world_size, self.batch_size)
            positions = grid[:, self.rank].flatten()
        return zip(order[positions].tolist(), seeds[positions].tolist())


class RankBatchSampler(Sampler[list[int]]):
    """Evaluation under ``torchrun``: the data set in order, cut into batches of ``batch_size`` (the last one
    shorter), of which process ``rank`` takes batches ``rank, rank + world_size, ...``.

    Every image is evaluated once, by one process (``DistributedSampler`` would pad with repeated images), each in
    the batch it has in one process, and :func:`yolo_loss.distributed.gather_batches` puts the batches back in
    single-process order.
    """

    def __init__(self, size: int, batch_size: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, math.ceil(self.size / self.batch_size), self.world_size))

    def __iter__(self):
        for batch in range(self.rank, math.ceil(self.size / self.batch_size), self.world_size):
            yield list(range(batch * self.batch_size, min((batch + 1) * self.batch_size, self.size)))


def build_loader(dataset: DetectionDataset, batch_size: int, *, shuffle: bool, workers: int,
                 seed: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` yielding :func:`collate` batches of ``batch_size`` (per process).

    Everything random comes from a ``torch.Generator`` seeded with ``seed`` (``loader.generator``; save its
    state at the start of an epoch to resume): with ``shuffle`` (a training loader), the order and the
    per-sample augmentation seeds of :class:`EpochSampler` (``loader.sampler``), and the workers' seeds. A
    training loader drops the last partial batch (unless the data set is smaller than one batch), so every
    step sees ``batch_size`` images. ``pin_memory`` is on when CUDA is available.

    ``rank`` and ``world_size`` (``torchrun``'s, :mod:`yolo_loss.distributed`) give this process its part: its
    slice of every global batch of a training loader (:class:`EpochSampler`), every ``world_size``-th batch of
    an evaluation loader (:class:`RankBatchSampler`).

    Raises:
        DataError: a distributed training set smaller than one global batch (``batch_size * world_size``).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    if shuffle:
        if world_size > 1 and len(dataset) < batch_size * world_size:
            raise DataError(f"the training set has {len(dataset)} images, fewer than one global batch of "
                            f"{world_size} processes x train.batch_size {batch_size}; lower train.batch_size")
        sampler = EpochSampler(len(dataset), generator, batch_size=batch_size, rank=rank, world_size=world_size)
        batching = {"batch_size": batch_size, "sampler": sampler, "drop_last": len(dataset) >= batch_size}
    elif world_size > 1:
        batching = {"batch_sampler": RankBatchSampler(len(dataset), batch_size, rank, world_size)}
    else:
        batching = {"batch_size": batch_size}
    return DataLoader(dataset, **batching, num_workers=workers, collate_fn=collate, worker_init_fn=seed_worker,
                      generator=generator, pin_memory=torch.cuda.is_available())


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
    # The readers import the record types from this module, so they are imported here, not at the top.
    from yolo_loss.data.coco import read_coco
    from yolo_loss.data.voc import read_voc

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    report = BadInputReport(cfg.on_bad)
    root = Path(cfg.root)
    if cfg.format == "shapes":
        from yolo_loss.data.shapes import shapes_dataset  # generates the set on first use

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
