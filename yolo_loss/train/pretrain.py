"""Classification pretraining of the backbone on crops of the synthetic shapes: the studies' shared starting point.

darknet trains YOLOv3 from ``darknet53.conv.74``, the first 52 convolutions of a Darknet-53 trained on ImageNet
classification: the detector starts from features that already tell objects apart, and no detection loss has
touched them. ``model.pretrain`` gives the CPU studies the same kind of start on the embedded data:

- **Task**: classify single objects. Every training object of ``data.shapes`` gives a square crop centred on its
  box (the centre moved by up to ``jitter`` of the crop side), of side ``U(context_min, context_max)`` times the
  box's long side, resampled bilinearly to ``crop_size`` px (grey 0.5 beyond the image border, as the letterbox),
  flipped horizontally with probability 0.5. A new crop of every object each epoch.
- **Classifier**: the backbone of the run's ``model.width`` and ``model.depth``, global average pooling of its
  stride-32 map, one linear layer to the shape classes; softmax cross-entropy, SGD (momentum 0.9, weight decay
  5e-4 on the weights), a cosine learning rate from ``lr`` to 1% of it after a linear warm-up of 100 steps.
- **Held out**: the objects of the validation split, one centred crop each at the mean context, give the accuracy
  recorded beside the weights (not used to pick anything).
- **Cache**: ``<data.root>/backbones/backbone-<hash>.pt``, the hash taken over :data:`PRETRAIN_VERSION`, the
  backbone's width and depth, the shapes set's folder name (itself a hash of its parameters) and every
  ``model.pretrain`` field, so it is trained once and then read by every run of every study (a changed parameter
  trains a new one). Written atomically; ``weights_only`` to read. The global random state of the caller is left
  as it was, so a run gives the same result whether it trained the backbone or read it.

Only the backbone's weights and BatchNorm statistics are kept: the neck and the head start from their random
initialisation, so every loss under study trains them from the same point. ``scripts/pretrain_backbone.py`` builds
the cache from a config and prints what it took.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yolo_loss.checkpoint import load_checkpoint, save_checkpoint
from yolo_loss.config.schema import Config
from yolo_loss.data.bad_input import DataError
from yolo_loss.model.darknet import Darknet53

# Bump whenever a change would alter the trained weights: it is part of the cache file's hash.
PRETRAIN_VERSION = 1
WARMUP_STEPS = 100
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
FINAL_LR_FRACTION = 0.01
GREY = 0.5


@dataclasses.dataclass
class ObjectCrops:
    """The objects of one split: their images and boxes, from which crops are cut.

    Attributes:
        images: ``uint8[I, 3, S, S]`` every image of the split.
        image_index: ``int64[N]`` the image of each object.
        boxes_xyxy: ``float32[N, 4]`` its box in pixels.
        labels: ``int64[N]`` its class.
    """

    images: Tensor
    image_index: Tensor
    boxes_xyxy: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class BackboneClassifier(nn.Module):
    """Darknet-53 (any width and depth), global average pooling of the stride-32 map, a linear classifier."""

    def __init__(self, width: float, depth: float, num_classes: int) -> None:
        super().__init__()
        self.backbone = Darknet53(width=width, depth=depth)
        self.classifier = nn.Linear(self.backbone.out_channels[2], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, 3, s, s]`` -> class logits ``Tensor[B, num_classes]``."""
        return self.classifier(self.backbone(x)[2].mean(dim=(2, 3)))


def _shapes_folder(cfg: Config) -> Path:
    from yolo_loss.data.shapes import shapes_dataset  # generates the set on first use

    return shapes_dataset(cfg.data.shapes, Path(cfg.data.root))


def cache_path(cfg: Config) -> Path:
    """Where the pretrained backbone of ``cfg`` is (or will be) stored (see the module docstring)."""
    key = {"version": PRETRAIN_VERSION, "width": cfg.model.width, "depth": cfg.model.depth,
           "shapes": _shapes_folder(cfg).name, "pretrain": dataclasses.asdict(cfg.model.pretrain)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.data.root) / "backbones" / f"backbone-{digest}.pt"


def read_objects(folder: Path, split: str) -> tuple[ObjectCrops, list[str]]:
    """Every object of ``split`` of a generated shapes set, and the class names."""
    from yolo_loss.data.coco import read_coco
    from yolo_loss.data.images import decode_image_file

    annotations = read_coco(folder / "annotations" / f"instances_{split}.json", folder / "images" / split)
    records = annotations.records
    images = torch.stack([decode_image_file(record.path) for record in records])
    image_index = torch.cat([torch.full((record.num_boxes,), i, dtype=torch.int64) for i, record in enumerate(records)])
    boxes = torch.cat([torch.from_numpy(record.boxes_xyxy).reshape(-1, 4) for record in records])
    labels = torch.cat([torch.from_numpy(record.labels) for record in records])
    return ObjectCrops(images, image_index, boxes.float(), labels), annotations.class_names


def cut_crops(objects: ObjectCrops, index: Tensor, crop_size: int, *, context: Tensor, shift: Tensor,
              flip: Tensor) -> Tensor:
    """Crops of the objects ``index`` (``Tensor[B]``): ``Tensor[B, 3, crop_size, crop_size]`` float in [0, 1].

    Object ``k`` gives the square of side ``context[k]`` times its box's long side, centred on the box centre moved
    by ``shift[k]`` (``Tensor[B, 2]``, fractions of the side), mirrored where ``flip[k]``; bilinear
    (``grid_sample``), grey beyond the image.
    """
    images = objects.images[objects.image_index[index]].float() / 255.0
    height, width = images.shape[-2:]
    boxes = objects.boxes_xyxy[index]
    side = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1) * context
    centre = 0.5 * (boxes[:, :2] + boxes[:, 2:]) + shift * side[:, None]
    # grid_sample's coordinates: -1 and 1 are the outer edges of the image (align_corners=False).
    theta = torch.zeros(index.shape[0], 2, 3)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0) * side / width
    theta[:, 1, 1] = side / height
    theta[:, 0, 2] = 2.0 * centre[:, 0] / width - 1.0
    theta[:, 1, 2] = 2.0 * centre[:, 1] / height - 1.0
    grid = F.affine_grid(theta, [index.shape[0], 3, crop_size, crop_size], align_corners=False)
    return F.grid_sample(images - GREY, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + GREY


def _lr_at(step: int, total_steps: int, lr: float) -> float:
    if step < WARMUP_STEPS:
        return lr * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, total_steps - WARMUP_STEPS)
    return lr * (FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def accuracy(model: BackboneClassifier, objects: ObjectCrops, crop_size: int, context: float,
             batch_size: int = 256) -> float:
    """Top-1 accuracy on one centred, unflipped crop of each object at ``context``."""
    model.eval()
    correct = 0
    for start in range(0, len(objects), batch_size):
        index = torch.arange(start, min(start + batch_size, len(objects)))
        crops = cut_crops(objects, index, crop_size, context=torch.full((index.shape[0],), context),
                          shift=torch.zeros(index.shape[0], 2), flip=torch.zeros(index.shape[0], dtype=torch.bool))
        correct += int((model(crops).argmax(dim=1) == objects.labels[index]).sum())
    return correct / max(len(objects), 1)


def pretrain_backbone(cfg: Config, *, echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """Train the classifier of the module docstring; returns ``{"backbone": state dict, "info": {...}}``.

    The caller's global random state is restored afterwards; everything random here comes from
    ``model.pretrain.seed``.
    """
    settings = cfg.model.pretrain
    folder = _shapes_folder(cfg)
    started = time.perf_counter()
    train_objects, class_names = read_objects(folder, "train")
    val_objects, _ = read_objects(folder, "val")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        generator = torch.Generator().manual_seed(settings.seed)
        model = BackboneClassifier(cfg.model.width, cfg.model.depth, len(class_names))
        decayed = [p for n, p in model.named_parameters() if p.dim() > 1]
        others = [p for n, p in model.named_parameters() if p.dim() <= 1]
        optimizer = torch.optim.SGD([{"params": decayed, "weight_decay": WEIGHT_DECAY},
                                     {"params": others, "weight_decay": 0.0}], lr=settings.lr, momentum=MOMENTUM)
        steps_per_epoch = len(train_objects) // settings.batch_size
        if not steps_per_epoch:
            raise DataError(f"model.pretrain.batch_size: {settings.batch_size} is more than the {len(train_objects)} "
                             f"training objects of {folder}; lower it or generate more images")
        total_steps = settings.epochs * steps_per_epoch
        step = 0
        for epoch in range(settings.epochs):
            model.train()
            order = torch.randperm(len(train_objects), generator=generator)
            loss_sum, correct = 0.0, 0
            for batch in order[:steps_per_epoch * settings.batch_size].view(steps_per_epoch, -1):
                count = batch.shape[0]
                context = settings.context_min + (settings.context_max - settings.context_min) * torch.rand(
                    count, generator=generator)
                shift = (torch.rand(count, 2, generator=generator) * 2.0 - 1.0) * settings.jitter
                flip = torch.rand(count, generator=generator) < 0.5
                crops = cut_crops(train_objects, batch, settings.crop_size, context=context, shift=shift, flip=flip)
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(step, total_steps, settings.lr)
                logits = model(crops)
                loss = F.cross_entropy(logits, train_objects.labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += float(loss.detach())
                correct += int((logits.argmax(dim=1) == train_objects.labels[batch]).sum())
            echo(f"pretrain epoch {epoch + 1}/{settings.epochs}: loss {loss_sum / steps_per_epoch:.3f}, "
                 f"train accuracy {correct / (steps_per_epoch * settings.batch_size):.3f}, "
                 f"{time.perf_counter() - started:.0f} s")
        val_accuracy = accuracy(model, val_objects, settings.crop_size,
                                0.5 * (settings.context_min + settings.context_max))
    info = {"seconds": time.perf_counter() - started, "val_accuracy": val_accuracy, "steps": total_steps,
            "train_objects": len(train_objects), "val_objects": len(val_objects), "shapes": folder.name,
            "width": cfg.model.width, "depth": cfg.model.depth, "pretrain": dataclasses.asdict(settings),
            "version": PRETRAIN_VERSION, "torch": str(torch.__version__)}
    echo(f"pretrained backbone: validation accuracy {val_accuracy:.3f} on {len(val_objects)} objects, "
         f"{info['seconds']:.0f} s")
    return {"backbone": model.backbone.state_dict(), "info": info}


def pretrained_backbone(cfg: Config, *, echo: Callable[[str], Any] = print) -> tuple[dict[str, Tensor], dict, Path]:
    """The backbone state dict of ``cfg.model.pretrain``, its info and its cache file: read from the cache, or
    trained (:func:`pretrain_backbone`) and stored there first."""
    path = cache_path(cfg)
    if not path.is_file():
        echo(f"pretraining the backbone on shape crops ({cfg.model.pretrain.epochs} epochs); cached in {path}")
        save_checkpoint(pretrain_backbone(cfg, echo=echo), path)
    state = load_checkpoint(path)
    return state["backbone"], state["info"], path


def fingerprint(state: dict[str, Tensor]) -> str:
    """12 hex digits of a SHA-256 over a state dict's names, dtypes, shapes and bytes: equal for equal weights.

    The cache is keyed by the parameters, yet its content depends on the machine too: the same parameters
    trained on another CPU (other vector instructions, other rounding) give other weights. Runs record this, so
    that a study can tell which of its paired runs really started from the same point."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:12]


def backbone_start(cfg: Config, *, echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """What a run of ``cfg`` starts from: the cached backbone's fingerprint and validation accuracy (trained first
    if not cached); ``{}`` without pretraining."""
    if not cfg.model.pretrain.epochs:
        return {}
    weights, info, _ = pretrained_backbone(cfg, echo=echo)
    return {"backbone": fingerprint(weights), "backbone_val_accuracy": info["val_accuracy"]}


def load_pretrained_backbone(model: nn.Module, cfg: Config, *, echo: Callable[[str], Any] = print) -> str:
    """Copy the pretrained backbone of ``cfg`` into ``model.backbone``; returns a line saying what was loaded."""
    weights, info, path = pretrained_backbone(cfg, echo=echo)
    model.backbone.load_state_dict(weights)
    return (f"backbone {fingerprint(weights)} from {path} (classification of shape crops, {info['steps']} steps, "
            f"validation accuracy {info['val_accuracy']:.3f})")
