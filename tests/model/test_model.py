"""The YOLOv3 model: darknet's layer list and parameter count, output shapes, prior bias init, gradients,
deterministic inference, width/depth scaling and the anchors of a config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from yolo_loss.config.schema import ModelConfig
from yolo_loss.model import Darknet53, Residual, YOLOv3, build_model

NANO = {"width": 0.25, "depth": 0.33}  # the default CPU setting (configs/shapes_nano.yaml)
YOLOV3_COCO_PARAMETERS = 61_949_149  # yolov3.cfg with 80 classes, as counted by the PyTorch ports


def yolov3_cfg_convs(num_classes: int) -> list[dict]:
    """The convolutional layers of darknet's yolov3.cfg, in file order, with their input channels worked out the
    way darknet's parser does (a route concatenates the outputs of the layers it names, absolute or relative).

    Written from the cfg, independently of :mod:`yolo_loss.model`: the absolute route indices 61 and 36 only land
    on the ends of the stride-16 and stride-8 stages if the backbone has exactly darknet's layer count.
    """
    layers: list[tuple] = []

    def conv(filters: int, size: int, stride: int = 1, bn: bool = True) -> None:
        layers.append(("convolutional", filters, size, stride, bn))

    conv(32, 3)
    for filters, blocks in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        conv(filters, 3, 2)
        for _ in range(blocks):
            conv(filters // 2, 1)
            conv(filters, 3)
            layers.append(("shortcut", -3))
    outputs = 3 * (5 + num_classes)
    for width, route_to in ((512, None), (256, 61), (128, 36)):
        if route_to is not None:
            layers.append(("route", (-4,)))  # the fifth 1x1 of the previous level
            conv(width, 1)
            layers.append(("upsample",))
            layers.append(("route", (-1, route_to)))
        for size in (1, 3, 1, 3, 1, 3):
            conv(width if size == 1 else 2 * width, size)
        conv(outputs, 1, bn=False)
        layers.append(("yolo",))

    channels: list[int] = []
    convs = []
    in_channels = 3
    for index, layer in enumerate(layers):
        kind = layer[0]
        if kind == "convolutional":
            _, filters, size, stride, bn = layer
            convs.append({"in": in_channels, "out": filters, "size": size, "stride": stride, "bn": bn})
            out = filters
        elif kind == "route":
            out = sum(channels[i if i >= 0 else index + i] for i in layer[1])
        elif kind == "yolo":
            out = 0  # a yolo layer's output is not routed on by any later layer
        else:  # shortcut and upsample keep the channels
            out = channels[-1]
        channels.append(out)
        in_channels = out
    return convs


def conv_parameters(conv: dict) -> int:
    """Weights, plus BatchNorm scale and shift, or plus the bias of a linear output convolution."""
    return conv["size"] ** 2 * conv["in"] * conv["out"] + (2 if conv["bn"] else 1) * conv["out"]


@pytest.fixture(scope="module")
def full_model() -> YOLOv3:
    torch.manual_seed(0)
    return YOLOv3(80)


@pytest.fixture(scope="module")
def nano_models() -> dict[int, YOLOv3]:
    torch.manual_seed(0)
    return {num_classes: YOLOv3(num_classes, **NANO).eval() for num_classes in (1, 20)}


def test_cfg_layer_list_gives_the_published_parameter_count():
    convs = yolov3_cfg_convs(80)
    assert len(convs) == 75  # 52 in Darknet-53, 23 in the neck and heads
    assert sum(conv_parameters(c) for c in convs) == YOLOV3_COCO_PARAMETERS


def test_full_model_is_yolov3_cfg_layer_by_layer(full_model):
    """Same parameter count, and the convolutions (then each one's BatchNorm) appear in ``modules()`` in the cfg's
    order with the cfg's shapes: what loading a darknet .weights file layer by layer relies on."""
    assert sum(p.numel() for p in full_model.parameters()) == YOLOV3_COCO_PARAMETERS
    backbone_convs = [m for m in full_model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert len(backbone_convs) == 52

    ordered = [m for m in full_model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    expected = yolov3_cfg_convs(80)
    position = 0
    for index, conv in enumerate(expected):
        module = ordered[position]
        assert isinstance(module, nn.Conv2d), f"cfg conv {index}: found {module}"
        got = {"in": module.in_channels, "out": module.out_channels, "size": module.kernel_size[0],
               "stride": module.stride[0], "bn": module.bias is None}
        assert got == conv, f"cfg conv {index}"
        assert module.padding[0] == conv["size"] // 2
        position += 1
        if conv["bn"]:
            bn = ordered[position]
            assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv["out"], f"BatchNorm of cfg conv {index}"
            position += 1
    assert position == len(ordered)


@pytest.mark.parametrize("num_classes", [1, 20])
@pytest.mark.parametrize("height,width", [(64, 64), (96, 96), (160, 160), (320, 320), (64, 128)])
def test_output_shapes(nano_models, num_classes, height, width):
    model = nano_models[num_classes]
    with torch.no_grad():
        preds = model(torch.randn(2, 3, height, width))
    channels = 3 * (5 + num_classes)
    assert [tuple(p.shape) for p in preds] == [(2, channels, height // s, width // s) for s in model.strides]
    assert model.strides == (8, 16, 32)


def test_full_model_output_shapes(full_model):
    full_model.eval()
    with torch.no_grad():
        preds = full_model(torch.randn(1, 3, 64, 96))
    assert [tuple(p.shape) for p in preds] == [(1, 255, 8, 12), (1, 255, 4, 6), (1, 255, 2, 3)]


def test_input_not_a_multiple_of_32_is_rejected(nano_models):
    with pytest.raises(ValueError, match="multiples of 32"):
        nano_models[1](torch.zeros(1, 3, 64, 80))


def test_neck_routes_and_concatenation_order():
    """darknet's ``[route] layers=-4`` takes the lateral branch from the fifth convolution of the block (not the
    3x3 before the output), and ``[route] layers=-1, 61`` (and ``-1, 36``) puts the nearest-upsampled map in front
    of the backbone map: the channel order the next convolution's darknet weights expect."""
    torch.manual_seed(0)
    model = YOLOv3(3, **NANO).eval()
    inputs: dict[nn.Module, torch.Tensor] = {}
    outputs: dict[nn.Module, object] = {}

    def keep(module, args, output):
        inputs[module], outputs[module] = args[0].detach().clone(), output

    for module in model.modules():
        if module is not model:
            module.register_forward_hook(keep)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    c3, c4, _ = outputs[model.backbone]
    routes = ((model.block_p5, model.lateral_p5, model.block_p4, c4),
              (model.block_p4, model.lateral_p4, model.block_p3, c3))
    for block, lateral, next_block, backbone_map in routes:
        assert torch.equal(inputs[lateral], outputs[block])
        upsampled = outputs[lateral].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        lateral_channels = upsampled.shape[1]
        assert torch.equal(inputs[next_block][:, :lateral_channels], upsampled)
        assert torch.equal(inputs[next_block][:, lateral_channels:], backbone_map)


def test_prior_bias_init():
    """sigmoid(bias) is the prior for objectness (0.01) and every class (0.2); box biases are 0.
    -ln((1 - 0.01) / 0.01) = -ln 99 = -4.59512."""
    num_classes, num_anchors = 4, 3
    model = YOLOv3(num_classes, **NANO, num_anchors=num_anchors, prior_obj=0.01, prior_cls=0.2)
    for output in (model.output_p3, model.output_p4, model.output_p5):
        bias = output.pred.bias.detach().view(num_anchors, 5 + num_classes)
        assert torch.equal(bias[:, :4], torch.zeros(num_anchors, 4))
        assert torch.allclose(bias[:, 4], torch.full((num_anchors,), -4.59512), atol=1e-5)
        assert torch.allclose(bias[:, 4].sigmoid(), torch.full((num_anchors,), 0.01), atol=1e-7)
        assert torch.allclose(bias[:, 5:].sigmoid(), torch.full((num_anchors, num_classes), 0.2), atol=1e-7)


def test_build_model_reads_the_config():
    cfg = ModelConfig(width=0.25, depth=0.33, prior_obj=0.05, prior_cls=0.3)
    model = build_model(cfg, num_classes=2)
    assert model.backbone.blocks_per_stage == (1, 1, 3, 3, 1)
    assert model.backbone.out_channels == (64, 128, 256)
    bias = model.output_p4.pred.bias.detach().view(3, 7)
    assert torch.allclose(bias[:, 4].sigmoid(), torch.full((3,), 0.05), atol=1e-7)
    assert torch.allclose(bias[:, 5:].sigmoid(), torch.full((3, 2), 0.3), atol=1e-7)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    model = YOLOv3(3, **NANO).train()
    preds = model(torch.randn(2, 3, 64, 64))
    # A random weighting: a plain sum would give the BatchNorm'd layers an almost zero gradient by symmetry.
    loss = sum((p * torch.randn_like(p)).sum() for p in preds)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_eval_forward_is_deterministic_and_per_image(nano_models):
    """In eval mode BatchNorm uses its running statistics: two runs agree exactly, an image's output does not
    depend on the rest of its batch, and the running statistics do not move."""
    model = nano_models[20]
    images = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    running_mean = model.backbone.stem.bn.running_mean.clone()
    with torch.no_grad():
        first, second, alone = model(images), model(images), model(images[1:2])
    for a, b, c in zip(first, second, alone):
        assert torch.equal(a, b)
        assert torch.allclose(a[1:2], c, atol=1e-5, rtol=1e-4)
    assert torch.equal(model.backbone.stem.bn.running_mean, running_mean)


def test_channels_last_input_gives_the_same_outputs(nano_models):
    model = nano_models[1]
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(images)
        channels_last = model(images.contiguous(memory_format=torch.channels_last))
    for a, b in zip(reference, channels_last):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("width,depth,blocks,channels,stem", [
    (1.0, 1.0, (1, 2, 8, 8, 4), (256, 512, 1024), 32),
    (0.25, 0.33, (1, 1, 3, 3, 1), (64, 128, 256), 8),  # 2.64 -> 3, 1.32 -> 1, 0.66 -> 1, 0.33 -> 1 (at least 1)
    (0.3, 0.5, (1, 1, 4, 4, 2), (80, 152, 304), 8),  # 256 * 0.3 = 76.8 -> 80, 512 * 0.3 = 153.6 -> 152
    (0.1, 1.25, (1, 3, 10, 10, 5), (24, 48, 104), 8),  # 2.5 -> 3 (half up); 32 * 0.1 = 3.2 -> 8 (at least 8)
])
def test_darknet53_width_and_depth_scaling(width, depth, blocks, channels, stem):
    backbone = Darknet53(width=width, depth=depth)
    assert backbone.blocks_per_stage == blocks
    assert backbone.out_channels == channels
    assert backbone.stem.conv.out_channels == stem
    assert tuple(sum(isinstance(m, Residual) for m in stage) for stage in backbone.stages) == blocks
    backbone.eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [(1, c, 64 // s, 96 // s) for c, s in zip(channels, (8, 16, 32))]


def test_residual_adds_its_input():
    """With the last BatchNorm's scale and shift at 0, the branch outputs leaky(0) = 0: the block is the identity."""
    block = Residual(16).eval()
    with torch.no_grad():
        block.expand.bn.weight.zero_()
        block.expand.bn.bias.zero_()
        x = torch.randn(2, 16, 8, 8)
        assert torch.equal(block(x), x)
        block.expand.bn.bias.fill_(1.0)  # now the branch adds exactly 1 everywhere
        assert torch.allclose(block(x), x + 1.0)
