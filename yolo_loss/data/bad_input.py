"""Bad input: what counts as bad, the ``data.on_bad`` policy that drops (``skip``) or stops (``error``), and the
report of what was dropped or repaired.

Every reader (COCO, VOC) and the dataset apply the policy through one :class:`BadInputReport`: ``error`` raises a
:class:`DataError` naming the file, the object and the reason; ``skip`` records it, and the run writes the list to
``<run>/bad_inputs.txt`` (docs/reliability.md, "When things go wrong").
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
    UNKNOWN_CLASS: "VOC class name not in data.classes (unset: the 20 VOC classes); box dropped",
    UNKNOWN_CATEGORY: "COCO category id not in the categories list; box dropped",
    DUPLICATE_IMAGE_ID: "COCO image id used by several images, whose boxes cannot be told apart; all dropped",
}
REPAIRED_KINDS = frozenset({CLIPPED_BOX})

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
