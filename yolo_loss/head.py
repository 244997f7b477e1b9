"""The head description: what a YOLOv3 head's raw outputs mean, in one object shared by everything that reads them.

The loss (:class:`~yolo_loss.losses.criterion.YoloCriterion`), inference
(:func:`~yolo_loss.eval.postprocess.postprocess`), the TensorBoard drawing and histograms, the darknet exporter and
``eval.py`` all take a :class:`HeadSpec`; none of them reads anchors, strides or the class activation from anywhere
else. :func:`build_head` makes it once from a config and the data set's class count, so a model is evaluated with the
meaning it was trained with: a model trained with a softmax over its classes (``loss.cls: ce``, ``poly1``) is scored
``obj * softmax(class logits)``, one trained with independent sigmoids (``bce``, ``focal``) ``obj * sigmoid(class
logit)``.

A head map of one level is ``Tensor[B, A * (5 + C), H, W]``, channels grouped per anchor as
``tx, ty, tw, th, to, tc_0 .. tc_{C-1}``; the decode rule turns ``tx .. th`` into a box (``yolo_loss/decode.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from yolo_loss.config.components import component
from yolo_loss.config.schema import DECODE_RULES, Config, ModelConfig
from yolo_loss.decode import STRIDES, centre_margin, decode_cxcywh, decode_level, xy_sigmoid_target

CLASS_ACTIVATIONS = ("sigmoid", "softmax")


@dataclass(frozen=True)
class HeadSpec:
    """What the raw head maps mean.

    Attributes:
        anchors_wh: per level, per anchor, ``(w, h)`` in input pixels (levels in the order of ``strides``).
        strides: input pixels per cell of each level.
        num_classes: C.
        class_activation: ``"sigmoid"`` (independent classifiers) or ``"softmax"`` (one distribution over the
            classes): how class logits become probabilities, in the loss's diagnostics and at inference.
        decode: the rule from raw ``tx, ty, tw, th`` to a box, ``"darknet"``, ``"yolov5"`` or ``"linear"``
            (``yolo_loss/decode.py``).
        scale_x_y: AlexeyAB's ``scale_x_y`` per level (darknet's rule; yolov4.cfg 1.2 / 1.1 / 1.05 from stride 8);
            ``()`` is 1 on every level.
    """

    anchors_wh: tuple[tuple[tuple[float, float], ...], ...]
    strides: tuple[int, ...]
    num_classes: int
    class_activation: str = "sigmoid"
    decode: str = "darknet"
    scale_x_y: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale_x_y", tuple(float(s) for s in self.scale_x_y) or (1.0,) * len(self.strides))
        if len(self.scale_x_y) != len(self.strides) or min(self.scale_x_y) < 1.0:
            raise ValueError(f"scale_x_y needs one value >= 1 per level, got {self.scale_x_y}")
        if self.decode != "darknet" and set(self.scale_x_y) != {1.0}:
            raise ValueError(f"scale_x_y belongs to darknet's decode, not to {self.decode}'s")
        if len(self.anchors_wh) != len(self.strides):
            raise ValueError(f"{len(self.anchors_wh)} anchor groups for {len(self.strides)} strides")
        if len({len(level) for level in self.anchors_wh}) != 1 or not self.anchors_wh[0]:
            raise ValueError("every level needs the same, positive number of anchors")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")
        if self.class_activation not in CLASS_ACTIVATIONS:
            raise ValueError(f"class_activation {self.class_activation!r}; valid: {', '.join(CLASS_ACTIVATIONS)}")
        if self.decode not in DECODE_RULES:
            raise ValueError(f"decode {self.decode!r}; valid: {', '.join(DECODE_RULES)}")

    @classmethod
    def from_anchors(cls, anchors_per_level: list[Tensor] | list[list[list[float]]], **kwargs) -> "HeadSpec":
        """From one ``Tensor[A, 2]`` (or nested list) of anchor ``(w, h)`` pixels per level."""
        return cls(anchors_wh=tuple(tuple((float(w), float(h)) for w, h in torch.as_tensor(level).view(-1, 2).tolist())
                                    for level in anchors_per_level), **kwargs)

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def num_anchors(self) -> int:
        """A, anchors per cell on each level."""
        return len(self.anchors_wh[0])

    @property
    def channels(self) -> int:
        """Channels of each level's head map, ``A * (5 + C)``."""
        return self.num_anchors * (5 + self.num_classes)

    def anchors(self, like: Tensor | None = None) -> list[Tensor]:
        """One ``Tensor[A, 2]`` of anchor ``(w, h)`` pixels per level, on the device and in the dtype of ``like``
        (float32 on the CPU without it)."""
        dtype, device = (like.dtype, like.device) if like is not None else (torch.float32, None)
        return [torch.tensor(level, dtype=dtype, device=device) for level in self.anchors_wh]

    def decode_box(self, raw_box: Tensor, grid_xy: Tensor, anchor_wh: Tensor, level: int) -> Tensor:
        """:func:`~yolo_loss.decode.decode_cxcywh` by this head's rule on level ``level``."""
        return decode_cxcywh(raw_box, grid_xy, anchor_wh, self.strides[level], rule=self.decode,
                             scale_x_y=self.scale_x_y[level])

    def centre_margin(self, level: int) -> float:
        """Cells a decoded centre of level ``level`` can lie outside its own cell
        (:func:`~yolo_loss.decode.centre_margin`)."""
        return centre_margin(self.decode, self.scale_x_y[level])

    def xy_target(self, offset: Tensor, level: int) -> Tensor:
        """The x, y terms' sigmoid target for truth centres at cell offsets ``offset``
        (:func:`~yolo_loss.decode.xy_sigmoid_target`)."""
        return xy_sigmoid_target(offset, self.decode, self.scale_x_y[level])

    def class_probabilities(self, class_logits: Tensor) -> Tensor:
        """``Tensor[..., C]`` logits -> probabilities by :attr:`class_activation` (softmax over the last dimension)."""
        return class_logits.softmax(dim=-1) if self.class_activation == "softmax" else class_logits.sigmoid()


def anchors_per_level(cfg: "ModelConfig", img_size: int) -> list[Tensor]:
    """The config's anchors for an input of ``img_size`` pixels, one ``Tensor[A, 2]`` (w, h in input pixels) per
    level, strides 8, 16, 32 in order.

    The anchors are given for ``cfg.anchors_img_size`` pixels and scaled by ``img_size / cfg.anchors_img_size``
    (the objects of a letterboxed image shrink with the input); ``anchors_img_size == 0`` uses them as given.
    Computed in float32, the precision the head description keeps them in.
    """
    scale = img_size / cfg.anchors_img_size if cfg.anchors_img_size else 1.0
    anchors_wh = torch.tensor(cfg.anchors, dtype=torch.float32) * scale
    return list(anchors_wh.view(len(STRIDES), -1, 2).unbind(0))


def class_activation(loss_cls: str) -> str:
    """How a model trained with ``loss.cls: <loss_cls>`` turns class logits into probabilities: ``"softmax"`` for a
    component whose registry entry has the ``softmax`` property (``ce``, ``poly1``), else ``"sigmoid"``. The one
    place this is decided."""
    return "softmax" if component("cls", loss_cls).softmax else "sigmoid"


def build_head(cfg: "Config", num_classes: int) -> HeadSpec:
    """The head description of a config for a data set of ``num_classes`` classes: the anchors scaled to
    ``data.img_size``, the model's strides 8, 16, 32, its decode rule and ``scale_x_y``, and the class activation of
    ``loss.cls`` (:func:`class_activation`)."""
    return HeadSpec.from_anchors(anchors_per_level(cfg.model, cfg.data.img_size), strides=STRIDES,
                                 num_classes=num_classes, class_activation=class_activation(cfg.loss.cls),
                                 decode=cfg.model.decode, scale_x_y=tuple(cfg.model.scale_x_y))


def decode_predictions(preds: list[Tensor], head: HeadSpec) -> tuple[Tensor, Tensor, Tensor]:
    """Decode all levels and concatenate them: boxes ``Tensor[B, N, 4]`` cxcywh pixels, objectness probabilities
    ``Tensor[B, N]`` and class probabilities ``Tensor[B, N, C]`` by the head's class activation (independent
    sigmoids, or a softmax over the classes of each row)."""
    decoded = [decode_level(p, a, s, rule=head.decode, scale_x_y=scale)
               for p, a, s, scale in zip(preds, head.anchors(like=preds[0]), head.strides, head.scale_x_y)]
    boxes = torch.cat([d[0] for d in decoded], dim=1)
    obj = torch.cat([d[1] for d in decoded], dim=1).sigmoid()
    cls = head.class_probabilities(torch.cat([d[2] for d in decoded], dim=1))
    return boxes, obj, cls
