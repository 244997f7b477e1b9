"""The image cache (``data.cache: true``): every image decoded once, resized so its long side is the network input,
and kept as uint8 in one flat buffer.

One buffer laid out up front rather than a list of tensors: it is never held twice while being built, and forked
loader workers share its pages copy-on-write, where the reference counts of many small objects would make every
worker copy them. Building refuses with a :class:`DataError` when the cache would take more than
:data:`CACHE_MEMORY_FRACTION` of the available memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from yolo_loss.data.bad_input import BadImageError, DataError
from yolo_loss.data.records import ImageRecord
from yolo_loss.data.transforms import letterbox_size

CACHE_MEMORY_FRACTION = 0.8  # of the currently available memory that the image cache may take
IO_THREADS = 8  # file checks and cache decoding wait on the disk more than on the CPU


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


class ImageCache:
    """The decoded images of some records, long side ``img_size``; ``cache[i]`` is ``Tensor[3, h, w]`` uint8."""

    def __init__(self, pixels: np.ndarray, offsets: np.ndarray, shapes: np.ndarray) -> None:
        self.pixels, self.offsets, self.shapes = pixels, offsets, shapes

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes

    def __getitem__(self, index: int) -> Tensor:
        shape = self.shapes[index].tolist()
        start = int(self.offsets[index])
        return torch.from_numpy(self.pixels[start:start + math.prod(shape)]).view(*shape)

    @classmethod
    def build(cls, records: Sequence[ImageRecord], img_size: int, decode: Callable[[ImageRecord], Tensor],
              ) -> tuple["ImageCache", list[int], list[BadImageError]]:
        """Decode (threads) and resize every record's image.

        Returns:
            The cache of the images that decoded, the indices of their records (in order), and the problems of
            the others. A dropped image leaves its slot unused: a few bytes of waste rather than a second copy.

        Raises:
            DataError: the cache would need more than :data:`CACHE_MEMORY_FRACTION` of the available memory.
        """
        needed = cache_bytes(records, img_size)
        available = available_memory_bytes()
        if available is not None and needed > CACHE_MEMORY_FRACTION * available:
            raise DataError(
                f"data.cache=true needs about {_format_bytes(needed)} for {len(records)} images at "
                f"img_size {img_size}, but only {_format_bytes(available)} of memory is available "
                f"(the cache may use {CACHE_MEMORY_FRACTION:.0%} of it); set data.cache=false to read the "
                f"images from disk instead")
        shapes = np.array([(3, *letterbox_size(r.height, r.width, img_size)) for r in records],
                          dtype=np.int64).reshape(-1, 3)
        offsets = np.concatenate(([0], np.cumsum(shapes.prod(axis=1)))).astype(np.int64)
        pixels = np.empty(int(offsets[-1]), dtype=np.uint8)

        def load(index: int) -> BadImageError | None:
            try:
                image = decode(records[index])
            except BadImageError as error:
                return error
            new_size = tuple(shapes[index, 1:].tolist())
            if new_size != tuple(image.shape[-2:]):
                image = F.resize(image, list(new_size), antialias=True)
            pixels[offsets[index]:offsets[index + 1]] = image.numpy().ravel()
            return None

        with ThreadPoolExecutor(min(IO_THREADS, os.cpu_count() or 1)) as pool:
            problems = list(pool.map(load, range(len(records))))
        kept = [index for index, problem in enumerate(problems) if problem is None]
        return cls(pixels, offsets[kept], shapes[kept]), kept, [p for p in problems if p is not None]
