"""Image files: cheap checks before decoding (missing, empty, not an image, cut short) and the decoding itself.

Images are decoded with ``torchvision.io.decode_image(..., mode=ImageReadMode.RGB)`` (libjpeg-turbo and libpng:
grayscale, CMYK, RGBA, palette and 16-bit files all come out as RGB uint8). PIL is the fallback only for formats
torchvision does not read (anything but JPEG, PNG, GIF and WebP: BMP, TIFF, ...). EXIF orientation is *not*
applied: COCO and VOC annotate the pixels as stored, and a phone picture whose EXIF says "rotate" keeps its boxes
aligned only if it is left unrotated.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as F

from yolo_loss.data.bad_input import CORRUPT_IMAGE, EMPTY_IMAGE, MISSING_IMAGE, TRUNCATED_IMAGE, BadImageError

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
