"""Image and box transforms: darknet's letterbox, its training augmentation, and the way back.

Coordinates are continuous pixels: pixel ``(i, j)`` (0-based row, column) covers ``[j, j + 1) x [i, i + 1)``,
so an image of width ``W`` spans ``x`` in ``[0, W]`` and a box covering pixel columns ``a .. b`` (inclusive) is
``x1 = a, x2 = b + 1``. Boxes are ``xyxy`` throughout; the dataset converts to ``cxcywh`` at the very end.

The geometry goes through ``torchvision.transforms.v2`` with boxes as ``tv_tensors.BoundingBoxes``, so the image
and its boxes are resized, padded and flipped by the same kernels and cannot drift apart. Every transform maps
an original point ``p`` to ``p * scale + pad`` on the network input (then mirrors ``x`` when flipped); a
:class:`Placement` records those numbers so :func:`unletterbox_boxes` can map predictions back.

Two pipelines:

- :func:`letterbox` (evaluation, and training without augmentation): keep the aspect ratio, make the long
  side ``img_size``, centre on a grey (0.5) square canvas, as darknet's ``letterbox_image``.
- :func:`darknet_augment` (training): darknet's ``load_data_detection`` of the YOLOv3 release (pjreddie
  ``src/data.c``): a random aspect ratio, the image stretched to it so that its long side fills the canvas,
  placed at a random offset on the grey canvas; then HSV distortion of the whole canvas; then a horizontal flip.

Randomness comes only from the ``generator`` passed in (torch's global generator when none is): the training
loader gives each sample its own seeded generator (:class:`yolo_loss.data.dataset.EpochSampler`), so the
augmentation of an image depends on the seed, the epoch and the image, not on the loader's workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from yolo_loss.config.schema import AugmentConfig

PAD_VALUE = 0.5  # darknet's fill_image(sized, .5)
MIN_BOX_SIZE_PX = 1.0  # boxes narrower or lower than this at input resolution are dropped


@dataclass(frozen=True)
class Placement:
    """Where the original image lies on the network input.

    An original point ``(x, y)`` lands at ``(x * scale_x + pad_x, y * scale_y + pad_y)``; when ``flip`` is
    set, the canvas is then mirrored: ``x -> img_size - x``. The letterbox has ``flip=False`` and
    ``scale_x == scale_y`` up to the rounding of the resized short side to whole pixels; that rounding (up to
    half a pixel over the whole side) is why both factors are kept rather than one ratio.
    """

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    flip: bool = False

    @property
    def scale(self) -> tuple[float, float]:
        return (self.scale_x, self.scale_y)

    @property
    def pad(self) -> tuple[int, int]:
        return (self.pad_x, self.pad_y)


@dataclass(frozen=True)
class Transformed:
    """The output of a transform.

    Attributes:
        image: ``Tensor[3, S, S]`` float32 RGB in ``[0, 1]``.
        boxes_xyxy: ``Tensor[m, 4]`` float32 input pixels, inside ``[0, S]`` and at least 1 px wide and high.
        labels: ``Tensor[m]`` int64, the labels of the boxes that were kept.
        kept: ``Tensor[n]`` bool, which of the ``n`` input boxes survived clipping.
        placement: how original pixels map to input pixels.
    """

    image: Tensor
    boxes_xyxy: Tensor
    labels: Tensor
    kept: Tensor
    placement: Placement


def letterbox_size(height: int, width: int, img_size: int) -> tuple[int, int]:
    """``(new_height, new_width)`` of an image resized so that its long side is ``img_size``.

    The short side is rounded to whole pixels (at least 1). Shared by the letterbox and the image cache so
    that a cached image needs no second resize.
    """
    ratio = img_size / max(height, width)
    return max(1, min(img_size, round(height * ratio))), max(1, min(img_size, round(width * ratio)))


def _resize(image: Tensor, boxes_xyxy: Tensor, new_height: int, new_width: int
            ) -> tuple[Tensor, tv_tensors.BoundingBoxes]:
    """Resize ``image`` (``Tensor[3, H, W]`` uint8) and its ``Tensor[n, 4]`` boxes to ``new_height x new_width``.

    Returns:
        ``Tensor[3, new_height, new_width]`` float32 in ``[0, 1]`` and the boxes as ``BoundingBoxes`` on it.
    """
    height, width = image.shape[-2:]
    pixels = tv_tensors.Image(image)
    # No clamping yet: _clip_and_drop clamps once at the end, on the final canvas.
    boxes = tv_tensors.BoundingBoxes(boxes_xyxy.float(), format=tv_tensors.BoundingBoxFormat.XYXY,
                                     canvas_size=(height, width), clamping_mode=None)
    if (new_height, new_width) != (height, width):
        # Resize the uint8 image: torchvision's antialiased bilinear kernel has a fast uint8 path on CPU.
        pixels = F.resize(pixels, [new_height, new_width], antialias=True)
        boxes = F.resize(boxes, [new_height, new_width])
    return F.to_dtype(pixels, torch.float32, scale=True).as_subclass(Tensor), boxes


def _pad(pixels: Tensor, boxes: tv_tensors.BoundingBoxes, pad_x: int, pad_y: int, img_size: int,
         fill: float = PAD_VALUE) -> tuple[Tensor, tv_tensors.BoundingBoxes]:
    """Paste ``Tensor[3, h, w]`` at ``(pad_x, pad_y)`` on an ``img_size`` square of ``fill``; move the boxes."""
    height, width = pixels.shape[-2:]
    padding = [pad_x, pad_y, img_size - width - pad_x, img_size - height - pad_y]  # left, top, right, bottom
    if not any(padding):
        return pixels, boxes
    return F.pad(pixels, padding, fill=fill), F.pad(boxes, padding)


def _clip_and_drop(boxes: tv_tensors.BoundingBoxes, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Clip to the canvas, then drop boxes under :data:`MIN_BOX_SIZE_PX` on either side.

    Returns:
        ``Tensor[m, 4]`` float32 boxes, ``Tensor[m]`` labels and the ``Tensor[n]`` bool mask of kept boxes.
    """
    boxes = F.clamp_bounding_boxes(boxes, clamping_mode="hard")
    _, kept = F.sanitize_bounding_boxes(boxes, min_size=MIN_BOX_SIZE_PX, min_area=MIN_BOX_SIZE_PX ** 2)
    return boxes.as_subclass(Tensor)[kept], labels[kept], kept


def letterbox(image: Tensor, boxes_xyxy: Tensor, labels: Tensor, img_size: int) -> Transformed:
    """Deterministic letterbox: long side to ``img_size``, aspect ratio kept, centred on grey.

    Args:
        image: ``Tensor[3, H, W]`` uint8 RGB.
        boxes_xyxy: ``Tensor[n, 4]`` pixels of ``image``.
        labels: ``Tensor[n]`` int64.
        img_size: side ``S`` of the square network input.

    Example: a 640 x 480 image at ``S = 416`` is resized to 416 x 312 and padded by 52 px above and below
    (``pad = (0, 52)``, ``scale = 0.65``).
    """
    height, width = image.shape[-2:]
    new_height, new_width = letterbox_size(height, width, img_size)
    # Integer halves, as darknet's letterbox_image: an odd leftover puts the extra pixel right and below.
    pad_x, pad_y = (img_size - new_width) // 2, (img_size - new_height) // 2
    pixels, boxes = _resize(image, boxes_xyxy, new_height, new_width)
    canvas, boxes = _pad(pixels, boxes, pad_x, pad_y, img_size)
    kept_boxes, kept_labels, kept = _clip_and_drop(boxes, labels)
    placement = Placement(new_width / width, new_height / height, pad_x, pad_y)
    return Transformed(canvas, kept_boxes, kept_labels, kept, placement)


def distort_hsv(image: Tensor, hue_shift: float, saturation_scale: float, value_scale: float) -> Tensor:
    """darknet's ``distort_image``: in HSV, shift the hue, scale saturation and value; back to RGB, clamp.

    HSV as Python's ``colorsys`` and darknet define it: ``V = max(R, G, B)``, chroma ``C = V - min(R, G, B)``,
    ``S = C / V``, hue in sixths of the circle ``H6 = (G - B) / C`` where ``V = R``, ``2 + (B - R) / C`` where
    ``V = G``, else ``4 + (R - G) / C``. Going back, channel ``n`` (5 for red, 3 for green, 1 for blue) is
    ``V' - V' S' clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + H6') mod 6``: the sector formula of darknet's
    ``hsv_to_rgb`` in one expression. With ``V' = a V`` and ``S' = b S`` that is ``a (V - b C w_n)``, so ``S``
    itself is never needed. Saturation above 1 gives negative channels, clamped afterwards as darknet's
    ``constrain_image`` does. (``torchvision``'s ``adjust_saturation`` blends with grey luminance instead, a
    different operation.)

    Args:
        image: ``Tensor[3, H, W]`` float RGB in ``[0, 1]``.
        hue_shift: added to the hue, as a fraction of the circle (wraps around).
        saturation_scale, value_scale: multiply ``S`` and ``V``.

    Returns:
        ``Tensor[3, H, W]`` in ``[0, 1]``, a new tensor.
    """
    red, green, blue = image.unbind(0)
    # amax/amin and masks rather than max(dim) with indices: several times faster on CPU, the dominant cost
    # of a training sample. Where two channels tie for the maximum, either formula gives the same hue.
    value = image.amax(dim=0)
    chroma = value - image.amin(dim=0)
    # Greys have C = 0 and any hue; with 1 / eps the differences (all 0) give hue 0, and the C factor below
    # makes the choice irrelevant.
    inverse_chroma = chroma.clamp(min=1e-12).reciprocal_()
    hue6 = torch.where(value == red, (green - blue) * inverse_chroma,
                       torch.where(value == green, (blue - red) * inverse_chroma + 2.0,
                                   (red - green) * inverse_chroma + 4.0))
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=image.dtype, device=image.device).view(3, 1, 1)
    k = torch.remainder(offsets + (hue6 + 6.0 * hue_shift), 6.0)
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return weight.mul_(chroma * -saturation_scale).add_(value).mul_(value_scale).clamp_(0.0, 1.0)


def _darknet_rand_scale(uniform: float, coin: float, amount: float) -> float:
    """darknet's ``rand_scale(1 + amount)``: ``s ~ U(1, 1 + amount)``, then ``s`` or ``1 / s`` with even odds."""
    scale = 1.0 + uniform * amount
    return scale if coin < 0.5 else 1.0 / scale


def darknet_augment(image: Tensor, boxes_xyxy: Tensor, labels: Tensor, img_size: int,
                    cfg: AugmentConfig, generator: torch.Generator | None = None) -> Transformed:
    """darknet's YOLOv3 training augmentation (pjreddie ``load_data_detection``), drawing ten uniform numbers
    from ``generator`` (torch's global generator when None).

    With ``j = cfg.jitter``, an ``H x W`` image and ``S = img_size``:

    1. ``new_ar = (W + U(-j W, j W)) / (H + U(-j H, j H))``. The image is stretched to that aspect ratio
       with its long side ``S``: ``(nw, nh) = (S, S / new_ar)`` if ``new_ar >= 1`` else ``(S new_ar, S)``.
       darknet's ``scale`` is fixed at 1 in this release (the ``rand_uniform(.25, 2)`` line is commented out),
       so the scale varies only through the aspect ratio and the image always spans the canvas one way.
    2. It is placed at a uniform random whole-pixel offset ``dx in [0, S - nw]``, ``dy in [0, S - nh]`` on
       the grey canvas. darknet draws ``dx`` as a float, truncates it for the pixels and keeps the float for
       the boxes (up to 1 px apart); here the boxes use the same whole pixels as the image.
    3. HSV distortion of the whole canvas, padding included (as darknet): hue ``+ U(-hsv_h, hsv_h)``,
       saturation and value times ``rand_scale(1 + hsv_s)``, ``rand_scale(1 + hsv_v)``.
    4. A horizontal flip of the canvas with probability ``cfg.flip``.

    Boxes are clipped to the canvas and those under 1 px dropped. ``cfg.multiscale`` is not used here: the
    training loop resizes whole batches.

    Args:
        image: ``Tensor[3, H, W]`` uint8 RGB.
        boxes_xyxy: ``Tensor[n, 4]`` pixels of ``image``.
        labels: ``Tensor[n]`` int64.
    """
    height, width = image.shape[-2:]
    # One draw of fixed length per sample keeps the random stream aligned whatever the config switches off.
    (u_width, u_height, u_dx, u_dy, u_hue, u_sat, coin_sat, u_val, coin_val, u_flip) = (
        torch.rand(10, generator=generator).tolist())
    jitter = cfg.jitter
    new_aspect = (width + (2.0 * u_width - 1.0) * jitter * width) / (height + (2.0 * u_height - 1.0) * jitter * height)
    if new_aspect < 1.0:
        placed_height, placed_width = float(img_size), img_size * new_aspect
    else:
        placed_height, placed_width = img_size / new_aspect, float(img_size)
    new_width = min(img_size, max(1, round(placed_width)))
    new_height = min(img_size, max(1, round(placed_height)))
    pad_x = min(img_size - new_width, math.floor(u_dx * (img_size - new_width + 1)))
    pad_y = min(img_size - new_height, math.floor(u_dy * (img_size - new_height + 1)))
    pixels, boxes = _resize(image, boxes_xyxy, new_height, new_width)

    fill = PAD_VALUE
    if cfg.hsv_h or cfg.hsv_s or cfg.hsv_v:
        value_scale = _darknet_rand_scale(u_val, coin_val, cfg.hsv_v)
        pixels = distort_hsv(pixels, (2.0 * u_hue - 1.0) * cfg.hsv_h,
                             _darknet_rand_scale(u_sat, coin_sat, cfg.hsv_s), value_scale)
        # darknet distorts the whole canvas; grey has no saturation or hue, so its padding only changes value.
        # Distorting the placed image and padding with that grey is the same and skips the padding pixels.
        fill = min(1.0, PAD_VALUE * value_scale)
    canvas, boxes = _pad(pixels, boxes, pad_x, pad_y, img_size, fill)
    flip = u_flip < cfg.flip
    if flip:
        canvas = F.horizontal_flip(canvas)
        boxes = F.horizontal_flip(boxes)

    kept_boxes, kept_labels, kept = _clip_and_drop(boxes, labels)
    placement = Placement(new_width / width, new_height / height, pad_x, pad_y, flip)
    return Transformed(canvas, kept_boxes, kept_labels, kept, placement)


def letterbox_boxes(boxes_xyxy: Tensor, scale: float | tuple[float, float], pad: tuple[float, float]) -> Tensor:
    """Map ``Tensor[n, 4]`` xyxy boxes from original-image pixels to network-input pixels (an unflipped
    :class:`Placement`): ``x_input = x * scale_x + pad_x`` (and ``y`` alike); :func:`unletterbox_boxes` inverts it."""
    scale_x, scale_y = (scale, scale) if isinstance(scale, (int, float)) else scale
    return (boxes_xyxy * boxes_xyxy.new_tensor([scale_x, scale_y, scale_x, scale_y])
            + boxes_xyxy.new_tensor([pad[0], pad[1], pad[0], pad[1]]))


def unletterbox_boxes(boxes_xyxy: Tensor, scale: float | tuple[float, float], pad: tuple[float, float],
                      orig_size: tuple[int, int] | None = None) -> Tensor:
    """Map ``Tensor[n, 4]`` xyxy boxes from network-input pixels back to original-image pixels.

    The inverse of an unflipped :class:`Placement`: ``x = (x_input - pad_x) / scale_x`` (and ``y`` alike).

    Args:
        boxes_xyxy: ``Tensor[n, 4]`` in input pixels.
        scale: ``(scale_x, scale_y)`` as in the dataset's ``meta["scale"]``, or one number for both axes.
        pad: ``(pad_x, pad_y)`` as in ``meta["pad"]``.
        orig_size: ``(height, width)``; when given, the boxes are clipped to the original image (a prediction
            reaching into the grey padding otherwise ends outside it).

    Returns:
        ``Tensor[n, 4]`` xyxy in original pixels, same dtype as ``boxes_xyxy``.
    """
    scale_x, scale_y = (scale, scale) if isinstance(scale, (int, float)) else scale
    offset = boxes_xyxy.new_tensor([pad[0], pad[1], pad[0], pad[1]])
    factor = boxes_xyxy.new_tensor([scale_x, scale_y, scale_x, scale_y])
    boxes = (boxes_xyxy - offset) / factor
    if orig_size is not None:
        height, width = orig_size
        boxes = torch.stack((boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                             boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)), dim=1)
    return boxes
