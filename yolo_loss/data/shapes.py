"""The embedded synthetic shapes data set: seeded, cached on disk, written in COCO layout.

:func:`generate_shapes` writes

    <root>/shapes-<hash>/images/train/000000.jpg ...
                         images/val/000000.jpg ...
                         annotations/instances_train.json
                         annotations/instances_val.json
                         DONE

where ``<hash>`` is the first 12 hex digits of the SHA-256 of the parameters and
:data:`GENERATOR_VERSION`, so a changed parameter or a changed generator never reuses a stale set.

What an image holds, and why (the set exists to make box-regression quality visible in AP75):

- Up to ``max_objects`` shapes of the classes in :data:`SHAPE_CLASSES` (or its first ``num_classes``);
  about 1 image in 20 has none (a negative). The longer side is log-uniform from 6 px to 90% of the image
  by default (``min_long_side``, ``max_long_side``), so small and large boxes are both common, and
  stretchable classes take aspect ratios up to 3:1 either way.
- Backgrounds are a linear gradient, often blended with smooth colour blobs, with a few long
  straight lines and per-pixel noise on top, so the box cannot be found by thresholding a flat colour.
- Each shape has a flat random colour, chosen so that its outline shows in luminance (in grey as
  well as in colour): it differs by at least 40 (of 255) from every shape it touches or overlaps (a
  position where none of 64 colours does is refused), and from at least 90% of the pixels just
  outside its outline when that can be had (otherwise the best of the 64).
- Shapes may overlap, but the overlap is limited at placement time: a shape is placed only where it
  leaves every earlier shape at least half of its pixels (:data:`MAX_COVERED_FRACTION`); after 20
  refused positions the shape is left out. So every drawn pixel belongs to an annotated object and no
  annotation is mostly hidden.
- The box is the tight box of the object's *visible* pixels (the COCO convention: the box of the
  visible mask), computed from the rasterised mask after later shapes have covered parts of it and
  after clipping to the image; ``area`` is the visible pixel count, as COCO's segment area.

Each image draws from its own random generator, seeded by ``(seed, split, index)``: the output is
the same bytes for the same parameters (and the same numpy and Pillow), and an image does not depend
on the images before it (the val images do not change with ``num_train``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from yolo_loss.config.schema import ShapesConfig

# Bump whenever a change would alter any output byte: it is part of the cache-folder hash.
GENERATOR_VERSION = 1

# Circles and squares are the 1:1 case of ellipse and rectangle; every class keeps its identity
# when stretched, so aspect ratio is free to vary without making two classes the same.
SHAPE_CLASSES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "diamond", "star", "cross")

# Largest long-to-short side ratio per class: a star squashed beyond 5:4 stops reading as a star.
MAX_ASPECT: dict[str, float] = {
    "ellipse": 3.0, "rectangle": 3.0, "triangle": 2.0, "diamond": 2.0, "star": 1.25, "cross": 2.0,
}

MIN_LONG_SIDE_PX = 6.0
MAX_LONG_SIDE_FRACTION = 0.9  # of the image size
MIN_SHORT_SIDE_PX = 4.0  # below this a 3:1 shape is a line and its class is not recoverable
MAX_OUTSIDE_FRACTION = 0.25  # of the shape's width (height) that may lie beyond the image border
MIN_VISIBLE_PIXELS = 8
NEGATIVE_PROBABILITY = 0.05
MAX_COVERED_FRACTION = 0.5  # of an object's own pixels that later shapes may cover
PLACEMENT_TRIES = 20
COLOUR_TRIES = 64  # cheap: the test is one comparison per outline pixel and try
MIN_LUMA_CONTRAST = 40
CONTRAST_PIXEL_FRACTION = 0.9
# Noise is clipped to +-NOISE_LIMIT and every colour kept within [NOISE_LIMIT, 255 - NOISE_LIMIT],
# so adding the noise never saturates: a shape pixel always differs from the same pixel of the
# background, which keeps the masks exactly the pixels that were changed.
NOISE_LIMIT = 24
MAX_NOISE_SIGMA = 10.0
COLOUR_LOW = NOISE_LIMIT
COLOUR_HIGH = 255 - NOISE_LIMIT
JPEG_QUALITY = 90
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as JPEG's Y channel
# The number is part of each image's seed. "select" is a second validation split of num_val images for choices
# (a study's tune: selection split), generated on demand beside the set, so that nothing chosen reads "val".
SPLITS: dict[str, int] = {"train": 0, "val": 1, "select": 2}
DONE_MARKER = "DONE"


@dataclass(frozen=True)
class RenderedImage:
    """One rendered image with its ground truth, before JPEG encoding.

    Attributes:
        image: ``uint8[S, S, 3]`` RGB.
        background: ``uint8[S, S, 3]`` the same image without the shapes (same noise).
        masks: ``bool[K, S, S]`` visible pixels of each annotated object, in drawing order.
        boxes_xywh: ``int64[K, 4]`` tight boxes ``(x, y, w, h)`` of the masks in pixels: the mask
            spans columns ``x .. x + w - 1`` and rows ``y .. y + h - 1``.
        labels: ``int64[K]`` 0-based indices into :data:`SHAPE_CLASSES`.
        drawn_pixel_counts: ``int64[K]`` pixels of each object when it was drawn, before later
            shapes covered some of them (the reference of :data:`MAX_COVERED_FRACTION`).
    """

    image: np.ndarray
    background: np.ndarray
    masks: np.ndarray
    boxes_xywh: np.ndarray
    labels: np.ndarray
    drawn_pixel_counts: np.ndarray


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of image ``index`` of ``split``; independent of every other image.

    Negative seeds are folded into 64 bits because :class:`numpy.random.SeedSequence` takes only
    non-negative entropy.
    """
    return np.random.default_rng(np.random.SeedSequence([seed % 2**64, SPLITS[split], index]))


def _rotate_unit_square(vertices: np.ndarray, quarter_turns: int) -> np.ndarray:
    """Rotate points in ``[0, 1]^2`` by ``quarter_turns * 90`` degrees about the square's centre."""
    for _ in range(quarter_turns % 4):
        vertices = np.stack((1.0 - vertices[:, 1], vertices[:, 0]), axis=1)
    return vertices


def _fit_unit_square(vertices: np.ndarray) -> np.ndarray:
    """Scale each axis of a polygon to span exactly ``[0, 1]``, so it fills its requested box."""
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    return (vertices - low) / (high - low)


def _triangle(rng: np.random.Generator) -> np.ndarray:
    # Apex anywhere along one side (isosceles to right-angled), pointing any of four ways.
    apex = rng.uniform(0.0, 1.0)
    vertices = np.array([[apex, 0.0], [1.0, 1.0], [0.0, 1.0]])
    return _rotate_unit_square(vertices, int(rng.integers(4)))


def _diamond(rng: np.random.Generator) -> np.ndarray:
    return np.array([[0.5, 0.0], [1.0, 0.5], [0.5, 1.0], [0.0, 0.5]])


def _star(rng: np.random.Generator) -> np.ndarray:
    inner_ratio = rng.uniform(0.38, 0.5)
    angles = rng.uniform(0.0, 2 * math.pi) + np.arange(10) * (math.pi / 5)
    radii = np.where(np.arange(10) % 2 == 0, 1.0, inner_ratio)
    return _fit_unit_square(np.stack((radii * np.cos(angles), radii * np.sin(angles)), axis=1))


def _cross(rng: np.random.Generator) -> np.ndarray:
    # A plus sign; bar thickness relative to the box, so it stays a plus when stretched.
    half_x, half_y = rng.uniform(0.125, 0.225, size=2)
    a, b = 0.5 - half_x, 0.5 + half_x
    c, d = 0.5 - half_y, 0.5 + half_y
    return np.array([[a, 0], [b, 0], [b, c], [1, c], [1, d], [b, d],
                     [b, 1], [a, 1], [a, d], [0, d], [0, c], [a, c]], dtype=float)


# Unit-square outlines of the polygon classes; ellipse and rectangle are drawn by PIL directly.
POLYGONS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "triangle": _triangle, "diamond": _diamond, "star": _star, "cross": _cross,
}


def _shape_mask(rng: np.random.Generator, name: str, x0: float, y0: float, width: float,
                height: float, image_size: int) -> np.ndarray:
    """Rasterise one shape filling the box at ``(x0, y0)`` of ``width x height`` px: ``bool[S, S]``.

    PIL places pixel centres on integer coordinates, so the box ``x0 .. x0 + width - 1`` covers
    about ``width`` pixels. The annotation never relies on this: it is read back from the mask.
    """
    canvas = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    x1, y1 = x0 + width - 1.0, y0 + height - 1.0
    if name == "ellipse":
        draw.ellipse((x0, y0, x1, y1), fill=1)
    elif name == "rectangle":
        draw.rectangle((x0, y0, x1, y1), fill=1)
    else:
        unit = POLYGONS[name](rng)
        points = unit * np.array([x1 - x0, y1 - y0]) + np.array([x0, y0])
        draw.polygon([tuple(p) for p in points.tolist()], fill=1)
    return np.asarray(canvas, dtype=bool)


def _random_colours(rng: np.random.Generator, count: int) -> np.ndarray:
    """``int64[count, 3]`` RGB colours, each channel uniform in ``[COLOUR_LOW, COLOUR_HIGH]``."""
    return rng.integers(COLOUR_LOW, COLOUR_HIGH + 1, size=(count, 3))


def _draw_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """A noise-free background, ``int16[S, S, 3]`` within ``[COLOUR_LOW, COLOUR_HIGH]``.

    A linear gradient at a random angle; with probability 0.6 blended with smooth blobs (a coarse
    random colour grid upsampled bilinearly); then 0-5 straight lines across the image. Every step
    is a convex combination of in-range colours or an in-range colour, so the range holds without
    clipping.
    """
    start, end = _random_colours(rng, 2).astype(np.float32)
    angle = rng.uniform(0.0, 2 * math.pi)
    coords = np.arange(image_size, dtype=np.float32)
    ramp = coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    background = start + ramp[..., None] * (end - start)

    if rng.uniform() < 0.6:
        grid_size = int(rng.integers(2, 7))
        grid = _random_colours(rng, grid_size * grid_size).reshape(grid_size, grid_size, 3)
        blobs = Image.fromarray(grid.astype(np.uint8)).resize((image_size, image_size),
                                                              Image.Resampling.BILINEAR)
        alpha = np.float32(rng.uniform(0.3, 0.8))
        background = (1 - alpha) * background + alpha * np.asarray(blobs, dtype=np.float32)

    picture = Image.fromarray(np.rint(background).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    # Each line crosses the central half of the image and runs past the border both ways, so its
    # visible part is long: a short thick stub in a corner would look like an unannotated rectangle.
    for _ in range(int(rng.integers(0, 6))):
        through = rng.uniform(0.25 * image_size, 0.75 * image_size, size=2)
        direction_angle = rng.uniform(0.0, math.pi)
        reach = 2.0 * image_size * np.array([math.cos(direction_angle), math.sin(direction_angle)])
        ends = np.concatenate((through - reach, through + reach))
        colour = tuple(int(c) for c in _random_colours(rng, 1)[0])
        draw.line(ends.tolist(), fill=colour, width=int(rng.integers(1, 4)))
    return np.asarray(picture, dtype=np.int16)


def _draw_noise(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Gaussian pixel noise, ``int16[S, S, 3]`` in ``[-NOISE_LIMIT, NOISE_LIMIT]``; grey or colour."""
    sigma = rng.uniform(0.0, MAX_NOISE_SIGMA)
    channels = 3 if rng.uniform() < 0.5 else 1
    # float32 draws are about twice as fast as float64, and the noise is rounded to integers anyway.
    noise = rng.standard_normal(size=(image_size, image_size, channels), dtype=np.float32) * sigma
    noise = np.clip(np.rint(noise), -NOISE_LIMIT, NOISE_LIMIT).astype(np.int16)
    return np.broadcast_to(noise, (image_size, image_size, 3))


def _outer_ring(mask: np.ndarray) -> np.ndarray:
    """The pixels 4-adjacent to ``mask`` but outside it: what the shape's outline is seen against."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown & ~mask


def _pick_colour(rng: np.random.Generator, canvas: np.ndarray, ring: np.ndarray,
                 neighbour_colours: np.ndarray) -> np.ndarray | None:
    """A fill colour whose outline is visible in luminance, or ``None`` if none of the tries is.

    Of :data:`COLOUR_TRIES` random colours, those within :data:`MIN_LUMA_CONTRAST` of a shape the
    new one touches or overlaps (``neighbour_colours``, ``int[N, 3]``) are out: a shared border
    between two shapes of the same brightness would hide where either box ends. Of the rest, the
    first that differs by :data:`MIN_LUMA_CONTRAST` from :data:`CONTRAST_PIXEL_FRACTION` of the
    ``ring`` pixels of ``canvas`` is taken, else the one that does best; per pixel, because a large
    shape's outline can cross a gradient, blobs and lines.

    Returns:
        ``int16[3]`` RGB, or ``None`` when every try is too close to a neighbouring shape.
    """
    candidates = _random_colours(rng, COLOUR_TRIES)
    candidate_luma = candidates @ LUMA_WEIGHTS
    neighbour_luma = neighbour_colours @ LUMA_WEIGHTS
    distinct = (np.abs(candidate_luma[:, None] - neighbour_luma[None, :]) >= MIN_LUMA_CONTRAST).all(axis=1)
    if not distinct.any():
        return None
    ring_luma = canvas[ring] @ LUMA_WEIGHTS
    fraction = (np.abs(ring_luma[None, :] - candidate_luma[:, None]) >= MIN_LUMA_CONTRAST).mean(axis=1)
    fraction = np.where(distinct, fraction, -1.0)
    good = np.flatnonzero(fraction >= CONTRAST_PIXEL_FRACTION)
    best = good[0] if good.size else int(np.argmax(fraction))
    return candidates[best].astype(np.int16)


def _sample_box_size(rng: np.random.Generator, name: str, image_size: int, min_long_side: float = MIN_LONG_SIDE_PX,
                     max_long_side: float = MAX_LONG_SIDE_FRACTION) -> tuple[float, float]:
    """Width and height in pixels: long side log-uniform from ``min_long_side`` px to ``max_long_side`` of the
    image, aspect log-uniform up to the class limit."""
    long_side = math.exp(rng.uniform(math.log(min_long_side), math.log(max_long_side * image_size)))
    aspect = math.exp(rng.uniform(0.0, math.log(MAX_ASPECT[name])))
    short_side = max(long_side / aspect, min(long_side, MIN_SHORT_SIDE_PX))
    return (long_side, short_side) if rng.uniform() < 0.5 else (short_side, long_side)


def _tight_boxes_xywh(masks: np.ndarray) -> np.ndarray:
    """``bool[K, S, S]`` non-empty masks -> ``int64[K, 4]`` tight ``(x, y, w, h)`` boxes."""
    boxes = np.zeros((len(masks), 4), dtype=np.int64)
    for k, mask in enumerate(masks):
        columns = np.flatnonzero(mask.any(axis=0))
        rows = np.flatnonzero(mask.any(axis=1))
        boxes[k] = (columns[0], rows[0], columns[-1] - columns[0] + 1, rows[-1] - rows[0] + 1)
    return boxes


def render_image(rng: np.random.Generator, *, image_size: int, max_objects: int,
                 min_long_side: float = MIN_LONG_SIDE_PX, max_long_side: float = MAX_LONG_SIDE_FRACTION,
                 num_classes: int = len(SHAPE_CLASSES)) -> RenderedImage:
    """Draw one image and its ground truth (see the module docstring for the content rules); the long side of a
    shape is log-uniform from ``min_long_side`` px to ``max_long_side`` times the image size, its class one of the
    first ``num_classes`` of :data:`SHAPE_CLASSES`."""
    background = _draw_background(rng, image_size)
    noise = _draw_noise(rng, image_size)
    num_wanted = 0 if rng.uniform() < NEGATIVE_PROBABILITY else int(rng.integers(1, max_objects + 1))

    canvas = background.copy()
    # Per accepted object, in drawing order: visible pixels, pixels when drawn, fill colour, class.
    visible_masks = np.zeros((0, image_size, image_size), dtype=bool)
    drawn_pixel_counts = np.zeros(0, dtype=np.int64)
    colours = np.zeros((0, 3), dtype=np.int16)
    labels = np.zeros(0, dtype=np.int64)
    for _ in range(num_wanted):
        label = int(rng.integers(num_classes))
        name = SHAPE_CLASSES[label]
        width, height = _sample_box_size(rng, name, image_size, min_long_side, max_long_side)
        for _ in range(PLACEMENT_TRIES):
            x0 = rng.uniform(-MAX_OUTSIDE_FRACTION * width, image_size - (1 - MAX_OUTSIDE_FRACTION) * width)
            y0 = rng.uniform(-MAX_OUTSIDE_FRACTION * height, image_size - (1 - MAX_OUTSIDE_FRACTION) * height)
            mask = _shape_mask(rng, name, x0, y0, width, height, image_size)
            pixel_count = int(mask.sum())
            if pixel_count < MIN_VISIBLE_PIXELS:
                continue
            uncovered = visible_masks & ~mask
            # The overlap limit: every earlier object keeps (1 - MAX_COVERED_FRACTION) of its pixels.
            if np.any(uncovered.sum(axis=(1, 2)) < (1.0 - MAX_COVERED_FRACTION) * drawn_pixel_counts):
                continue
            ring = _outer_ring(mask)
            touched = (uncovered & ring).any(axis=(1, 2))
            colour = _pick_colour(rng, canvas, ring, colours[touched])
            if colour is None:
                continue
            canvas[mask] = colour
            visible_masks = np.concatenate((uncovered, mask[None]))
            drawn_pixel_counts = np.append(drawn_pixel_counts, pixel_count)
            colours = np.concatenate((colours, colour[None]))
            labels = np.append(labels, label)
            break

    # The colour ranges keep these sums within [0, 255]; the clip only guards against a future
    # change breaking that, so it saturates instead of wrapping around.
    return RenderedImage(
        image=np.clip(canvas + noise, 0, 255).astype(np.uint8),
        background=np.clip(background + noise, 0, 255).astype(np.uint8),
        masks=visible_masks,
        boxes_xywh=_tight_boxes_xywh(visible_masks),
        labels=labels,
        drawn_pixel_counts=drawn_pixel_counts,
    )


def dataset_name(*, num_train: int, num_val: int, image_size: int, max_objects: int, seed: int,
                 min_long_side: float = MIN_LONG_SIDE_PX, max_long_side: float = MAX_LONG_SIDE_FRACTION,
                 num_classes: int = len(SHAPE_CLASSES)) -> str:
    """The cache-folder name ``shapes-<12 hex>`` for these parameters and :data:`GENERATOR_VERSION`.

    The object-size bounds and the class count enter the hash only when they differ from their defaults, so the
    sets generated before they were parameters keep their folders.
    """
    key = {"generator_version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val,
           "image_size": image_size, "max_objects": max_objects, "seed": seed}
    if (min_long_side, max_long_side) != (MIN_LONG_SIDE_PX, MAX_LONG_SIDE_FRACTION):
        key |= {"min_long_side": float(min_long_side), "max_long_side": float(max_long_side)}
    if num_classes != len(SHAPE_CLASSES):
        key["num_classes"] = num_classes
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return f"shapes-{digest[:12]}"


def _write_split(folder: Path, split: str, count: int, *, image_size: int, max_objects: int,
                 seed: int, info: dict[str, Any], min_long_side: float, max_long_side: float,
                 num_classes: int) -> None:
    """Render ``count`` images of ``split`` into ``folder`` with their COCO instances file."""
    image_folder = folder / "images" / split
    image_folder.mkdir(parents=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(count):
        rendered = render_image(image_rng(seed, split, index), image_size=image_size,
                                max_objects=max_objects, min_long_side=min_long_side,
                                max_long_side=max_long_side, num_classes=num_classes)
        file_name = f"{index:06d}.jpg"
        # 4:4:4 chroma: the default 4:2:0 would halve the colour resolution of 6-px shapes.
        Image.fromarray(rendered.image).save(image_folder / file_name, format="JPEG",
                                             quality=JPEG_QUALITY, subsampling=0)
        # Ids start at 1: COCOeval marks "unmatched" with id 0.
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for mask, box, label in zip(rendered.masks, rendered.boxes_xywh, rendered.labels):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                "bbox": [int(v) for v in box], "area": int(mask.sum()), "iscrowd": 0,
            })
    coco = {
        "info": {**info, "split": split},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"}
                       for i, name in enumerate(SHAPE_CLASSES[:num_classes])],
    }
    annotation_folder = folder / "annotations"
    annotation_folder.mkdir(exist_ok=True)
    (annotation_folder / f"instances_{split}.json").write_text(json.dumps(coco, separators=(",", ":")))


def generate_shapes(root: Path, *, num_train: int, num_val: int, image_size: int, max_objects: int,
                    seed: int, min_long_side: float = MIN_LONG_SIDE_PX,
                    max_long_side: float = MAX_LONG_SIDE_FRACTION, num_classes: int = len(SHAPE_CLASSES),
                    select: bool = False) -> Path:
    """Generate the shapes data set under ``root`` once; return its folder ``root/shapes-<hash>``.

    With ``select``, its selection split instead: ``num_val`` images of the split ``"select"`` (their own random
    streams, disjoint from ``train`` and ``val``) in the folder ``root/shapes-<hash>-select``.

    A folder holding the ``DONE`` marker is returned at once. Otherwise the set is written to a
    temporary folder beside it, ``DONE`` is written last, and the folder is renamed into place.
    The rename is atomic, so the target never exists half-written and a process that loses a race
    with another generating the same set simply uses the winner's folder.

    Raises:
        ValueError: a count below 1, an image size below 32, ``max_objects`` below 1, or object-size bounds
            that are not ``MIN_SHORT_SIDE_PX <= min_long_side < max_long_side * image_size``, or a class count
            outside ``[1, len(SHAPE_CLASSES)]``.
    """
    for key, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1),
                            ("image_size", image_size, 32), ("max_objects", max_objects, 1)):
        if value < low:
            raise ValueError(f"generate_shapes: {key} must be at least {low}, got {value}")
    if not 1 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"generate_shapes: num_classes must be in [1, {len(SHAPE_CLASSES)}], got {num_classes}")
    if not MIN_SHORT_SIDE_PX <= min_long_side < max_long_side * image_size:
        raise ValueError(f"generate_shapes: min_long_side {min_long_side} px must be at least {MIN_SHORT_SIDE_PX} "
                         f"and below max_long_side {max_long_side} x image_size {image_size}")
    root = Path(root)
    folder = root / dataset_name(num_train=num_train, num_val=num_val, image_size=image_size,
                                 max_objects=max_objects, seed=seed, min_long_side=min_long_side,
                                 max_long_side=max_long_side, num_classes=num_classes)
    info = {"description": "yolo-loss synthetic shapes", "generator_version": GENERATOR_VERSION,
            "num_train": num_train, "num_val": num_val, "image_size": image_size,
            "max_objects": max_objects, "seed": seed, "min_long_side": min_long_side,
            "max_long_side": max_long_side, "num_classes": num_classes}
    splits = (("select", num_val),) if select else (("train", num_train), ("val", num_val))
    if select:
        folder = folder.with_name(f"{folder.name}-select")
    if (folder / DONE_MARKER).is_file():
        return folder

    root.mkdir(parents=True, exist_ok=True)
    # Our writers create the folder with DONE already inside, so one without it is left over from
    # something else (an older writer, a hand copy); it cannot be a set being written right now.
    if folder.exists() and not (folder / DONE_MARKER).is_file():
        shutil.rmtree(folder)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", suffix=".tmp", dir=root))
    counts = " + ".join(str(count) for _, count in splits)
    print(f"generating the synthetic shapes set's {' and '.join(name for name, _ in splits)} ({counts} images of "
          f"{image_size} px) in {folder}", file=sys.stderr, flush=True)
    try:
        for split, count in splits:
            _write_split(temporary, split, count, image_size=image_size, max_objects=max_objects,
                         seed=seed, info=info, min_long_side=min_long_side, max_long_side=max_long_side,
                         num_classes=num_classes)
        (temporary / DONE_MARKER).write_text(f"{folder.name}\n")
        try:
            os.rename(temporary, folder)
        except OSError:
            if not (folder / DONE_MARKER).is_file():
                raise
            shutil.rmtree(temporary)  # another process finished the same set first
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return folder


def shapes_dataset(cfg: ShapesConfig, root: Path, *, select: bool = False) -> Path:
    """:func:`generate_shapes` with the parameters of ``cfg`` (``data.shapes`` of the config); with ``select``, the
    folder of its selection split."""
    return generate_shapes(root, num_train=cfg.num_train, num_val=cfg.num_val,
                           image_size=cfg.image_size, max_objects=cfg.max_objects, seed=cfg.seed,
                           min_long_side=cfg.min_long_side, max_long_side=cfg.max_long_side,
                           num_classes=cfg.num_classes, select=select)
