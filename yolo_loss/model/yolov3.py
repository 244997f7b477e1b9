"""The YOLOv3 detector: Darknet-53, darknet's neck with two upsampling paths, and three output convolutions.

The layout is darknet's ``yolov3.cfg`` (layers 75 to 106), with every channel count scaled by ``width``:

- stride 32: five alternating 1x1/3x3 convolutions (512/1024), then a 3x3 1024 and a 1x1 output with bias;
- from the 512 map of the five (``[route] layers=-4``): a 1x1 256, nearest upsampling x2, concatenated in front of
  the stride-16 backbone map (``[route] layers=-1, 61``), five convolutions (256/512), a 3x3 512, output;
- the same from the 256 map: 1x1 128, upsampling, concatenated in front of the stride-8 map, five (128/256),
  3x3 256, output.

Modules are registered in that order (backbone, then P5 block, P5 output, P5 lateral, P4 block, ...), so
``modules()`` visits the convolutions in darknet's layer order, which is the order of a ``.weights`` file.

Output channels are grouped per anchor, ``tx, ty, tw, th, to, tc_0 .. tc_{C-1}``, the layout
:func:`yolo_loss.decode.per_anchor_view` reads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yolo_loss.config.schema import ModelConfig
from yolo_loss.decode import STRIDES
from yolo_loss.model.darknet import ConvBNAct, Darknet53, scale_channels

BOX_CHANNELS = 4  # tx, ty, tw, th; objectness follows, then the classes


def prior_logit(prior: float) -> float:
    """The bias whose sigmoid is ``prior``: ``-ln((1 - prior) / prior)`` (Lin et al., focal loss, section 4.1)."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"a prior probability must be in (0, 1), got {prior}")
    return -math.log((1.0 - prior) / prior)


def five_convs(in_channels: int, channels: int) -> nn.Sequential:
    """darknet's neck block: 1x1 ``channels``, 3x3 ``2 * channels``, 1x1, 3x3, 1x1.
    ``Tensor[B, in_channels, H, W]`` -> ``Tensor[B, channels, H, W]``."""
    wide = 2 * channels
    return nn.Sequential(
        ConvBNAct(in_channels, channels, 1), ConvBNAct(channels, wide, 3),
        ConvBNAct(wide, channels, 1), ConvBNAct(channels, wide, 3),
        ConvBNAct(wide, channels, 1),
    )


class YoloOutput(nn.Module):
    """A 3x3 ``2 * channels`` ConvBNAct, then a linear 1x1 conv with bias to ``num_anchors * (5 + C)`` raw logits.
    ``Tensor[B, channels, H, W]`` -> ``Tensor[B, A * (5 + C), H, W]``."""

    def __init__(self, channels: int, num_anchors: int, num_classes: int) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.conv = ConvBNAct(channels, 2 * channels, 3)
        self.pred = nn.Conv2d(2 * channels, num_anchors * (BOX_CHANNELS + 1 + num_classes), 1, bias=True)

    @torch.no_grad()
    def init_prior_bias(self, prior_obj: float, prior_cls: float) -> None:
        """Box biases 0; objectness and class biases ``prior_logit(prior)``, so that at the start every cell
        predicts an object with probability ``prior_obj`` and each class with ``prior_cls``: the many negatives
        then do not swamp the first updates (focal-loss paper, section 4.1)."""
        bias = self.pred.bias.view(self.num_anchors, -1)
        bias[:, :BOX_CHANNELS] = 0.0
        bias[:, BOX_CHANNELS] = prior_logit(prior_obj)
        bias[:, BOX_CHANNELS + 1:] = prior_logit(prior_cls)

    def forward(self, x: Tensor) -> Tensor:
        return self.pred(self.conv(x))


class YOLOv3(nn.Module):
    """YOLOv3 (Redmon and Farhadi, 2018) with width and depth multipliers; exactly yolov3.cfg at 1.0 and 1.0
    (61,949,149 parameters for 80 classes).

    Args:
        num_classes: C, the number of classes.
        width: channel multiplier for the backbone and the neck.
        depth: residual-block multiplier for the backbone.
        num_anchors: A, anchors per cell on each level.
        prior_obj: initial objectness probability (sets the objectness biases).
        prior_cls: initial probability of each class (sets the class biases).

    Attributes:
        strides: input pixels per cell of the three outputs, ``(8, 16, 32)``.
    """

    strides: tuple[int, int, int] = STRIDES

    def __init__(self, num_classes: int, *, width: float = 1.0, depth: float = 1.0, num_anchors: int = 3,
                 prior_obj: float = 0.01, prior_cls: float = 0.01) -> None:
        super().__init__()
        if num_classes < 1 or num_anchors < 1:
            raise ValueError(f"num_classes and num_anchors must be positive, got {num_classes}, {num_anchors}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        # The 1x1 width of each level's neck block (128, 256, 512 at width 1); the 3x3s have twice as many.
        channels_p3, channels_p4, channels_p5 = (scale_channels(c, width) for c in (128, 256, 512))

        # Registration order is darknet's layer order (see the module docstring): do not reorder.
        self.backbone = Darknet53(width=width, depth=depth)
        in_p3, in_p4, in_p5 = self.backbone.out_channels
        self.block_p5 = five_convs(in_p5, channels_p5)
        self.output_p5 = YoloOutput(channels_p5, num_anchors, num_classes)
        self.lateral_p5 = ConvBNAct(channels_p5, channels_p4, 1)
        self.block_p4 = five_convs(channels_p4 + in_p4, channels_p4)
        self.output_p4 = YoloOutput(channels_p4, num_anchors, num_classes)
        self.lateral_p4 = ConvBNAct(channels_p4, channels_p3, 1)
        self.block_p3 = five_convs(channels_p3 + in_p3, channels_p3)
        self.output_p3 = YoloOutput(channels_p3, num_anchors, num_classes)

        for output in (self.output_p3, self.output_p4, self.output_p5):
            output.init_prior_bias(prior_obj, prior_cls)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Raw head maps of a batch of images.

        Args:
            x: ``Tensor[B, 3, H, W]``, H and W multiples of 32.

        Returns:
            ``[Tensor[B, A * (5 + C), H / 8, W / 8], Tensor[.., H / 16, W / 16], Tensor[.., H / 32, W / 32]]``,
            raw logits in the order of :attr:`strides`.
        """
        height, width = x.shape[-2:]
        if height % 32 or width % 32:
            raise ValueError(f"input height and width must be multiples of 32, got {height} x {width}")
        c3, c4, c5 = self.backbone(x)
        x5 = self.block_p5(c5)
        # The upsampled path goes first in the concatenation ([route] layers=-1, 61): the weights of the next
        # convolution expect its channels in that order.
        x4 = self.block_p4(torch.cat((F.interpolate(self.lateral_p5(x5), scale_factor=2.0, mode="nearest"), c4), 1))
        x3 = self.block_p3(torch.cat((F.interpolate(self.lateral_p4(x4), scale_factor=2.0, mode="nearest"), c3), 1))
        return [self.output_p3(x3), self.output_p4(x4), self.output_p5(x5)]


def build_model(cfg: ModelConfig, num_classes: int) -> YOLOv3:
    """The YOLOv3 of a :class:`ModelConfig`; the anchors are split evenly over the three levels."""
    return YOLOv3(num_classes, width=cfg.width, depth=cfg.depth, num_anchors=len(cfg.anchors) // len(STRIDES),
                  prior_obj=cfg.prior_obj, prior_cls=cfg.prior_cls)

