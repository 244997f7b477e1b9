"""Darknet-53, the YOLOv3 backbone (Redmon and Farhadi, "YOLOv3: An Incremental Improvement", table 1),
with width and depth multipliers for small CPU runs.

At ``width=1.0, depth=1.0`` this is exactly darknet's ``yolov3.cfg`` up to layer 74: a 3x3 32 stem, then five
stages, each a stride-2 3x3 convolution followed by 1, 2, 8, 8, 4 residual blocks (52 convolutions). Every
convolution is conv (no bias) -> BatchNorm -> LeakyReLU(0.1), as darknet's ``batch_normalize=1,
activation=leaky``.

Modules are registered in darknet's layer order, so iterating ``modules()`` visits the convolutions and their
BatchNorms in the order a darknet ``.weights`` file stores them.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

# BatchNorm settings. eps 1e-5 is darknet's GPU path (cuDNN, eps .00001; its CPU path adds 1e-6 to the standard
# deviation instead), so converted weights reproduce darknet's GPU outputs. momentum 0.03 (ultralytics' YOLOv3 value,
# not torch's default 0.1) lies between darknet's 0.01, whose running statistics need several hundred iterations to
# settle (a large part of a short CPU run), and torch's 0.1, which makes them follow the last few batches of 16.
BN_EPS = 1e-5
BN_MOMENTUM = 0.03
LEAKY_SLOPE = 0.1

STAGE_CHANNELS = (64, 128, 256, 512, 1024)
STAGE_BLOCKS = (1, 2, 8, 8, 4)
STEM_CHANNELS = 32


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded half up to a multiple of ``divisor``, at least ``divisor``.

    A multiple of 8 keeps the convolutions on the fast paths of the CPU and GPU kernels.
    """
    return max(divisor, math.floor(channels * width / divisor + 0.5) * divisor)


def scale_depth(blocks: int, depth: float) -> int:
    """``blocks * depth`` rounded half up, at least 1 (half up rather than Python's banker's rounding, so
    that 2 blocks at depth 1.25 give 3, not 2)."""
    return max(1, math.floor(blocks * depth + 0.5))


class ConvBNAct(nn.Module):
    """Conv2d (no bias: BatchNorm's shift replaces it) -> BatchNorm2d -> LeakyReLU(0.1), padding ``k // 2``.

    ``Tensor[B, in_channels, H, W]`` -> ``Tensor[B, out_channels, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        # In place: the activation's backward only needs its own output, so the BatchNorm output can be reused.
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    """Darknet's residual block: 1x1 conv to half the channels, 3x3 conv back, added to the input
    (``[shortcut] from=-3 activation=linear``). ``Tensor[B, C, H, W]`` -> ``Tensor[B, C, H, W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = ConvBNAct(channels, channels // 2, 1)
        self.expand = ConvBNAct(channels // 2, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.expand(self.reduce(x))


class Darknet53(nn.Module):
    """Darknet-53 without its classifier; returns the stride 8, 16 and 32 feature maps.

    Channels are ``64, 128, 256, 512, 1024`` times ``width`` (see :func:`scale_channels`), residual blocks per
    stage ``1, 2, 8, 8, 4`` times ``depth`` (see :func:`scale_depth`); the stem has ``32 * width`` channels.

    Args:
        width: channel multiplier; 1.0 is Darknet-53.
        depth: residual-block multiplier; 1.0 is Darknet-53.

    Attributes:
        out_channels: channels of the three returned maps (strides 8, 16, 32); ``(256, 512, 1024)`` at width 1.
        blocks_per_stage: residual blocks in each of the five stages; ``(1, 2, 8, 8, 4)`` at depth 1.
    """

    def __init__(self, width: float = 1.0, depth: float = 1.0) -> None:
        super().__init__()
        if width <= 0 or depth <= 0:
            raise ValueError(f"width and depth must be positive, got width={width}, depth={depth}")
        channels = [scale_channels(c, width) for c in STAGE_CHANNELS]
        self.blocks_per_stage = tuple(scale_depth(n, depth) for n in STAGE_BLOCKS)
        self.out_channels = (channels[2], channels[3], channels[4])

        self.stem = ConvBNAct(3, scale_channels(STEM_CHANNELS, width), 3)
        stages = []
        in_channels = self.stem.conv.out_channels
        for out_channels, num_blocks in zip(channels, self.blocks_per_stage):
            # The downsampling convolution first, then the blocks: darknet's cfg order, hence the weights order.
            stages.append(nn.Sequential(ConvBNAct(in_channels, out_channels, 3, stride=2),
                                        *(Residual(out_channels) for _ in range(num_blocks))))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``Tensor[B, 3, H, W]`` (H, W multiples of 32) -> maps at strides 8, 16, 32:
        ``Tensor[B, out_channels[k], H / s, W / s]`` for s = 8, 16, 32."""
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features[2], features[3], features[4]
