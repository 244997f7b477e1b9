"""The images a run shows in TensorBoard: one validation sample per image, truth and prediction side by side under a
header, enlarged 2x with labels in a 24 px font, legible at TensorBoard's default card size; and the first
training batch with its (augmented) targets.

Boxes and labels are drawn with Pillow (its built-in FreeType font at a chosen size; torchvision's
``draw_bounding_boxes`` only has an 11 px bitmap font without a font file).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

SCALE = 2  # every drawn image is enlarged this many times (nearest), so that thin boxes and labels stay legible
FONT_SIZE = 24  # at SCALE 2: about 12 px of the image, and legible where TensorBoard shows the panel at card width
HEADER_HEIGHT = 34
GAP = 6
TRUTH_COLOR, PREDICTION_COLOR, HEADER_COLOR = (0, 200, 0), (235, 40, 40), (40, 40, 40)
# Drawn predictions: those scoring at least this (darknet's display threshold), the best few per image.
DRAW_SCORE_THRESH = 0.25
DRAW_MAX_DETECTIONS = 20


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def to_picture(image: Tensor) -> Image.Image:
    """``Tensor[3, H, W]`` float in [0, 1] -> an RGB Pillow image enlarged :data:`SCALE` times."""
    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(array)
    return picture.resize((picture.width * SCALE, picture.height * SCALE), Image.Resampling.NEAREST)


def draw_boxes(picture: Image.Image, boxes_xyxy: Tensor, labels: list[str], color: tuple[int, int, int]) -> None:
    """Draw boxes given in the pixels of the image before enlargement, each with its label on a filled tag."""
    draw, font = ImageDraw.Draw(picture), _font()
    for box, label in zip((boxes_xyxy.detach().float().cpu() * SCALE).tolist(), labels):
        x1, y1, x2, y2 = (min(max(v, 0), limit - 1) for v, limit in
                          zip(box, (picture.width, picture.height, picture.width, picture.height)))
        draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=color, width=2)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tag_y = y1 - (bottom - top) - 4 if y1 >= bottom - top + 4 else y1  # above the box, or inside at the top
        draw.rectangle((x1, tag_y, x1 + right - left + 4, tag_y + bottom - top + 4), fill=color)
        draw.text((x1 + 2 - left, tag_y + 2 - top), label, fill=(255, 255, 255), font=font)


def _with_header(picture: Image.Image, text: str) -> Image.Image:
    framed = Image.new("RGB", (picture.width, picture.height + HEADER_HEIGHT), (255, 255, 255))
    framed.paste(picture, (0, HEADER_HEIGHT))
    ImageDraw.Draw(framed).text((4, 4), text, fill=HEADER_COLOR, font=_font())
    return framed


def truth_and_prediction_panel(image: Tensor, truth: Tensor, boxes_xyxy: Tensor, scores: Tensor, labels: Tensor,
                               class_names: list[str], title: str = "") -> Tensor:
    """``uint8[3, H', W']``: ``image`` twice, side by side under a header each: the ground truth (``truth``:
    ``Tensor[n, 5]`` rows ``(class, cx, cy, w, h)`` normalised, as the dataset gives them) in green on the left,
    the detections (input pixels, sorted by score) scoring at least :data:`DRAW_SCORE_THRESH` in red on the right,
    labelled ``class score``."""
    height, width = image.shape[-2:]
    truth_xyxy = torch.cat((truth[:, 1:3] - truth[:, 3:5] / 2, truth[:, 1:3] + truth[:, 3:5] / 2), dim=1)
    truth_xyxy = truth_xyxy * truth_xyxy.new_tensor([width, height, width, height])
    left = to_picture(image)
    draw_boxes(left, truth_xyxy, [class_names[int(c)] for c in truth[:, 0].tolist()], TRUTH_COLOR)
    shown = (scores >= DRAW_SCORE_THRESH).nonzero().flatten()[:DRAW_MAX_DETECTIONS]
    right = to_picture(image)
    draw_boxes(right, boxes_xyxy[shown], [f"{class_names[int(c)]} {s:.2f}" for c, s in
                                          zip(labels[shown].tolist(), scores[shown].tolist())], PREDICTION_COLOR)
    left = _with_header(left, f"truth{': ' + title if title else ''} ({truth.shape[0]})")
    right = _with_header(right, f"prediction, score >= {DRAW_SCORE_THRESH} ({len(shown)})")
    panel = Image.new("RGB", (left.width + GAP + right.width, left.height), (255, 255, 255))
    panel.paste(left, (0, 0))
    panel.paste(right, (left.width + GAP, 0))
    return torch.from_numpy(np.asarray(panel).copy()).permute(2, 0, 1)


def batch_with_targets(images: Tensor, targets: Tensor, class_names: list[str], count: int) -> Tensor:
    """``uint8[N, 3, H', W']``: the first ``count`` images of a training batch with their targets (``Tensor[n, 6]``
    rows ``(image, class, cx, cy, w, h)`` normalised) drawn in green, enlarged :data:`SCALE` times."""
    height, width = images.shape[-2:]
    images, targets = images[:count].detach().float().cpu(), targets.detach().float().cpu()
    drawn = []
    for index, image in enumerate(images):
        rows = targets[targets[:, 0] == index]
        xyxy = torch.cat((rows[:, 2:4] - rows[:, 4:6] / 2, rows[:, 2:4] + rows[:, 4:6] / 2), dim=1)
        xyxy = xyxy * xyxy.new_tensor([width, height, width, height])
        picture = to_picture(image)
        draw_boxes(picture, xyxy, [class_names[int(c)] for c in rows[:, 1].tolist()], TRUTH_COLOR)
        drawn.append(torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1))
    return torch.stack(drawn)
