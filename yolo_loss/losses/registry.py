"""The function of every loss component, bound to its declaration (``yolo_loss/config/components.py``).

The declarations (names, hyper-parameters, properties) live in the config package so that a config is read and
checked without loading loss code; :data:`FUNCTIONS` gives each the pure elementwise function that computes it, and
:func:`bind` fixes its hyper-parameters from a config's values. Import-time check: the two name the same components.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import Tensor

from yolo_loss import boxes
from yolo_loss.config.components import (COMPONENTS, IOU_MODIFIERS, NONE, OPTIONAL_TERMS, component,
                                         modifier_problems, modifiers_on)
from yolo_loss.losses import components
from yolo_loss.losses.ciou_darknet import ciou_darknet_loss

FUNCTIONS: dict[tuple[str, str], Callable[..., Tensor]] = {
    ("xy", "bce"): components.xy_bce,
    ("xy", "mse"): components.xy_mse,
    ("xy", "mse_t"): components.xy_mse_t,
    ("xy", "mse_linear"): components.xy_mse_linear,
    ("wh", "mse"): components.wh_mse,
    ("wh", "smooth_l1"): components.wh_smooth_l1,
    ("wh", "l1"): components.wh_l1,
    ("box", "iou"): boxes.iou_loss,
    ("box", "log_iou"): boxes.log_iou_loss,
    ("box", "giou"): boxes.giou_loss,
    ("box", "diou"): boxes.diou_loss,
    ("box", "ciou"): boxes.ciou_loss,
    ("box", "ciou_darknet"): ciou_darknet_loss,
    ("box", "siou"): boxes.siou_loss,
    ("box", "eiou"): boxes.eiou_loss,
    ("box", "focal_eiou"): boxes.focal_eiou_loss,
    ("box", "alpha_ciou"): boxes.alpha_ciou_loss,
    ("box", "wiou"): boxes.wiou_loss,
    ("box", "nwd"): boxes.nwd_loss,
    ("box", "mpdiou"): boxes.mpdiou_loss,
    ("box", "shape_iou"): boxes.shape_iou_loss,
    ("obj", "bce"): components.bce_with_logits,
    ("obj", "focal"): components.sigmoid_focal,
    ("obj", "mse"): components.mse_on_sigmoid,
    ("obj", "varifocal"): components.varifocal,
    ("obj", "qfl"): components.quality_focal,
    ("cls", "bce"): components.cls_bce,
    ("cls", "ce"): components.cls_ce,
    ("cls", "focal"): components.cls_focal,
    ("cls", "poly1"): components.cls_poly1,
    ("cls", "varifocal"): components.varifocal,
    ("cls", "qfl"): components.quality_focal,
}


def bind(term: str, name: str, values: dict[str, Any]) -> Callable[..., Tensor] | None:
    """The function of ``loss.<term>: <name>`` with its hyper-parameters taken from ``values`` (``{field: value}``,
    missing ones at their defaults); ``None`` for ``"none"``.

    With an IoU modifier on (``loss.box`` only), the function is ``boxes.modified_iou_loss`` of it; with them off it
    is the component's own function, so that every result without them is unchanged.

    Raises:
        ValueError: an unknown name, or IoU-modifier settings the box loss cannot take (``modifier_problems``).
    """
    if term == "box" and (problems := modifier_problems(name, values)):
        raise ValueError("; ".join(f"loss.{field}: {message}" for field, message in problems))
    if name == NONE and term in OPTIONAL_TERMS:
        return None
    entry = component(term, name)
    function = FUNCTIONS[term, name]
    if entry.params:
        function = partial(function, **{p.keyword: values.get(p.field, p.default) for p in entry.params})
    if entry.iou_modifiers and modifiers_on(values):
        function = partial(boxes.modified_iou_loss, function,
                           **{p.keyword: float(values.get(p.field, p.default)) for p in IOU_MODIFIERS})
    return function


def _check_functions() -> None:
    declared = {(entry.term, entry.name) for entry in COMPONENTS}
    if declared != set(FUNCTIONS):
        raise ImportError(f"loss components declared without a function: {sorted(declared - set(FUNCTIONS))}; "
                          f"functions without a declaration: {sorted(set(FUNCTIONS) - declared)}")


_check_functions()
