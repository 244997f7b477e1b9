"""Transforms (yolo_loss/data/transforms.py): boxes stay on their pixels, the way back, clipping, darknet's colours."""

from __future__ import annotations

import colorsys
import math

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from yolo_loss.config.schema import AugmentConfig
from yolo_loss.data.transforms import (PAD_VALUE, darknet_augment, distort_hsv, letterbox, letterbox_size,
                                       unletterbox_boxes)

NO_COLOUR = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)


def white_box_image(height: int, width: int, box_xyxy: tuple[int, int, int, int]) -> torch.Tensor:
    """``uint8[3, H, W]`` black with the pixels of ``box_xyxy`` (x1, y1, x2, y2 exclusive ends) white."""
    image = torch.zeros((3, height, width), dtype=torch.uint8)
    x1, y1, x2, y2 = box_xyxy
    image[:, y1:y2, x1:x2] = 255
    return image


def bright_extent_xyxy(image: torch.Tensor) -> torch.Tensor:
    """Tight ``(x1, y1, x2, y2)`` of the pixels above 3/4 of the image's maximum: the white rectangle, not the
    grey padding (0.5 of white's value after any value scaling) nor the black background."""
    mask = image.mean(dim=0) > 0.75 * image.max()
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)


@pytest.mark.parametrize("height, width, box", [
    (120, 200, (30, 20, 110, 70)),    # landscape, downscaled to 96
    (200, 90, (5, 150, 60, 198)),     # portrait, box near the bottom
    (50, 70, (0, 0, 35, 25)),         # upscaled, box at the corner
])
def test_letterbox_keeps_the_box_on_its_pixels(height: int, width: int, box: tuple[int, int, int, int]) -> None:
    image = white_box_image(height, width, box)
    result = letterbox(image, torch.tensor([box], dtype=torch.float32), torch.tensor([4]), 96)
    assert result.image.shape == (3, 96, 96)
    assert result.labels.tolist() == [4]
    # Antialiased edges may move the thresholded edge by up to a pixel.
    torch.testing.assert_close(result.boxes_xyxy[0], bright_extent_xyxy(result.image), atol=1.0, rtol=0)


def test_letterbox_hand_values() -> None:
    """640 x 480 at S = 416: scale 0.65, resized to 416 x 312, padded (416 - 312) / 2 = 52 above and below.
    The box (100, 40, 300, 440) maps to (65, 26 + 52, 195, 286 + 52); the padding is grey 0.5."""
    result = letterbox(torch.zeros((3, 480, 640), dtype=torch.uint8), torch.tensor([[100.0, 40, 300, 440]]),
                       torch.tensor([0]), 416)
    assert (result.placement.scale_x, result.placement.scale_y) == (0.65, 0.65)
    assert result.placement.pad == (0, 52) and not result.placement.flip
    torch.testing.assert_close(result.boxes_xyxy, torch.tensor([[65.0, 78.0, 195.0, 338.0]]))
    assert torch.all(result.image[:, :52] == PAD_VALUE) and torch.all(result.image[:, 364:] == PAD_VALUE)
    assert torch.all(result.image[:, 52:364] == 0.0)


@pytest.mark.parametrize("height, width", [(480, 640), (427, 640), (333, 77), (31, 45), (416, 416)])
def test_letterbox_unletterbox_round_trip(height: int, width: int) -> None:
    """Original boxes -> letterbox -> unletterbox_boxes with the placement is the identity, also where the
    short side is rounded (427 * 0.65 = 277.55 -> 278 px, so the y scale is 278 / 427, not 0.65)."""
    gen = torch.Generator().manual_seed(height * width)
    corners = torch.rand((20, 2, 2), generator=gen) * torch.tensor([width, height])
    boxes = torch.cat((corners.min(dim=1).values, corners.max(dim=1).values + 8.0), dim=1)
    boxes = boxes.clamp(max=torch.tensor([width, height, width, height]))
    image = torch.zeros((3, height, width), dtype=torch.uint8)
    result = letterbox(image, boxes, torch.arange(20), 128)
    back = unletterbox_boxes(result.boxes_xyxy, result.placement.scale, result.placement.pad)
    torch.testing.assert_close(back, boxes[result.kept], atol=1e-3, rtol=0)
    assert result.kept.sum() >= 15  # only boxes under 1 input pixel go


def test_unletterbox_scalar_scale_and_clipping_to_the_image() -> None:
    """A single number scales both axes; orig_size clips a box reaching into the padding."""
    boxes = torch.tensor([[10.0, 0.0, 30.0, 60.0]])
    torch.testing.assert_close(unletterbox_boxes(boxes, 0.5, (10, 20)), torch.tensor([[0.0, -40.0, 40.0, 80.0]]))
    torch.testing.assert_close(unletterbox_boxes(boxes, 0.5, (10, 20), orig_size=(50, 100)),
                               torch.tensor([[0.0, 0.0, 40.0, 50.0]]))


def test_clipping_and_dropping_of_sub_pixel_boxes() -> None:
    """100 x 50 at S = 64: scale 0.64, pad_y = (64 - 32) / 2 = 16. Input-pixel widths: box 0 is 0.64 px (dropped),
    box 1 1.28 px (kept); box 2 starts 10 px left of the image: x in [-6.4, 12.8] is clipped to [0, 12.8];
    box 3 lies 20-21 px left of the image and is clipped to nothing (dropped)."""
    boxes = torch.tensor([[10.0, 10, 11, 20], [10.0, 10, 12, 20], [-10.0, 0, 20, 10], [-100.0, 0, -99, 10]])
    result = letterbox(torch.zeros((3, 50, 100), dtype=torch.uint8), boxes, torch.tensor([0, 1, 2, 3]), 64)
    assert result.kept.tolist() == [False, True, True, False]
    assert result.labels.tolist() == [1, 2]
    torch.testing.assert_close(result.boxes_xyxy, torch.tensor([[6.4, 22.4, 7.68, 28.8], [0.0, 16.0, 12.8, 22.4]]))


@pytest.mark.parametrize("seed", range(12))
def test_darknet_augment_keeps_the_box_on_its_pixels(seed: int) -> None:
    """Jitter, placement, colour and flip with a fixed seed: the box still encloses the white pixels."""
    image = white_box_image(90, 150, (40, 25, 100, 70))
    cfg = AugmentConfig(flip=0.5, jitter=0.3)
    torch.manual_seed(seed)
    result = darknet_augment(image, torch.tensor([[40.0, 25, 100, 70]]), torch.tensor([2]), 96, cfg)
    torch.testing.assert_close(result.boxes_xyxy[0], bright_extent_xyxy(result.image), atol=1.0, rtol=0)
    # The placement describes the same map: mirror back if flipped, then unletterbox.
    boxes = result.boxes_xyxy.clone()
    if result.placement.flip:
        boxes = torch.stack((96 - boxes[:, 2], boxes[:, 1], 96 - boxes[:, 0], boxes[:, 3]), dim=1)
    back = unletterbox_boxes(boxes, result.placement.scale, result.placement.pad)
    torch.testing.assert_close(back, torch.tensor([[40.0, 25, 100, 70]]), atol=1e-3, rtol=0)


def test_darknet_augment_flips_with_the_configured_probability() -> None:
    image = white_box_image(60, 60, (0, 0, 20, 60))
    flips = []
    for seed in range(40):
        torch.manual_seed(seed)
        result = darknet_augment(image, torch.tensor([[0.0, 0, 20, 60]]), torch.tensor([0]), 64,
                                 AugmentConfig(flip=0.5, jitter=0.0, **NO_COLOUR))
        flips.append(result.placement.flip)
        # Flipped, the white band is on the right of the canvas.
        assert (result.boxes_xyxy[0, 0] > 32) == result.placement.flip
    assert 10 < sum(flips) < 30
    torch.manual_seed(0)
    never = darknet_augment(image, torch.tensor([[0.0, 0, 20, 60]]), torch.tensor([0]), 64,
                            AugmentConfig(flip=0.0))
    assert not never.placement.flip


@pytest.mark.parametrize("height, width, jitter", [(90, 150, 0.0), (90, 150, 0.3), (200, 50, 0.2)])
def test_darknet_jitter_aspect_ratio_range_and_placement(height: int, width: int, jitter: float) -> None:
    """darknet's rule: new_ar in [W(1-j) / (H(1+j)), W(1+j) / (H(1-j))], the long side fills S = 96, and the
    image lies inside the canvas. With jitter 0 the aspect ratio is the image's (a letterbox at a random offset)."""
    image = torch.zeros((3, height, width), dtype=torch.uint8)
    low, high = width * (1 - jitter) / (height * (1 + jitter)), width * (1 + jitter) / (height * (1 - jitter))
    offsets = set()
    for seed in range(30):
        torch.manual_seed(seed)
        placement = darknet_augment(image, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), 96,
                                    AugmentConfig(jitter=jitter, **NO_COLOUR)).placement
        placed_width, placed_height = placement.scale_x * width, placement.scale_y * height
        assert max(placed_width, placed_height) == 96
        # Rounding to whole pixels moves the aspect ratio by at most half a pixel on the short side.
        slack = 0.5 / min(placed_width, placed_height)
        assert low * (1 - slack) - 1e-6 <= placed_width / placed_height <= high * (1 + slack) + 1e-6
        assert 0 <= placement.pad_x <= 96 - placed_width + 1e-6 and 0 <= placement.pad_y <= 96 - placed_height + 1e-6
        offsets.add(placement.pad)
    assert len(offsets) > 10  # the offset is random


def test_darknet_augment_is_reproducible_from_torch_seed() -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 70, 110), dtype=torch.uint8, generator=gen)
    boxes, labels = torch.tensor([[5.0, 5, 60, 50]]), torch.tensor([1])
    torch.manual_seed(123)
    first = darknet_augment(image, boxes, labels, 64, AugmentConfig())
    torch.manual_seed(123)
    second = darknet_augment(image, boxes, labels, 64, AugmentConfig())
    torch.manual_seed(124)
    other = darknet_augment(image, boxes, labels, 64, AugmentConfig())
    assert torch.equal(first.image, second.image) and torch.equal(first.boxes_xyxy, second.boxes_xyxy)
    assert not torch.equal(first.image, other.image)


def _colorsys_reference(image: torch.Tensor, hue_shift: float, saturation_scale: float,
                        value_scale: float) -> torch.Tensor:
    """darknet's distort_image pixel by pixel with Python's colorsys (float64), clamped at the end."""
    out = torch.empty_like(image, dtype=torch.float64)
    for i in range(image.shape[1]):
        for j in range(image.shape[2]):
            hue, saturation, value = colorsys.rgb_to_hsv(*image[:, i, j].tolist())
            hue = (hue + hue_shift) % 1.0
            rgb = colorsys.hsv_to_rgb(hue, saturation * saturation_scale, value * value_scale)
            out[:, i, j] = torch.tensor(rgb, dtype=torch.float64).clamp(0.0, 1.0)
    return out


@pytest.mark.parametrize("hue_shift, saturation_scale, value_scale", [
    (0.0, 1.0, 1.0), (0.1, 1.0, 1.0), (-0.37, 1.5, 0.7), (0.45, 0.6, 1.4), (0.015, 2.0, 1.0)])
def test_distort_hsv_matches_colorsys(hue_shift: float, saturation_scale: float, value_scale: float) -> None:
    """Saturation above 1 and value above 1 overflow and are clamped, as darknet's constrain_image does."""
    gen = torch.Generator().manual_seed(1)
    image = torch.rand((3, 9, 9), generator=gen, dtype=torch.float64)
    image[:, 0, :3] = torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64)[:, None]  # greys have no hue
    image[:, 1, 0] = torch.tensor([0.8, 0.8, 0.1], dtype=torch.float64)  # two channels tie for the maximum
    torch.testing.assert_close(distort_hsv(image, hue_shift, saturation_scale, value_scale),
                               _colorsys_reference(image, hue_shift, saturation_scale, value_scale),
                               atol=1e-9, rtol=0)


def test_distort_hsv_parity_with_torchvision_hue_and_brightness() -> None:
    """Hue alone is torchvision's adjust_hue; value alone is adjust_brightness (V scales every channel);
    grey stays grey with only its value scaled, which is what lets darknet_augment pad after distorting."""
    gen = torch.Generator().manual_seed(2)
    image = torch.rand((3, 32, 32), generator=gen)
    torch.testing.assert_close(distort_hsv(image, 0.23, 1.0, 1.0), F.adjust_hue(image, 0.23), atol=1e-5, rtol=0)
    torch.testing.assert_close(distort_hsv(image, 0.0, 1.0, 1.3), F.adjust_brightness(image, 1.3), atol=1e-6, rtol=0)
    grey = torch.full((3, 4, 4), PAD_VALUE)
    torch.testing.assert_close(distort_hsv(grey, 0.3, 1.5, 0.8), torch.full((3, 4, 4), PAD_VALUE * 0.8))


def test_darknet_augment_padding_is_darknets_distorted_grey() -> None:
    """darknet distorts the whole canvas: the padding is grey times the value scale, the same in all channels."""
    image = torch.full((3, 40, 100), 200, dtype=torch.uint8)  # wide: padding above and below
    for seed in range(5):
        torch.manual_seed(seed)
        result = darknet_augment(image, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), 64,
                                 AugmentConfig(hsv_v=0.9, jitter=0.0))
        corner = result.image[:, 0, 0] if result.placement.pad_y > 0 else result.image[:, -1, -1]
        assert torch.all(corner == corner[0]) and not math.isclose(float(corner[0]), PAD_VALUE, abs_tol=1e-4)
        value_scale = float(corner[0]) / PAD_VALUE
        assert 1 / 1.9 - 1e-6 <= value_scale <= 1.9 + 1e-6


def test_letterbox_size_rounds_the_short_side() -> None:
    assert letterbox_size(480, 640, 416) == (312, 416)
    assert letterbox_size(427, 640, 416) == (278, 416)  # 277.55 rounds up
    assert letterbox_size(1000, 3, 64) == (64, 1)  # never zero
