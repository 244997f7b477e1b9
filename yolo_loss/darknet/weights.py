"""darknet's ``.weights`` files: read them into :class:`~yolo_loss.model.YOLOv3` and write them back.

The format (pjreddie/darknet, ``src/parser.c``, ``load_weights_upto`` and ``save_weights_upto``), little-endian:

- a header: ``int32 major, minor, revision``, then the number of training images seen, a ``uint64`` when
  ``major * 10 + minor >= 2`` (every file since 2017, ``yolov3.weights`` and ``darknet53.conv.74`` included) and a
  ``uint32`` before that;
- then, convolution by convolution in the order of the ``.cfg`` (layers without weights store nothing),
  ``float32`` arrays with no separators and no shapes:

  - a convolution with ``batch_normalize=1``: its ``n`` BatchNorm shifts (darknet calls them biases), ``n``
    scales, ``n`` rolling means, ``n`` rolling variances, then the kernel ``[n, c, k, k]``;
  - a convolution without (the linear output convolutions before each ``[yolo]``): ``n`` biases, then the kernel.

Since the file holds no shapes, a file is matched to a model by its size alone; a file that is too long, or that
ends inside a convolution, is refused with the counts. A file that ends exactly after a convolution is a
*partial* file, darknet's ``darknet partial`` output: ``darknet53.conv.74`` (the ImageNet-trained backbone, cfg
layers 0-73) holds the 52 convolutions of Darknet-53, and loads as a backbone-only initialisation.

The model's modules are registered in darknet's layer order (see :mod:`yolo_loss.model.yolov3`), so the
convolutions are visited in file order by :func:`darknet_layers`.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yolo_loss.checkpoint import atomic_file
from yolo_loss.model.darknet import ConvBNAct

# The version every current darknet writes: a 64-bit images-seen counter follows.
DARKNET_VERSION = (0, 2, 0)
_FLOAT = np.dtype("<f4")


class DarknetWeightsError(ValueError):
    """A ``.weights`` file that does not fit the model; the message names the file and the counts."""


@dataclass(frozen=True)
class DarknetLayer:
    """One convolution as darknet stores it: ``bn`` is None for a convolution with a bias."""

    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None

    def tensors(self) -> list[torch.Tensor]:
        """The layer's tensors in file order."""
        if self.bn is None:
            return [self.conv.bias, self.conv.weight]
        return [self.bn.bias, self.bn.weight, self.bn.running_mean, self.bn.running_var, self.conv.weight]

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self.tensors())


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_darknet_weights` read: ``layers_loaded`` of ``layers_total`` convolutions (fewer for a
    partial file), the header's version and images seen."""

    path: Path
    layers_loaded: int
    layers_total: int
    version: tuple[int, int, int]
    images_seen: int

    def __str__(self) -> str:
        kind = "all" if self.layers_loaded == self.layers_total else "the first"
        return (f"loaded {kind} {self.layers_loaded} of {self.layers_total} convolutions from {self.path} "
                f"(darknet {'.'.join(map(str, self.version))}, trained on {self.images_seen} images)")


def darknet_layers(model: nn.Module) -> list[DarknetLayer]:
    """The convolutions of ``model`` in darknet's file order: each :class:`ConvBNAct` with its BatchNorm, and each
    other ``nn.Conv2d`` (the output convolutions) with its bias, in module registration order."""
    layers: list[DarknetLayer] = []
    inside_conv_bn: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, ConvBNAct):
            layers.append(DarknetLayer(name, module.conv, module.bn))
            inside_conv_bn.add(id(module.conv))
        elif isinstance(module, nn.Conv2d) and id(module) not in inside_conv_bn:
            if module.bias is None:
                raise DarknetWeightsError(f"{name} is a convolution with neither BatchNorm nor a bias, "
                                          "which darknet's format cannot store")
            layers.append(DarknetLayer(name, module, None))
    return layers


def _read_header(stream, path: Path) -> tuple[tuple[int, int, int], int]:
    raw = stream.read(12)
    if len(raw) < 12:
        raise DarknetWeightsError(f"{path} is too short for a darknet header ({len(raw)} bytes)")
    version = struct.unpack("<3i", raw)
    major, minor, _ = version
    wide = major * 10 + minor >= 2 and major < 1000 and minor < 1000
    seen_format = "<Q" if wide else "<I"
    raw = stream.read(struct.calcsize(seen_format))
    if len(raw) < struct.calcsize(seen_format):
        raise DarknetWeightsError(f"{path} ends inside its header")
    return version, struct.unpack(seen_format, raw)[0]


@torch.no_grad()
def load_darknet_weights(model: nn.Module, path: Path, *, max_layers: int | None = None) -> LoadReport:
    """Copy a darknet ``.weights`` file into ``model`` (any width and depth whose sizes the file matches).

    Args:
        model: a :class:`~yolo_loss.model.YOLOv3` (or a :class:`~yolo_loss.model.Darknet53`).
        path: the ``.weights`` file.
        max_layers: read only this many convolutions and ignore the rest of the file (darknet's ``partial``):
            for example 52 to take only the backbone of a ``yolov3.weights`` trained on other classes.

    Returns:
        A :class:`LoadReport`. Layers past the end of a partial file keep their values.

    Raises:
        DarknetWeightsError: the file is missing, longer than the model, or ends inside a convolution; the message
            gives the expected and found counts. The model is not modified then.
    """
    path = Path(path)
    if not path.is_file():
        raise DarknetWeightsError(f"darknet weights file {path} does not exist")
    layers = darknet_layers(model)
    wanted = layers if max_layers is None else layers[:max_layers]
    with path.open("rb") as stream:
        version, images_seen = _read_header(stream, path)
        header_bytes = stream.tell()
        data = np.fromfile(stream, dtype=_FLOAT)
    found, stray_bytes = data.size, (path.stat().st_size - header_bytes) % _FLOAT.itemsize
    layer_ends = np.cumsum([layer.numel for layer in wanted]).tolist()
    expected = layer_ends[-1] if layer_ends else 0
    problem = None
    if stray_bytes:
        problem = f"it has {stray_bytes} bytes after its last whole float"
    elif found == 0:
        problem = "it holds a header and no weights"
    elif found > expected and max_layers is None:
        problem = "it is longer than the model"
    elif found < expected and found not in layer_ends:
        inside = bisect.bisect_right(layer_ends, found)
        problem = f"it ends inside convolution {inside} ({wanted[inside].name})"
    if problem is not None:
        raise DarknetWeightsError(
            f"{path} does not fit this model: {problem}. After its {header_bytes}-byte header it holds {found} "
            f"floats; the model's {len(wanted)} convolutions need {expected}, and a partial file must end between "
            "two convolutions. Is it for another width, depth or number of classes?")
    offset, loaded = 0, 0
    for layer in wanted:
        if offset == found:  # the end of a partial file
            break
        for tensor in layer.tensors():
            values = torch.from_numpy(data[offset:offset + tensor.numel()].copy())
            tensor.copy_(values.view(tensor.shape))
            offset += tensor.numel()
        loaded += 1
    return LoadReport(path, loaded, len(layers), version, images_seen)


@torch.no_grad()
def save_darknet_weights(model: nn.Module, path: Path, *, images_seen: int = 0,
                         max_layers: int | None = None) -> int:
    """Write ``model`` as a darknet ``.weights`` file (version 0.2.0, atomically), the first ``max_layers``
    convolutions only when given (``52`` writes a ``darknet53.conv.74``-style backbone file).

    Returns:
        The number of convolutions written.
    """
    layers = darknet_layers(model)[:max_layers]
    with atomic_file(Path(path)) as stream:
        stream.write(struct.pack("<3iQ", *DARKNET_VERSION, images_seen))
        for layer in layers:
            for tensor in layer.tensors():
                stream.write(tensor.detach().to("cpu", torch.float32).contiguous().numpy().astype(_FLOAT).tobytes())
    return len(layers)
