"""Every loss component a config may name, declared once: its term, config name, hyper-parameters and properties.

:data:`COMPONENTS` is the one list of declarations, without torch and without the functions (those are bound to
the names in ``yolo_loss/losses/registry.py``, which checks at import that the two name the same components), so
that a config can be read and checked without loading loss code. Everything that needs to know the components
reads it:

- the schema (``yolo_loss/config/schema.py``): the allowed names of ``loss.xy``, ``loss.wh``, ``loss.box``,
  ``loss.obj`` and ``loss.cls`` (:func:`component_names`), and one ``loss.<field>`` key per hyper-parameter with
  its default and bounds, or its allowed values for a named option (:func:`hyperparameters`);
- the criterion (``yolo_loss/losses/criterion.py``): how to call and reduce each configured term (``per_row``,
  ``decoded_box``, ...), with its function bound by ``registry.bind``;
- the head description (``yolo_loss/head.py``): a class component with ``softmax`` makes inference score
  ``obj * softmax(class logits)``;
- the tests: one criterion case per entry.

Adding a component is its function (``yolo_loss/losses/components.py`` or ``yolo_loss/boxes.py``), its entry here and
in ``registry.FUNCTIONS``, its tests, and a config fragment and a row in the table of docs/loss.md, "Components and
keys".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TERMS = ("xy", "wh", "box", "obj", "cls")  # the config keys loss.<term> that pick a component
OPTIONAL_TERMS = ("xy", "wh", "box")  # these may be "none"
NONE = "none"


@dataclass(frozen=True)
class HyperParam:
    """A hyper-parameter of one or more components: the config key ``loss.<field>``, the keyword of the component
    function it is passed as, its default and its bounds (``None``: unbounded; ``*_open``: the bound itself is not
    allowed; ``also``: values allowed outside the bounds, such as focal alpha's -1 for "no alpha weighting";
    ``integer``: a whole number, such as a top-k).
    With ``choices`` it is a named option instead of a number: a string ``default`` among ``choices``, no bounds."""

    field: str
    keyword: str
    default: float | str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple[float, ...] = ()
    doc: str = ""
    choices: tuple[str, ...] = ()
    integer: bool = False


@dataclass(frozen=True)
class Component:
    """One loss component.

    Attributes:
        term: which ``loss.<term>`` key picks it (:data:`TERMS`).
        name: its value there.
        params: its function's hyper-parameters, bound from the config by ``registry.bind``.
        softmax: a class loss over a softmax of the class logits: the head is then scored with a softmax.
        per_row: returns ``Tensor[N]`` (one value per positive) instead of one per class, ``Tensor[N, C]``.
        decoded_box: takes the decoded box ``(pred_xyxy, target_xyxy)`` rather than raw head outputs.
        raw_box: also takes ``raw_box`` (the raw ``tx, ty, tw, th``), for a hand-written gradient on the raw outputs
            (AB darknet's CIoU deltas) instead of the derivative of its value.
        image_size: also takes ``img_wh``, the input's width and height in pixels (the batch's: multi-scale training
            changes it), which the criterion passes: MPDIoU's normaliser, AB darknet's deltas.
        iou_modifiers: its loss is ``1 - IoU + P`` with penalties ``P`` that do not take the IoU's gradient, so that
            the IoU modifiers (:data:`IOU_MODIFIERS`: Inner-IoU, Focaler-IoU) apply to it as ``L + IoU - IoU'``
            (``boxes.modified_iou_loss``), which replaces its IoU.
        running_mean: a hyper-parameter (its momentum) of a running mean of ``1 - IoU`` over training steps that the
            criterion keeps as its state and passes to the function as ``iou_mean`` (Wise-IoU's outlier degree):
            the one component property that is state, not a field of a pure function.
        running_mean_update: a hyper-parameter (a named option) saying when the criterion updates that running mean.
        source: the paper or code it follows.
    """

    term: str
    name: str
    params: tuple[HyperParam, ...] = ()
    softmax: bool = False
    per_row: bool = False
    decoded_box: bool = False
    raw_box: bool = False
    image_size: bool = False
    iou_modifiers: bool = False
    running_mean: HyperParam | None = None
    running_mean_update: HyperParam | None = None
    source: str = ""


FOCAL_ALPHA = HyperParam("focal_alpha", "alpha", 0.25, 0.0, 1.0, also=(-1.0,),
                         doc="focal loss alpha (obj and cls focal), in [0, 1]; -1 disables the alpha weighting")
FOCAL_GAMMA = HyperParam("focal_gamma", "gamma", 2.0, 0.0, None, doc="focal loss gamma (obj and cls focal)")
POLY1_EPS = HyperParam("poly1_eps", "eps", 1.0, doc="Poly-1 epsilon")
SMOOTH_L1_BETA = HyperParam("smooth_l1_beta", "beta", 1.0, 0.0, None, low_open=True, doc="smooth L1 beta (wh)")
SIOU_THETA = HyperParam("siou_theta", "theta", 4.0, 1.0, None, doc="SIoU shape-cost exponent theta")
FOCAL_EIOU_GAMMA = HyperParam("focal_eiou_gamma", "gamma", 0.5, 0.0, None, doc="Focal-EIoU's power of the IoU weight")
ALPHA_IOU_POWER = HyperParam("alpha_iou_power", "power", 3.0, 0.0, None, low_open=True,
                             doc="Alpha-IoU's power alpha (1: CIoU)")
WIOU_ALPHA = HyperParam("wiou_alpha", "alpha", 1.9, 1.0, None, low_open=True, doc="Wise-IoU v3 alpha")
WIOU_DELTA = HyperParam("wiou_delta", "delta", 3.0, 0.0, None, low_open=True, doc="Wise-IoU v3 delta")
WIOU_MOMENTUM = HyperParam("wiou_momentum", "", 0.01, 0.0, 1.0, low_open=True,
                           doc="momentum of Wise-IoU's running mean of 1 - IoU (the criterion's state)")
# When the criterion updates Wise-IoU's running mean, each time with the current batch's mean of 1 - IoU and before
# that mean is used (as the authors' IouLoss.__call__ does: update, then scale the loss):
# - step (the default): once per training step, with the mean over the positives of all levels, then used by every
#   level. The default because the committed runs were trained with it: they reproduce unchanged.
# - level: the authors' convention (Instinct323/wiou iou.py, called once per level by a YOLOv5/v7 ComputeLoss): once
#   per level in level order (strides 8, 16, 32), with that level's mean, before that level's loss. A level without
#   positives leaves it alone (YOLOv5 calls the loss only where a level has positives).
WIOU_UPDATE = HyperParam("wiou_update", "", "step", choices=("step", "level"),
                         doc="when Wise-IoU's running mean is updated: once per step over all levels (step, the "
                             "default: the committed runs), or before each level's loss with its mean (level: the "
                             "authors' code)")
NWD_CONSTANT = HyperParam("nwd_constant", "constant", 12.8, 0.0, None, low_open=True,
                          doc="NWD's normalising constant C, in input pixels (the authors' 12.8: AI-TOD's average "
                              "object size)")
SHAPE_IOU_SCALE = HyperParam("shape_iou_scale", "scale", 0.0, 0.0, None,
                             doc="Shape-IoU's scale (the target's shape weights its distance and shape costs; 0, the "
                                 "authors' default: unweighted)")
# The IoU modifiers: hyper-parameters of every box loss with iou_modifiers (1 - IoU + penalties), at their off values by
# default; bind() leaves the function as it is unless one is on, so that every result without them is unchanged.
INNER_RATIO = HyperParam("inner_ratio", "inner_ratio", 1.0, 0.0, None, low_open=True,
                         doc="Inner-IoU: the IoU in the box loss is that of the boxes scaled by this ratio about "
                             "their centres (the authors try 0.5 to 1.5); 1 = off")
FOCALER_D = HyperParam("focaler_d", "focaler_d", 0.0, 0.0, 1.0,
                       doc="Focaler-IoU's d: the IoU in the box loss is clamp((IoU - d) / (u - d), 0, 1); d = 0 and "
                           "u = 1 = off")
FOCALER_U = HyperParam("focaler_u", "focaler_u", 1.0, 0.0, 1.0,
                       doc="Focaler-IoU's u (above focaler_d): see focaler_d")
IOU_MODIFIERS = (INNER_RATIO, FOCALER_D, FOCALER_U)
VARIFOCAL_ALPHA = HyperParam("varifocal_alpha", "alpha", 0.75, 0.0, 1.0, doc="varifocal alpha (negatives' weight)")
VARIFOCAL_GAMMA = HyperParam("varifocal_gamma", "gamma", 2.0, 0.0, None, doc="varifocal gamma")
QFL_BETA = HyperParam("qfl_beta", "beta", 2.0, 0.0, None, doc="quality focal loss beta")

COMPONENTS: tuple[Component, ...] = (
    Component("xy", "bce", source="darknet yolo_layer.c (delta = gx - sig(tx))"),
    Component("xy", "mse", source="squared error on the sigmoid, the common re-implementation"),
    Component("xy", "mse_t", source="YOLOv3 paper, section 2.1 (t-space squared error)"),
    Component("xy", "mse_linear",
              source="YOLOv3 paper, section 5: linear x, y (needs model.decode=linear)"),
    Component("wh", "mse", source="darknet and the YOLOv3 paper"),
    Component("wh", "smooth_l1", (SMOOTH_L1_BETA,), source="Girshick, Fast R-CNN, 2015"),
    Component("wh", "l1"),
    Component("box", "iou", decoded_box=True, iou_modifiers=True, source="1 - IoU"),
    Component("box", "log_iou", decoded_box=True, source="Yu et al., UnitBox, 2016"),
    Component("box", "giou", decoded_box=True, iou_modifiers=True,
              source="Rezatofighi et al., GIoU, CVPR 2019"),
    Component("box", "diou", decoded_box=True, iou_modifiers=True,
              source="Zheng et al., DIoU, AAAI 2020"),
    Component("box", "ciou", decoded_box=True, iou_modifiers=True,
              source="Zheng et al., CIoU, AAAI 2020"),
    Component("box", "ciou_darknet", decoded_box=True, raw_box=True, image_size=True,
              source="AlexeyAB/darknet src/box.c dx_box_iou: CIoU's value, its hand-written deltas as the gradient"),
    Component("box", "siou", (SIOU_THETA,), decoded_box=True, iou_modifiers=True,
              source="Gevorgyan, SIoU, 2022"),
    Component("box", "eiou", decoded_box=True, iou_modifiers=True, source="Zhang et al., EIoU, 2021"),
    Component("box", "focal_eiou", (FOCAL_EIOU_GAMMA,), decoded_box=True,
              source="Zhang et al., Focal-EIoU, 2021"),
    Component("box", "alpha_ciou", (ALPHA_IOU_POWER,), decoded_box=True,
              source="He et al., Alpha-IoU, NeurIPS 2021"),
    Component("box", "wiou", (WIOU_ALPHA, WIOU_DELTA), decoded_box=True, running_mean=WIOU_MOMENTUM,
              running_mean_update=WIOU_UPDATE, source="Tong et al., Wise-IoU v3, 2023"),
    Component("box", "nwd", (NWD_CONSTANT,), decoded_box=True,
              source="Wang et al., NWD, 2021 (arXiv 2110.13389); jwwangchn/NWD mmdet/models/losses/iou_loss.py"),
    Component("box", "mpdiou", decoded_box=True, image_size=True, iou_modifiers=True,
              source="Ma and Xu, MPDIoU, 2023 (arXiv 2307.07662)"),
    Component("box", "shape_iou", (SHAPE_IOU_SCALE,), decoded_box=True, iou_modifiers=True,
              source="Zhang and Zhang, Shape-IoU, 2023 (arXiv 2312.17663); malagoutou/Shape-IoU shapeiou.py"),
    Component("obj", "bce", source="darknet and the YOLOv3 paper"),
    Component("obj", "focal", (FOCAL_ALPHA, FOCAL_GAMMA), source="Lin et al., focal loss, 2017"),
    Component("obj", "mse", source="YOLOv1/v2-style squared error"),
    Component("obj", "varifocal", (VARIFOCAL_ALPHA, VARIFOCAL_GAMMA), source="Zhang et al., VFL, 2021"),
    Component("obj", "qfl", (QFL_BETA,), source="Li et al., GFL, NeurIPS 2020"),
    Component("cls", "bce", source="YOLOv3 paper: independent logistic classifiers"),
    Component("cls", "ce", softmax=True, per_row=True, source="softmax cross-entropy"),
    Component("cls", "focal", (FOCAL_ALPHA, FOCAL_GAMMA), source="Lin et al., focal loss, 2017"),
    Component("cls", "poly1", (POLY1_EPS,), softmax=True, per_row=True,
              source="Leng et al., PolyLoss, ICLR 2022"),
    Component("cls", "varifocal", (VARIFOCAL_ALPHA, VARIFOCAL_GAMMA), source="Zhang et al., VFL, 2021"),
    Component("cls", "qfl", (QFL_BETA,), source="Li et al., GFL, NeurIPS 2020"),
)


def component(term: str, name: str) -> Component:
    """The entry of ``loss.<term>: <name>``.

    Raises:
        ValueError: an unknown term or name (the valid ones listed).
    """
    if term not in TERMS:
        raise ValueError(f"unknown loss term {term!r}; valid: {', '.join(TERMS)}")
    for entry in COMPONENTS:
        if entry.term == term and entry.name == name:
            return entry
    raise ValueError(f"loss.{term}: unknown component {name!r}; valid: {', '.join(component_names(term))}")


def component_names(term: str) -> tuple[str, ...]:
    """The allowed values of ``loss.<term>``, in declaration order, ``"none"`` last where the term may be off."""
    names = tuple(entry.name for entry in COMPONENTS if entry.term == term)
    return names + ((NONE,) if term in OPTIONAL_TERMS else ())


# Label assignment (loss.assign). The static rules read only the truths and the anchors (losses/assign.py: darknet's
# best anchor, AlexeyAB's multi-anchor threshold, ultralytics' ratio rule; their settings are loss.assign_iou_thresh,
# loss.anchor_t, loss.neighbour_cells and loss.collisions). The dynamic assigners pick positives among every
# candidate (level, anchor, cell) of the head, with a soft class target where the method has one
# (losses/assigners/); their hyper-parameters are declared here once, each a loss.<field> key.
STATIC_ASSIGN_RULES = ("best_anchor", "multi_anchor", "ratio")
MULTI_ANCHOR_IOU_THRESH = 0.213  # multi_anchor: AlexeyAB's iou_thresh in yolov4.cfg
RATIO_ANCHOR_T = 4.0  # ratio: ultralytics' hyp anchor_t


@dataclass(frozen=True)
class Assigner:
    """A dynamic label assigner: its ``loss.assign`` name, its hyper-parameters (bound to the keywords of its
    function in ``losses/assigners/``), and, as documentation, its class target and its source."""

    name: str
    params: tuple[HyperParam, ...] = ()
    class_target: str = ""
    source: str = ""


TAL_TOPK = HyperParam("tal_topk", "topk", 10, 1, None, integer=True, doc="TAL: positives a truth takes at most")
TAL_ALPHA = HyperParam("tal_alpha", "alpha", 0.5, 0.0, None,
                       doc="TAL: the class score's power in the alignment metric")
TAL_BETA = HyperParam("tal_beta", "beta", 6.0, 0.0, None, doc="TAL: the overlap's power in the alignment metric")
SIMOTA_RADIUS = HyperParam("simota_radius", "center_radius", 1.5, 0.0, None, low_open=True,
                           doc="SimOTA: half-side, in strides, of the centre region around a truth's centre")
SIMOTA_TOPK = HyperParam("simota_topk", "candidate_topk", 10, 1, None, integer=True,
                         doc="SimOTA: the IoUs summed for a truth's dynamic k")
SIMOTA_IOU_WEIGHT = HyperParam("simota_iou_weight", "iou_weight", 3.0, 0.0, None,
                               doc="SimOTA: the weight of the IoU cost -ln(IoU) beside the class cost")
ATSS_TOPK = HyperParam("atss_topk", "topk", 9, 1, None, integer=True,
                       doc="ATSS: the anchors nearest a truth's centre taken per level as candidates")

ASSIGNERS: tuple[Assigner, ...] = (
    Assigner("tal", (TAL_TOPK, TAL_ALPHA, TAL_BETA), class_target="the normalised alignment metric",
             source="Feng et al., TOOD, ICCV 2021; ultralytics TaskAlignedAssigner (YOLOv8)"),
    Assigner("simota", (SIMOTA_RADIUS, SIMOTA_TOPK, SIMOTA_IOU_WEIGHT), class_target="the IoU with its truth",
             source="Ge et al., YOLOX, 2021; YOLOX get_assignments / simota_matching"),
    Assigner("atss", (ATSS_TOPK,), class_target="one-hot",
             source="Zhang et al., ATSS, CVPR 2020; mmdetection ATSSAssigner"),
)


def assign_names() -> tuple[str, ...]:
    """The allowed values of ``loss.assign``: the static rules, then the dynamic assigners."""
    return STATIC_ASSIGN_RULES + tuple(entry.name for entry in ASSIGNERS)


def assigner(name: str) -> Assigner | None:
    """The dynamic assigner ``loss.assign: <name>``; ``None`` for a static rule.

    Raises:
        ValueError: an unknown name (the valid ones listed).
    """
    if name in STATIC_ASSIGN_RULES:
        return None
    for entry in ASSIGNERS:
        if entry.name == name:
            return entry
    raise ValueError(f"loss.assign: unknown rule {name!r}; valid: {', '.join(assign_names())}")




def hyperparameters() -> tuple[HyperParam, ...]:
    """Every hyper-parameter of every component, then of every dynamic assigner, once each (shared ones, such as
    focal alpha, once), in order."""
    seen: dict[str, HyperParam] = {}
    for param in [*(p for entry in COMPONENTS for p in all_params(entry)),
                  *(p for entry in ASSIGNERS for p in entry.params)]:
        if seen.setdefault(param.field, param) != param:
            raise ValueError(f"loss.{param.field} is declared twice with different settings")
    return tuple(seen.values())


def all_params(entry: Component) -> tuple[HyperParam, ...]:
    """Every hyper-parameter of ``entry``: its function's (``params``), the IoU modifiers' where it takes them, then
    those of the criterion's state."""
    return (*entry.params, *(IOU_MODIFIERS if entry.iou_modifiers else ()),
            *(p for p in (entry.running_mean, entry.running_mean_update) if p is not None))


def modifiers_on(values: dict[str, Any]) -> bool:
    """Whether ``values`` (``{field: value}``, missing ones at their defaults) turn an IoU modifier on."""
    return any(float(values.get(p.field, p.default)) != p.default for p in IOU_MODIFIERS)


def modifier_problems(box: str, values: dict[str, Any]) -> list[tuple[str, str]]:
    """``(field, message)`` for each IoU-modifier setting that ``loss.box: <box>`` cannot take: Focaler-IoU's
    interval empty, or a modifier on with a box loss that is not ``1 - IoU + penalties`` (or no box loss)."""
    problems = []
    focaler_d = float(values.get(FOCALER_D.field, FOCALER_D.default))
    focaler_u = float(values.get(FOCALER_U.field, FOCALER_U.default))
    if focaler_d >= focaler_u:
        problems.append((FOCALER_D.field, f"must be below focaler_u ({focaler_u:g}), got {focaler_d:g}"))
    if modifiers_on(values) and (box == NONE or not component("box", box).iou_modifiers):
        on = [p.field for p in IOU_MODIFIERS if float(values.get(p.field, p.default)) != p.default]
        takers = ", ".join(e.name for e in COMPONENTS if e.iou_modifiers)
        problems.append((on[0], f"{' and '.join(on)} {'modifies' if len(on) == 1 else 'modify'} the IoU of a box "
                                f"loss of the form 1 - IoU + penalties ({takers}); loss.box is {box}"))
    return problems


hyperparameters()  # fails at import if two entries declare one field differently
