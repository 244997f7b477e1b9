"""darknet's ``.cfg`` files: read the training settings of a YOLOv3 cfg into this project's config.

A cfg is a list of ``[section]`` headers, each followed by ``key=value`` lines (``#`` and ``;`` start comments);
sections repeat, one per layer. pjreddie/darknet reads them in ``src/parser.c``; the keys translated here, and how:

- ``[net]``: ``width``/``height`` (square) -> ``data.img_size``; ``batch`` -> ``train.batch_size``
  (``subdivisions`` only splits a batch to fit memory: the gradient is the same); ``learning_rate``,
  ``momentum``, ``decay``, ``burn_in`` -> ``train.*`` (darknet's update ``lr / batch`` times the summed gradient
  is SGD on this project's ``sum_per_image`` loss with the same ``lr``, and its decay is SGD's weight decay);
  ``policy=steps`` with ``steps`` and ``scales`` -> the step schedule at ``steps / max_batches``;
  ``max_batches`` -> ``train.max_steps``, and ``train.epochs`` from the number of training images;
  ``saturation``, ``exposure``, ``hue`` -> ``data.augment.hsv_s = saturation - 1``, ``hsv_v = exposure - 1``,
  ``hsv_h = hue``.
- ``[yolo]`` (three, the stride-32 one first): ``mask`` must be darknet's ``6,7,8 / 3,4,5 / 0,1,2``;
  ``anchors`` -> ``model.anchors`` in input pixels, used as given at every input size (darknet does not rescale
  them: ``anchors_img_size: 0``); ``jitter`` -> ``data.augment.jitter``; ``ignore_thresh`` ->
  ``loss.ignore_thresh``; ``random=1`` -> ``data.augment.multiscale`` 320-608 (darknet draws
  ``(rand() % 10 + 10) * 32``); ``truth_thresh=1`` (off) is the only value supported.
- The layer stack must be YOLOv3's (75 convolutions, 23 shortcuts, 4 routes, 2 upsamplings, 3 ``[yolo]``), with
  ``filters = len(mask) * (classes + 5)`` before each ``[yolo]``: this project builds that model at
  ``width: 1.0, depth: 1.0``; other architectures are refused.

darknet has no weight EMA and no gradient clipping, so the import turns both off. Every key that is not
translated is listed in :attr:`CfgImport.notes` with its value and the reason, never dropped silently.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# darknet's multi-scale training (detector.c, train_detector): every 10 batches `dim = (rand() % 10 + 10) * 32`.
DARKNET_MULTISCALE = [32 * k for k in range(10, 20)]
YOLOV3_LAYERS = {"convolutional": 75, "shortcut": 23, "route": 4, "upsample": 2, "yolo": 3}
YOLOV3_MASKS = ([6, 7, 8], [3, 4, 5], [0, 1, 2])  # in cfg order: strides 32, 16, 8

# [net] keys that need no translation, and why (listed in the notes all the same).
_NET_NOT_NEEDED = {"subdivisions": "splits each batch to fit memory; the gradient is the same"}
# [yolo] keys checked against the layer stack rather than translated.
_YOLO_CHECKED = frozenset({"classes", "num", "mask"})


class DarknetCfgError(ValueError):
    """A cfg that cannot be read or is not YOLOv3; the message names the file and, where it can, the line."""


@dataclass
class Section:
    """One ``[name]`` block of a cfg: its options (``key -> value`` as written) and the line of its header."""

    name: str
    line: int
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class CfgImport:
    """The translated config (a mapping shaped like the YAML files) and the notes on what was not translated."""

    config: dict[str, Any]
    notes: list[str]
    classes: int

    def to_yaml(self, source: str) -> str:
        """The config as YAML, headed by where it came from and the notes as comments."""
        header = [f"# Imported from {source} by scripts/import_darknet_cfg.py: darknet's training settings, with",
                  "# darknet's loss (the defaults, configs/presets/darknet.yaml) and its ignore threshold.",
                  f"# The cfg's head has {self.classes} classes: the data set's classes must match."]
        if self.notes:
            header.append("# Notes (not imported, or worth knowing):")
            header += [f"#   - {note}" for note in self.notes]
        body = yaml.safe_dump(self.config, sort_keys=False, default_flow_style=None, width=120)
        return "\n".join(header) + "\n" + body


def parse_cfg(text: str, source: str = "<cfg>") -> list[Section]:
    """The sections of a darknet cfg, in file order.

    Raises:
        DarknetCfgError: an option before any section, or a line that is neither a header nor ``key=value``.
    """
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise DarknetCfgError(f"{source}:{number}: a section header must end with ']': {raw.strip()!r}")
            sections.append(Section(line[1:-1].strip().lower(), number))
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise DarknetCfgError(f"{source}:{number}: expected 'key=value', got {raw.strip()!r}")
        if not sections:
            raise DarknetCfgError(f"{source}:{number}: option {key.strip()!r} comes before any [section]")
        # darknet's option_find returns the first occurrence of a key: keep the first.
        sections[-1].options.setdefault(key.strip(), value.strip())
    return sections


def _number(section: Section, key: str, source: str, kind: type = float) -> Any:
    value = section.options[key]
    try:
        return kind(value)
    except ValueError:
        raise DarknetCfgError(f"{source}: [{section.name}] at line {section.line}: {key}={value!r} is not "
                              f"{'a number' if kind is float else 'an integer'}") from None


def _numbers(section: Section, key: str, source: str, kind: type = float) -> list:
    try:
        return [kind(v) for v in section.options[key].split(",") if v.strip()]
    except ValueError:
        raise DarknetCfgError(f"{source}: [{section.name}] at line {section.line}: {key}="
                              f"{section.options[key]!r} is not a list of numbers") from None


def import_cfg(sections: list[Section], *, train_images: int | None = None, source: str = "<cfg>") -> CfgImport:
    """Translate a parsed YOLOv3 cfg (see the module docstring for the rules).

    Args:
        sections: from :func:`parse_cfg`.
        train_images: the number of training images, to turn ``max_batches`` into ``train.epochs`` (``ceil(
            max_batches * batch / train_images)``; ``train.max_steps`` then stops at ``max_batches`` exactly).
        source: the file name, for messages.

    Raises:
        DarknetCfgError: no ``[net]`` first, not YOLOv3's layer stack, a non-square input, masks other than
            YOLOv3's, ``max_batches`` without ``train_images``, or an unreadable number.
    """
    if not sections or sections[0].name not in ("net", "network"):
        raise DarknetCfgError(f"{source}: a darknet cfg starts with a [net] section")
    net, layers = sections[0], sections[1:]
    counts = Counter(s.name for s in layers)
    if dict(counts) != YOLOV3_LAYERS:
        found = ", ".join(f"{n} {name}" for name, n in counts.most_common())
        expected = ", ".join(f"{n} {name}" for name, n in YOLOV3_LAYERS.items())
        raise DarknetCfgError(f"{source} is not YOLOv3's layer stack (found {found}; expected {expected}): this "
                              "project builds the YOLOv3 of yolov3.cfg and imports only its cfgs")
    notes: list[str] = []
    data, augment, train = _import_net(net, source, train_images, notes)
    model, loss, yolo_augment, classes = _import_yolos(layers, source, notes)
    data["augment"] = augment | yolo_augment
    return CfgImport({"model": model, "data": data, "loss": loss, "train": train}, notes, classes)


def _import_net(net: Section, source: str, train_images: int | None, notes: list[str],
                ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The ``[net]`` section: ``data``, ``data.augment`` and ``train`` keys; what is not translated goes to
    ``notes``."""
    data: dict[str, Any] = {}
    augment: dict[str, Any] = {"flip": 0.5}  # darknet flips every training image with probability 1/2
    train: dict[str, Any] = {}
    used = set()

    def net_value(key: str, default: Any = None, kind: type = float) -> Any:
        used.add(key)
        return _number(net, key, source, kind) if key in net.options else default

    width, height = net_value("width", 416, int), net_value("height", 416, int)
    if width != height or width % 32:
        raise DarknetCfgError(f"{source}: [net] width={width}, height={height}: this project trains square inputs "
                              "whose side is a multiple of 32")
    data["img_size"] = width
    if net_value("channels", 3, int) != 3:
        raise DarknetCfgError(f"{source}: [net] channels={net.options['channels']}: only 3-channel images")
    batch = net_value("batch", 64, int)
    if batch == 1:
        notes.append("batch=1 is darknet's testing setting (yolov3-voc.cfg ships with the training lines "
                     "commented out): train.batch_size is 1 here; darknet trains with batch=64")
    train["batch_size"] = batch
    for cfg_key, key in (("learning_rate", "lr"), ("momentum", "momentum"), ("decay", "weight_decay")):
        if cfg_key in net.options:
            train[key] = net_value(cfg_key)
    train["burn_in"] = net_value("burn_in", 0, int)
    if net_value("power", 4.0) != 4.0:
        notes.append(f"power={net.options['power']}: the burn-in uses darknet's default power 4")
    max_batches = net_value("max_batches", None, int)
    policy = net.options.get("policy", "constant")
    used.add("policy")
    if policy == "steps":
        used.update(("steps", "scales"))
        steps = _numbers(net, "steps", source, int) if "steps" in net.options else []
        scales = _numbers(net, "scales", source) if "scales" in net.options else []
        if len(scales) != len(steps) or not steps:
            raise DarknetCfgError(f"{source}: [net] policy=steps needs as many scales as steps "
                                  f"(steps={net.options.get('steps')}, scales={net.options.get('scales')})")
        if max_batches is None:
            raise DarknetCfgError(f"{source}: [net] policy=steps needs max_batches")
        train["schedule"] = "step"
        train["steps"] = [round(s / max_batches, 6) for s in steps]
        train["step_scale"] = scales[0]
        if any(s != scales[0] for s in scales):
            notes.append(f"scales={net.options['scales']}: one scale for every step is supported; "
                         f"using {scales[0]}")
    else:
        notes.append(f"policy={policy}: only darknet's 'steps' policy is imported; train.schedule keeps "
                     "this project's default")
    if max_batches is not None:
        if train_images is None:
            raise DarknetCfgError(f"{source}: max_batches={max_batches} needs the number of training images to "
                                  "become epochs (--train-images; VOC07+12 trainval has 16551, COCO train2017 "
                                  "117266 with annotations)")
        train["epochs"] = math.ceil(max_batches * batch / train_images)
        train["max_steps"] = max_batches
    if net_value("angle", 0.0) != 0.0:
        notes.append(f"angle={net.options['angle']}: rotation is not an augmentation here")
    for cfg_key, key, offset in (("hue", "hsv_h", 0.0), ("saturation", "hsv_s", 1.0), ("exposure", "hsv_v", 1.0)):
        if cfg_key in net.options:
            augment[key] = round(net_value(cfg_key) - offset, 6)
    train["ema"] = False  # darknet averages no weights
    train["grad_clip"] = 0.0  # and clips no gradients
    for key, value in net.options.items():
        if key in _NET_NOT_NEEDED:
            notes.append(f"[net] {key}={value}: {_NET_NOT_NEEDED[key]}")
        elif key not in used:
            notes.append(f"[net] {key}={value}: not supported")
    return data, augment, train


def _import_yolos(layers: list[Section], source: str, notes: list[str],
                  ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], int | None]:
    """The three ``[yolo]`` sections, each checked against the convolution before it: ``model``, ``loss`` and
    ``data.augment`` keys and the class count; what is not translated goes to ``notes``."""
    model: dict[str, Any] = {"width": 1.0, "depth": 1.0}
    loss: dict[str, Any] = {}
    augment: dict[str, Any] = {}
    yolos = [(i, s) for i, s in enumerate(layers) if s.name == "yolo"]
    settings: dict[str, str] = {}
    classes = None
    for level, (index, section) in enumerate(yolos):
        where = f"{source}: [yolo] at line {section.line}"
        mask = _numbers(section, "mask", source, int) if "mask" in section.options else None
        if mask != YOLOV3_MASKS[level]:
            raise DarknetCfgError(f"{where}: mask={section.options.get('mask')}; YOLOv3's [yolo] layers use "
                                  "masks 6,7,8 then 3,4,5 then 0,1,2 (strides 32, 16, 8)")
        classes_here = _number(section, "classes", source, int) if "classes" in section.options else 20
        head = layers[index - 1]
        filters = _number(head, "filters", source, int) if "filters" in head.options else None
        if head.name != "convolutional" or filters != len(mask) * (classes_here + 5):
            raise DarknetCfgError(f"{where}: the convolution before it has filters={filters}; "
                                  f"{len(mask)} anchors x ({classes_here} classes + 5) = "
                                  f"{len(mask) * (classes_here + 5)} expected")
        if classes is not None and classes_here != classes:
            raise DarknetCfgError(f"{where}: classes={classes_here}, the first [yolo] says {classes}")
        classes = classes_here
        for key, value in section.options.items():
            if key in _YOLO_CHECKED:
                continue
            if key in settings and settings[key] != value:
                notes.append(f"[yolo] {key}: {settings[key]} in the first [yolo], {value} at line {section.line}: "
                             "one value for all levels; the first is used")
            settings.setdefault(key, value)
    first = yolos[0][1]
    for key, value in settings.items():
        if key == "anchors":
            anchors = _numbers(first, "anchors", source)
            num = _number(first, "num", source, int) if "num" in first.options else len(anchors) // 2
            if len(anchors) != 18 or num != 9:
                raise DarknetCfgError(f"{source}: [yolo] needs 9 anchors (num=9), got num={num} and "
                                      f"{len(anchors) // 2} pairs")
            anchors = [int(a) if a.is_integer() else a for a in anchors]  # 10, not 10.0, in the YAML
            model["anchors"] = [anchors[k:k + 2] for k in range(0, 18, 2)]
            model["anchors_img_size"] = 0  # darknet uses them in input pixels at every size
        elif key == "jitter":
            augment["jitter"] = _number(first, key, source)
        elif key == "ignore_thresh":
            loss["ignore_thresh"] = _number(first, key, source)
        elif key == "random":
            augment["multiscale"] = list(DARKNET_MULTISCALE) if _number(first, key, source) else []
        elif key == "truth_thresh":
            if _number(first, key, source) < 1.0:
                notes.append(f"[yolo] truth_thresh={value}: darknet's extra positives above it are not "
                             "implemented (1, yolov3.cfg's value, turns them off)")
        else:
            notes.append(f"[yolo] {key}={value}: not supported")
    return model, loss, augment, classes


def import_cfg_file(path: Path, *, train_images: int | None = None) -> CfgImport:
    """:func:`parse_cfg` and :func:`import_cfg` of a file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise DarknetCfgError(f"cannot read {path}: {error.strerror}") from None
    return import_cfg(parse_cfg(text, str(path)), train_images=train_images, source=str(path))
