"""The typed configuration schema.

Every YAML config and every ``--set`` override is checked against these dataclasses by
:mod:`yolo_loss.config.load`. Field metadata carries what the checker needs:

- ``choices``: the allowed values of a string field;
- ``range``: ``(low, high, low_open, high_open)`` bounds of a number (``None`` for unbounded);
- ``path``: the value is a filesystem path, resolved against the folder of the file that set it.

Cross-field rules live in each section's ``check()`` method, which returns ``(key, message)`` pairs.
The defaults of :class:`LossConfig` are darknet's loss (``configs/presets/darknet.yaml`` states
them explicitly).
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any

from yolo_loss.config.components import (MULTI_ANCHOR_IOU_THRESH, RATIO_ANCHOR_T, HyperParam, assign_names,
                                         assigner, component, component_names, hyperparameters, modifier_problems)

# The decode rules a run may choose (model.decode), implemented in yolo_loss/decode.py; declared here so that reading
# a config needs no torch (a study launcher reads every run's config).
DECODE_RULES = ("darknet", "yolov5", "linear")
# The rules whose w, h are darknet's a * exp(tw): the ones a loss on tw (loss.wh) can regress.
EXP_WH_RULES = ("darknet", "linear")

# YOLOv3 anchors in input pixels at 416 px: three per level, strides 8, 16, 32.
YOLOV3_ANCHORS: list[list[float]] = [
    [10, 13], [16, 30], [33, 23],
    [30, 61], [62, 45], [59, 119],
    [116, 90], [156, 198], [373, 326],
]


def choice(default: str, *choices: str, **kw: Any) -> Any:
    return field(default=default, metadata={"choices": choices, **kw})


def bounded(default: float | int, low: float | None = None, high: float | None = None,
            *, low_open: bool = False, high_open: bool = False) -> Any:
    return field(default=default, metadata={"range": (low, high, low_open, high_open)})


def path_field(default: str) -> Any:
    return field(default=default, metadata={"path": True})


@dataclass
class PretrainConfig:
    """Classification pretraining of the backbone on crops of the synthetic shapes (``yolo_loss/train/pretrain.py``):
    a shared, cached start that no detection loss has touched, as darknet53.conv.74 is. ``epochs: 0`` = off."""

    epochs: int = bounded(0, 0, None)
    crop_size: int = bounded(64, 32, None)  # crops are resampled to this side, in pixels (a multiple of 32)
    batch_size: int = bounded(64, 1, None)
    lr: float = bounded(0.05, 0.0, None, low_open=True)
    context_min: float = bounded(1.2, 1.0, None)  # crop side / the box's long side, drawn per crop from
    context_max: float = bounded(2.0, 1.0, None)  # [context_min, context_max]
    jitter: float = bounded(0.1, 0.0, 0.5)  # the crop centre moves by up to this fraction of the side
    seed: int = 0

    def check(self) -> list[tuple[str, str]]:
        errors = []
        if self.crop_size % 32:
            errors.append(("crop_size", f"must be a multiple of 32, got {self.crop_size}"))
        if self.context_max < self.context_min:
            errors.append(("context_max", f"must be at least context_min ({self.context_min})"))
        return errors


@dataclass
class ModelConfig:
    width: float = bounded(0.25, 0.0, 4.0, low_open=True)  # channel multiplier; 1.0 is Darknet-53
    depth: float = bounded(0.33, 0.0, 4.0, low_open=True)  # residual-block multiplier; 1.0 is 1-2-8-8-4
    anchors: list[list[float]] = field(default_factory=lambda: [list(a) for a in YOLOV3_ANCHORS])
    # The anchors are given for this input size and scaled to data.img_size; 0 uses them as given.
    anchors_img_size: int = bounded(416, 0, None)
    prior_obj: float = bounded(0.01, 0.0, 1.0, low_open=True, high_open=True)  # head bias init
    prior_cls: float = bounded(0.01, 0.0, 1.0, low_open=True, high_open=True)
    # A darknet .weights file to start from (darknet53.conv.74 for the backbone, yolov3.weights for all of it);
    # "" = random initialisation. pretrained_layers: read only this many convolutions of it (0 = all it holds).
    pretrained: str = path_field("")
    pretrained_layers: int = bounded(0, 0, None)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    # How tx, ty, tw, th become a box (yolo_loss/decode.py), in the loss and at inference: darknet's
    # (x = i + s sig(tx) - (s - 1) / 2, w = a exp(tw)) with AlexeyAB's scale_x_y = s per level (strides 8, 16, 32;
    # yolov4.cfg: 1.2, 1.1, 1.05), YOLOv5's (x = i + 2 sig(tx) - 0.5, w = a (2 sig(tw))^2), or the YOLOv3 paper's
    # failed "linear x, y" (x = i + tx, w = a exp(tw); its x, y term is loss.xy=mse_linear).
    decode: str = choice("darknet", *DECODE_RULES)
    scale_x_y: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])

    def check(self) -> list[tuple[str, str]]:
        errors = []
        if len(self.anchors) != 9 or any(len(a) != 2 or min(a) <= 0 for a in self.anchors):
            errors.append(("anchors", "must be 9 [w, h] pairs of positive pixels, 3 per level (strides 8, 16, 32)"))
        if len(self.scale_x_y) != 3 or min(self.scale_x_y) < 1.0:
            errors.append(("scale_x_y", f"must be 3 values >= 1 (strides 8, 16, 32), got {self.scale_x_y}"))
        elif self.decode != "darknet" and set(self.scale_x_y) != {1.0}:
            errors.append(("scale_x_y", f"belongs to darknet's decode, not to model.decode={self.decode}"))
        return errors


@dataclass
class ShapesConfig:
    """The embedded synthetic data set, generated on first use and cached by these parameters."""

    num_train: int = bounded(2000, 1, None)
    num_val: int = bounded(200, 1, None)
    image_size: int = bounded(160, 32, None)
    max_objects: int = bounded(6, 1, None)
    seed: int = 0
    # The long side of a shape is log-uniform from min_long_side px to max_long_side x image_size.
    min_long_side: float = bounded(6.0, 4.0, None)
    max_long_side: float = bounded(0.9, 0.0, 1.0, low_open=True)
    num_classes: int = bounded(6, 1, 6)  # the first N of ellipse, rectangle, triangle, diamond, star, cross
    # What validation reads: the val split (what results are reported on) or select, a second split of num_val
    # images from random streams of its own, for choices (a study's tune: select: {data.shapes.val_split: select}).
    val_split: str = choice("val", "val", "select")

    def check(self) -> list[tuple[str, str]]:
        if self.min_long_side >= self.max_long_side * self.image_size:
            return [("min_long_side", f"{self.min_long_side} px must be below max_long_side x image_size "
                                      f"({self.max_long_side * self.image_size:g} px)")]
        return []


@dataclass
class AugmentConfig:
    flip: float = bounded(0.5, 0.0, 1.0)  # probability of a horizontal flip
    hsv_h: float = bounded(0.015, 0.0, 0.5)  # hue jitter (fraction of the circle)
    hsv_s: float = bounded(0.5, 0.0, 1.0)  # saturation jitter (darknet: saturation 1.5 -> 0.5)
    hsv_v: float = bounded(0.5, 0.0, 1.0)  # value jitter (darknet: exposure 1.5 -> 0.5)
    jitter: float = bounded(0.2, 0.0, 0.9)  # darknet's random scale and aspect jitter
    multiscale: list[int] = field(default_factory=list)  # input sizes to draw from per batch; [] = off


@dataclass
class DataConfig:
    format: str = choice("shapes", "shapes", "coco", "voc")
    root: str = path_field("../data/shapes")  # shapes: where to generate; coco/voc: the data set folder
    # coco: image folders and instances JSON files, relative to root
    train_images: str = "images/train2017"
    train_annotations: str = "annotations/instances_train2017.json"
    val_images: str = "images/val2017"
    val_annotations: str = "annotations/instances_val2017.json"
    # voc: "<year folder>/<split>" pairs under root (the VOCdevkit folder, or any folder holding VOC-layout
    # folders: root: ../data/bccd, train_sets: [BCCD/train])
    train_sets: list[str] = field(default_factory=lambda: ["VOC2007/trainval", "VOC2012/trainval"])
    val_sets: list[str] = field(default_factory=lambda: ["VOC2007/test"])
    # The class names, in the order of the model's class outputs; [] = the format's own: the 20 VOC classes (voc),
    # the JSON's categories in id order (coco). voc: the names read, an object of any other name is bad input
    # (data.on_bad); coco: the categories kept, by name, the other categories' annotations left out.
    classes: list[str] = field(default_factory=list)
    # Stop when more than this fraction of a split's objects were dropped for their class (a VOC name not in
    # data.classes, a COCO category id not in the JSON): the sign of a class list that does not fit the data,
    # which would train on a fraction of it, or on nothing. 1 = never (a deliberate subset of a VOC set's
    # classes). A split left with no box at all stops whatever this is.
    max_unknown: float = bounded(0.5, 0.0, 1.0)
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    img_size: int = bounded(160, 32, None)  # network input (square, letterboxed); a multiple of 32
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache: bool = False  # keep decoded, resized images in memory
    workers: int = bounded(0, 0, None)
    on_bad: str = choice("skip", "skip", "error")  # a broken image or box: drop and count, or stop

    def check(self) -> list[tuple[str, str]]:
        errors = []
        if self.img_size % 32:
            errors.append(("img_size", f"must be a multiple of 32, got {self.img_size}"))
        if any(s % 32 or s < 32 for s in self.augment.multiscale):
            errors.append(("augment.multiscale", "every size must be a positive multiple of 32"))
        errors.extend(("classes", message) for message in self.class_list_problems())
        return errors

    def class_list_problems(self) -> list[str]:
        """What is wrong with ``classes``: empty or padded names, duplicates, a format without class names."""
        if not self.classes:
            return []
        if self.format == "shapes":
            return ["the synthetic shapes have their own classes (data.shapes.num_classes); data.classes is for "
                    "data.format voc or coco"]
        problems = []
        padded = [name for name in self.classes if not name.strip() or name != name.strip()]
        if padded:
            problems.append(f"class names must be non-empty, without leading or trailing spaces, got "
                            f"{', '.join(repr(name) for name in padded)}")
        duplicated = sorted({name for name in self.classes if self.classes.count(name) > 1})
        if duplicated:
            problems.append(f"each class must be listed once; listed more than once: "
                            f"{', '.join(repr(n) for n in duplicated)}")
        return problems


@dataclass
class LossWeights:
    """Per-term weights, applied once, after the reduction."""

    xy: float = bounded(1.0, 0.0, None)
    wh: float = bounded(1.0, 0.0, None)
    box: float = bounded(1.0, 0.0, None)
    obj_pos: float = bounded(1.0, 0.0, None)
    obj_neg: float = bounded(1.0, 0.0, None)
    cls: float = bounded(1.0, 0.0, None)


@dataclass
class LevelWeights:
    """Per-term, per-level weights for strides 8, 16, 32 (ultralytics: obj 4.0, 1.0, 0.4)."""

    xy: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    wh: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    box: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    obj_pos: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    obj_neg: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    cls: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])

    def check(self) -> list[tuple[str, str]]:
        return [(name, "must be 3 non-negative numbers, one per level (strides 8, 16, 32)")
                for name, value in vars(self).items() if len(value) != 3 or min(value) < 0]


def component_choice(term: str, default: str) -> Any:
    """A ``loss.<term>`` field whose allowed values are the registry's components of that term."""
    return choice(default, *component_names(term))


def hyperparameter_field(param: HyperParam) -> Any:
    """A ``loss.<param.field>`` field with the registry's default and bounds; values in ``param.also`` are allowed
    outside them. A named option (``param.choices``) is a string field with those choices."""
    if param.choices:
        return choice(param.default, *param.choices)
    return field(default=param.default, metadata={"range": (param.low, param.high, param.low_open, param.high_open),
                                                  "also": param.also})


@dataclass
class LossTerms:
    """Which term does what. Defaults are darknet's loss (see loss-reference.md). The component names allowed for
    ``xy, wh, box, obj, cls`` are the entries of ``yolo_loss/config/components.py``."""

    xy: str = component_choice("xy", "bce")
    wh: str = component_choice("wh", "mse")
    box: str = component_choice("box", "none")
    box_with_xywh: bool = False  # allow an IoU box term beside the xy/wh terms (off: it replaces them)
    box_scale: str = choice("two_minus_wh", "two_minus_wh", "none")
    obj: str = component_choice("obj", "bce")
    # The positives' objectness target: 1, the detached IoU of the decoded box with its truth, or its CIoU clamped at
    # 0 (ultralytics' ComputeLoss, whose bbox_iou returns the CIoU it trains the box with).
    obj_target: str = choice("one", "one", "iou", "ciou")
    cls: str = component_choice("cls", "bce")
    cls_target: str = choice("one", "one", "iou")  # the true class's target on a positive: 1, or the detached IoU
    label_smoothing: float = bounded(0.0, 0.0, 1.0, high_open=True)  # targets 1 - eps/2 and eps/2
    # The static rules (best_anchor, multi_anchor, ratio) or a dynamic assigner (tal, simota, atss: every candidate
    # of the head, positives chosen by the method; config/components.py, ASSIGNERS).
    assign: str = choice("best_anchor", *assign_names())
    assign_iou_thresh: float = bounded(MULTI_ANCHOR_IOU_THRESH, 0.0, 1.0, low_open=True)  # multi_anchor
    anchor_t: float = bounded(RATIO_ANCHOR_T, 1.0, None, low_open=True)  # ratio
    # YOLOv5's assignment: besides the truth centre's cell, the two neighbouring cells (one in x, one in y) whose
    # borders are nearest the centre, where the truth is not in the grid's outer cell (model.decode=yolov5 only).
    neighbour_cells: bool = False
    # Two truths on one (level, anchor, cell): merge (darknet: one positive, the later truth's box, the union of the
    # classes) or keep (ultralytics: one positive row each; the cell's objectness target from the last row).
    collisions: str = choice("merge", "merge", "keep")
    ignore: str = choice("prediction", "prediction", "prior", "none")
    ignore_thresh: float = bounded(0.7, 0.0, 1.0, low_open=True)
    reduction: str = choice("sum_per_image", "sum_per_image", "mean_per_term", "mean_per_term_times_batch")
    # The objectness weights (weights.obj_*) are given for this input size and scaled by (data.img_size / it)^2, as
    # ultralytics' train.py scales hyp['obj'] from 640 px; 0 uses them as given.
    obj_weights_img_size: int = bounded(0, 0, None)
    weights: LossWeights = field(default_factory=LossWeights)
    level_weights: LevelWeights = field(default_factory=LevelWeights)

    def check(self) -> list[tuple[str, str]]:
        errors = []
        if self.box != "none" and (self.xy != "none" or self.wh != "none") and not self.box_with_xywh:
            errors.append(("box", f"box={self.box} would be added to xy={self.xy} and wh={self.wh}; "
                                  "set loss.xy=none and loss.wh=none (configs/loss/box_*.yaml does), "
                                  "or loss.box_with_xywh=true if both are intended"))
        if self.box == "none" and self.xy == "none" and self.wh == "none":
            errors.append(("box", "no box term at all: xy, wh and box are all 'none'"))
        if self.cls_target == "iou" and (component("cls", self.cls).softmax or self.label_smoothing):
            errors.append(("cls_target", f"an IoU-valued class target needs independent class scores without label "
                                         f"smoothing (loss.cls={self.cls}, label_smoothing={self.label_smoothing}): "
                                         "a softmax renormalises the target row"))
        # Inner-IoU and Focaler-IoU (inner_ratio, focaler_d, focaler_u) take a box loss of the form 1 - IoU + penalties
        errors.extend(modifier_problems(self.box, self.hyperparameter_values()))
        return errors + self.check_assigner()

    def check_assigner(self) -> list[tuple[str, str]]:
        """What a dynamic assigner needs: a positive may lie cells away from its truth's centre (inside the box for
        TAL and ATSS, within the centre region for SimOTA), where an x, y offset target in [0, 1] of its own cell
        does not exist, so the box is regressed by a box loss on the decoded box; the assigner's own class target
        replaces cls_target, and the static rules' settings do not apply."""
        if assigner(self.assign) is None:
            return []
        errors = []
        if self.box == "none" or self.xy != "none" or self.wh != "none":
            errors.append(("assign", f"loss.assign={self.assign} picks positives away from the truth centre's cell: "
                                     f"regress the decoded box with a box loss (loss.box, e.g. ciou) and set "
                                     f"loss.xy=none and loss.wh=none; got xy={self.xy}, wh={self.wh}, box={self.box}"))
        if self.cls_target != "one":
            errors.append(("cls_target", f"loss.assign={self.assign} sets its own class target; leave cls_target "
                                         f"at 'one' (got {self.cls_target!r})"))
        if self.neighbour_cells or self.collisions != "merge":
            errors.append(("neighbour_cells" if self.neighbour_cells else "collisions",
                           f"neighbour_cells and collisions are settings of the static rules; loss.assign="
                           f"{self.assign} chooses among every cell and gives each candidate one truth"))
        return errors

    def check_decode(self, model: ModelConfig) -> list[tuple[str, str]]:
        """What the terms need of the model's decode (``model.decode``, ``model.scale_x_y``)."""
        errors = decode_problems(self.xy, self.wh, self.box, model.decode)
        if self.neighbour_cells and model.decode != "yolov5":
            errors.append(("neighbour_cells", "a neighbour cell's prediction reaches the truth only with "
                                              "model.decode=yolov5 (centres in [-0.5, 1.5] of a cell)"))
        return errors

    def hyperparameter_values(self) -> dict[str, float | str]:
        """``{field: value}`` of every component hyper-parameter (what ``registry.bind`` takes)."""
        return {param.field: getattr(self, param.field) for param in hyperparameters()}


def decode_problems(xy: str, wh: str, box: str, decode: str) -> list[tuple[str, str]]:
    """``(loss key, message)`` for each term that the decode rule ``decode`` (``model.decode``) cannot train: the one
    set of these rules, read by the config's checks and by :class:`~yolo_loss.losses.criterion.YoloCriterion`."""
    errors = []
    if decode not in EXP_WH_RULES and wh != "none":
        errors.append(("wh", f"loss.wh={wh} regresses tw = ln(w / a_w), darknet's decode; with model.decode={decode} "
                             "use a box term (loss.box) and loss.wh=none"))
    if box != "none" and component("box", box).raw_box and decode != "darknet":
        errors.append(("box", f"loss.box={box} is AlexeyAB's hand-written delta for darknet's decode; "
                              f"model.decode is {decode}"))
    if (decode == "linear") != (xy == "mse_linear") and xy != "none":
        errors.append(("xy", "model.decode=linear predicts the offset as tx itself (no sigmoid): its x, y term is "
                             f"loss.xy=mse_linear (or none), and mse_linear needs that decode; got loss.xy={xy} with "
                             f"model.decode={decode}"))
    return errors


# The loss section: the terms above, then one field per component hyper-parameter of the registry (focal_alpha,
# focal_gamma, poly1_eps, smooth_l1_beta, ...), with its default and bounds (a string with its choices for a named
# option such as wiou_update).
LossConfig = make_dataclass("LossConfig", [(param.field, str if param.choices else int if param.integer else float,
                                            hyperparameter_field(param)) for param in hyperparameters()],
                            bases=(LossTerms,))
LossConfig.__module__ = __name__
LossConfig.__doc__ = LossTerms.__doc__ + " Hyper-parameter fields: " + ", ".join(p.field for p in hyperparameters())


@dataclass
class TrainConfig:
    epochs: int = bounded(10, 1, None)
    batch_size: int = bounded(16, 1, None)  # per process: under torchrun the step sees batch_size x processes
    # BatchNorm statistics in training (docs/distributed.md): each process's batch (batch), the global
    # batch of all processes (sync: SyncBatchNorm, CUDA only; the same as batch in one process), or the running
    # statistics, not updated (frozen: the scale and shift still learn); sync and frozen give N processes the
    # step of one process with N times the batch.
    batchnorm: str = choice("batch", "batch", "sync", "frozen")
    # per image of the batch: see docs/training.md, "Training and evaluation" (Learning rate)
    lr: float = bounded(0.01, 0.0, None, low_open=True)
    momentum: float = bounded(0.9, 0.0, 1.0, high_open=True)
    weight_decay: float = bounded(5e-4, 0.0, None)  # not applied to BatchNorm weights and biases
    burn_in: int = bounded(100, 0, None)  # iterations of darknet's (i / burn_in)^4 warm-up
    schedule: str = choice("cosine", "cosine", "step")
    steps: list[float] = field(default_factory=lambda: [0.8, 0.9])  # step schedule, fractions of training
    step_scale: float = bounded(0.1, 0.0, 1.0, low_open=True)
    ema: bool = True
    ema_decay: float = bounded(0.999, 0.0, 1.0, low_open=True, high_open=True)
    grad_clip: float = bounded(10.0, 0.0, None)  # max gradient norm; 0 = off
    amp: bool = False  # autocast around the model: float16 on CUDA (loss scaling), bfloat16 on the CPU; loss in fp32
    channels_last: bool = True  # NHWC activations: faster convolutions on CPU (oneDNN) and on CUDA tensor cores
    # Validation: at this many steps spread evenly over the run, the last at the end (1 = only at the end), and
    # before the first step (eval_at_start: the untrained model starts every validation curve).
    eval_points: int = bounded(6, 1, None)
    eval_at_start: bool = True
    # steps between mid-epoch saves of last.pt (0 = at the end of each epoch only); a resume from one is exact
    checkpoint_interval: int = bounded(0, 0, None)
    log_interval: int = bounded(20, 1, None)  # iterations between scalar logs
    # TensorBoard (docs/tensorboard.md): iterations between the per-term gradient norms on the head outputs
    # (0 = off; +0.05% training time at 50 on shapes_nano), iterations between histograms of the raw head outputs
    # (0 = off), and how many validation images are drawn with truth and predictions at each evaluation (and of
    # the first training batch; 0 = none).
    grad_terms_interval: int = bounded(50, 0, None)
    histogram_interval: int = bounded(0, 0, None)
    log_images: int = bounded(8, 0, None)
    seed: int = 0
    # A nuisance seed: shifts the augmentation draws only (not the initial weights nor the data order), for the A/A
    # check of a study (docs/studies.md, "Reading a verdict"); 0 = the draws of train.seed.
    augment_seed: int = bounded(0, 0, None)
    device: str = choice("auto", "auto", "cpu", "cuda")
    deterministic: bool = False
    on_nonfinite: str = choice("stop", "stop", "skip")
    max_nonfinite: int = bounded(10, 0, None)  # skip: stop after this many skipped steps
    max_steps: int = bounded(0, 0, None)  # stop after this many iterations; 0 = run all epochs
    out_dir: str = "runs"  # run folders are created below this (relative to the working directory)

    def check(self) -> list[tuple[str, str]]:
        if any(not 0.0 < s < 1.0 for s in self.steps) or self.steps != sorted(self.steps):
            return [("steps", "must be increasing fractions of training in (0, 1)")]
        return []


@dataclass
class EvalConfig:
    conf_thresh: float = bounded(0.005, 0.0, 1.0)
    nms_iou: float = bounded(0.45, 0.0, 1.0, low_open=True)
    max_det: int = bounded(100, 1, None)
    # per image, the best scoring, before NMS (docs/speed.md, "Evaluation")
    max_candidates: int = bounded(3000, 1, None)
    batch_size: int = bounded(32, 1, None)  # per process under torchrun


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = ""  # a label for the run; the run folder is named after it

    def check(self) -> list[tuple[str, str]]:
        errors = []
        if self.model.pretrain.epochs and self.data.format != "shapes":
            errors.append(("model.pretrain.epochs", "the backbone is pretrained on the synthetic shapes, but "
                                                    f"data.format is {self.data.format!r}; set it to 0 (or start "
                                                    "from darknet53.conv.74 with model.pretrained)"))
        if self.model.pretrain.epochs and self.model.pretrained:
            errors.append(("model.pretrain.epochs", "model.pretrain and model.pretrained both give the backbone's "
                                                    "starting weights; set one of them"))
        return errors + [(f"loss.{key}", message) for key, message in self.loss.check_decode(self.model)]
