"""The YOLOv3 criterion: assembles the configured terms, applies the weights once, reduces by a named rule.

Per level ``l`` and per image the loss is

    L = w_xy   * lw_xy[l]   * sum_pos s * xy(tx, ty; gx, gy)
      + w_wh   * lw_wh[l]   * sum_pos s * wh(tw, th; gw, gh)
      + w_box  * lw_box[l]  * sum_pos s * box(decoded box, truth box)
      + w_obj_pos * lw_obj_pos[l] * sum_pos obj(to; 1 or IoU)
      + w_obj_neg * lw_obj_neg[l] * sum_{neg, not ignored} obj(to; 0)
      + w_cls  * lw_cls[l]  * sum_pos cls(tc; y)

with ``s = 2 - w * h`` (truth size as a fraction of the input) under ``box_scale: two_minus_wh`` and 1 otherwise.
Reduction ``sum_per_image`` divides every sum by the number of images B (darknet); ``mean_per_term`` divides the
box and class sums by the level's positives (at least 1) and the objectness sums by the level's cells
``B * A * H * W``. With the defaults this is darknet's loss exactly (``loss-reference.md``).

The positives come from ``loss.assign``: a static rule on the truths and anchors (``assign.py``: darknet's best
anchor, AlexeyAB's multi-anchor threshold, ultralytics' ratio rule), or a dynamic assigner over every candidate of
the head (``assigners/``: TAL, SimOTA, ATSS), whose class target ``y`` is then its own (soft for TAL and SimOTA).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from yolo_loss.boxes import box_cxcywh_to_xyxy, box_iou_pairwise, ciou_loss
from yolo_loss.config import components as declared
from yolo_loss.config.schema import decode_problems
from yolo_loss.decode import grid_xy, per_anchor_view
from yolo_loss.head import HeadSpec
from yolo_loss.losses import registry
from yolo_loss.losses.assign import (ASSIGN_RULES, COLLISION_RULES, LevelTargets, anchor_boxes_at_cells,
                                     assign_targets, ignore_mask, truths_per_image)
from yolo_loss.losses.assigners.candidates import DYNAMIC_RULES, assign_dynamic
from yolo_loss.losses.components import smooth_labels

if TYPE_CHECKING:
    from yolo_loss.config.schema import LossConfig

TERMS = ("xy", "wh", "box", "obj_pos", "obj_neg", "cls")
REDUCTIONS = ("sum_per_image", "mean_per_term", "mean_per_term_times_batch")
DIAGNOSTICS = ("positives", "ignored", "iou", "recall50", "recall75", "obj_pos", "obj_neg", "cls_prob")


@dataclass
class LossResult:
    """What the criterion returns.

    Attributes:
        total: the scalar to back-propagate.
        terms: unweighted reduced value of each enabled term, ``Tensor[L]`` per level (with gradient).
        weighted: the same times its term and level weights; ``total`` is the sum of all of them.
        diagnostics: darknet-style statistics per level, ``Tensor[L]`` each, no gradient: ``positives``,
            ``ignored`` (negatives ignored by the ignore rule), ``iou`` (mean IoU of the decoded box of the
            positives with their truths), ``recall50`` / ``recall75`` (fraction of positives with that IoU above
            0.5 / 0.75), ``obj_pos`` / ``obj_neg`` (mean objectness probability on positives / counted negatives),
            ``cls_prob`` (mean probability of the true classes on positives). A level without positives reports 0.
        positives: the target assignment the terms were computed with, one :class:`LevelTargets` per level.
    """

    total: Tensor
    terms: dict[str, Tensor]
    weighted: dict[str, Tensor]
    diagnostics: dict[str, Tensor] = field(default_factory=dict)
    positives: list[LevelTargets] = field(default_factory=list)


class YoloCriterion:
    """YOLOv3 loss assembled from named components (see the module docstring for the formula).

    Args:
        head: what the head maps mean (anchors, strides, classes, class activation): :class:`HeadSpec`.
        xy, wh, box, obj, cls: the component of each term, by its name in ``yolo_loss/config/components.py``
            (``"none"`` turns xy, wh or box off).
        hyperparameters: ``{loss.<field>: value}`` of the components' hyper-parameters (``focal_alpha``,
            ``poly1_eps``, ...); a missing one takes the registry's default.
        The rest: as the ``loss.*`` keys of the same names (docs/loss.md, "Components and keys").

    Call it as ``criterion(preds, targets, img_size)``:

    - ``preds``: one raw head map per level, ``Tensor[B, A * (5 + C), H, W]``, channels grouped per anchor as
      ``tx, ty, tw, th, to, tc_0 .. tc_{C-1}``, levels in the order of ``head.strides``;
    - ``targets``: ``Tensor[N, 6]`` rows ``(image index, class index, cx, cy, w, h)`` normalised to the input;
    - ``img_size``: the input size in pixels, an int (square) or ``(height, width)``.

    Raises:
        ValueError: an unknown component or option, or a class component whose activation is not the head's (a
            softmax loss with a sigmoid head would be trained with one meaning and evaluated with another).
    """

    def __init__(self, head: HeadSpec, *, xy: str = "bce", wh: str = "mse", box: str = "none",
                 box_scale: str = "two_minus_wh", obj: str = "bce", obj_target: str = "one", cls: str = "bce",
                 cls_target: str = "one",
                 label_smoothing: float = 0.0, assign: str = "best_anchor",
                 assign_iou_thresh: float = declared.MULTI_ANCHOR_IOU_THRESH,
                 anchor_t: float = declared.RATIO_ANCHOR_T, neighbour_cells: bool = False, collisions: str = "merge",
                 ignore: str = "prediction", ignore_thresh: float = 0.7,
                 reduction: str = "sum_per_image", weights: dict[str, float] | None = None,
                 level_weights: dict[str, list[float]] | None = None,
                 hyperparameters: dict[str, float | str] | None = None):
        names = {"xy": xy, "wh": wh, "box": box, "obj": obj, "cls": cls}
        unknown = set(hyperparameters or {}) - {param.field for param in declared.hyperparameters()}
        if unknown:
            raise ValueError(f"unknown component hyper-parameter(s) {', '.join(sorted(unknown))}")
        self.functions = {term: registry.bind(term, name, hyperparameters or {}) for term, name in names.items()}
        self.components = {term: declared.component(term, name) for term, name in names.items()
                           if self.functions[term] is not None}
        softmax = self.components["cls"].softmax
        if softmax != (head.class_activation == "softmax"):
            raise ValueError(f"loss.cls={cls} trains {'a softmax' if softmax else 'independent sigmoids'} over the "
                             f"classes, but the head is scored with class_activation={head.class_activation!r}; "
                             "build the head with yolo_loss.head.build_head (or that class_activation)")
        for option, value, valid in (("box_scale", box_scale, ("two_minus_wh", "none")),
                                     ("obj_target", obj_target, ("one", "iou", "ciou")),
                                     ("cls_target", cls_target, ("one", "iou")),
                                     ("ignore", ignore, ("prediction", "prior", "none")),
                                     ("reduction", reduction, REDUCTIONS),
                                     ("assign", assign, ASSIGN_RULES + DYNAMIC_RULES),
                                     ("collisions", collisions, COLLISION_RULES)):
            if value not in valid:
                raise ValueError(f"{option} {value!r}; valid: {', '.join(valid)}")
        if problems := decode_problems(xy, wh, box, head.decode):
            raise ValueError("; ".join(message for _, message in problems))
        self.head = head
        self.box_scale, self.obj_target, self.ignore, self.reduction = box_scale, obj_target, ignore, reduction
        self.ignore_thresh, self.label_smoothing = ignore_thresh, label_smoothing
        self.assign, self.assign_iou_thresh, self.anchor_t = assign, assign_iou_thresh, anchor_t
        self.neighbour_cells, self.collisions = neighbour_cells, collisions
        # A dynamic assigner's keyword hyper-parameters, from the loss.<field> values (config/components.py).
        dynamic = declared.assigner(assign)
        self.assigner_params = {p.keyword: (hyperparameters or {}).get(p.field, p.default)
                                for p in dynamic.params} if dynamic is not None else {}
        self.terms = tuple(t for t, on in zip(TERMS, (xy, wh, box, obj, obj, cls)) if on != declared.NONE)
        self.cls_target = cls_target
        box_entry = self.components.get("box")
        self.running_mean = box_entry.running_mean if box_entry is not None else None
        self.running_mean_momentum = float((hyperparameters or {}).get(
            self.running_mean.field, self.running_mean.default)) if self.running_mean is not None else 0.0
        # When the running mean is updated (declared.WIOU_UPDATE): "step" (once per call, over all levels) or "level".
        update = box_entry.running_mean_update if box_entry is not None else None
        self.running_mean_update = str((hyperparameters or {}).get(update.field, update.default)) if update else "step"
        if update is not None and self.running_mean_update not in update.choices:
            raise ValueError(f"{update.field} {self.running_mean_update!r}; valid: {', '.join(update.choices)}")
        self.state: dict[str, Tensor] = {"iou_mean": torch.tensor(1.0)} if self.running_mean is not None else {}
        weights = weights or {}
        level_weights = level_weights or {}
        self.weights = {t: float(weights.get(t, 1.0)) for t in self.terms}
        self.level_weights = {t: list(level_weights.get(t, [1.0] * head.num_levels)) for t in self.terms}

    def __call__(self, preds: list[Tensor], targets: Tensor, img_size: int | tuple[int, int], *,
                 update_state: bool = True) -> LossResult:
        """The loss of a batch (see the class docstring); ``update_state=False`` (evaluation) leaves the criterion's
        state, Wise-IoU's running mean, as it is."""
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        batch = preds[0].shape[0]
        _check_inputs(preds, targets, self.head)
        targets = targets.to(device=preds[0].device, dtype=preds[0].dtype)
        anchors = self.head.anchors(like=preds[0])
        grid_sizes = [tuple(p.shape[-2:]) for p in preds]
        if self.assign in DYNAMIC_RULES:
            positives = assign_dynamic(self.assign, preds, targets, head=self.head, anchors=anchors,
                                       img_size=img_size, params=self.assigner_params)
        else:
            positives = assign_targets(targets, num_classes=self.head.num_classes, anchors_per_level=anchors,
                                       strides=self.head.strides, grid_sizes=grid_sizes, img_size=img_size,
                                       rule=self.assign, iou_thresh=self.assign_iou_thresh, anchor_t=self.anchor_t,
                                       neighbour_cells=self.neighbour_cells, collisions=self.collisions)
        truths_xyxy = truths_per_image(targets, batch, img_size) if self.ignore != "none" else None
        box_keywords = {"img_wh": (img_size[1], img_size[0])} if "box" in self.terms and self.components[
            "box"].image_size else {}
        # Wise-IoU: the running mean of 1 - IoU, updated before it is used (the authors' order): once here over all
        # levels (wiou_update: step), or before each level's terms with that level's mean (wiou_update: level).
        per_step = self.running_mean is not None and self.running_mean_update == "step"
        per_level_update = self.running_mean is not None and self.running_mean_update == "level"
        if per_step:
            if update_state:
                self._update_iou_mean(preds, positives, anchors, range(len(preds)))
            box_keywords["iou_mean"] = self.state["iou_mean"].to(preds[0])

        per_level = []
        for level, (pred, pos, level_anchors) in enumerate(zip(preds, positives, anchors)):
            if per_level_update:
                if update_state:
                    self._update_iou_mean(preds, positives, anchors, (level,))
                box_keywords = {**box_keywords, "iou_mean": self.state["iou_mean"].to(preds[0])}
            per_level.append(self._level_terms(pred, pos, level_anchors, level, truths_xyxy, box_keywords))
        terms = {t: torch.stack([lv[0][t] for lv in per_level]) for t in self.terms}
        diagnostics = {d: torch.stack([lv[1][d] for lv in per_level]) for d in DIAGNOSTICS}
        weighted = {t: terms[t] * (self.weights[t] * terms[t].new_tensor(self.level_weights[t])) for t in self.terms}
        total = torch.stack([w.sum() for w in weighted.values()]).sum()
        return LossResult(total=total, terms=terms, weighted=weighted, diagnostics=diagnostics, positives=positives)

    def state_dict(self) -> dict[str, Tensor]:
        """The criterion's state across steps (Wise-IoU's running mean of ``1 - IoU``; empty for every other loss),
        saved in the checkpoint so that a resumed run continues exactly."""
        return {name: value.clone() for name, value in self.state.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, value in state.items():
            self.state[name] = value.detach().clone().to(self.state[name])

    @torch.no_grad()
    def _update_iou_mean(self, preds: list[Tensor], positives: list[LevelTargets], anchors: list[Tensor],
                         levels: Iterable[int]) -> None:
        """``iou_mean <- (1 - m) iou_mean + m mean(1 - IoU)`` over this batch's positives of ``levels`` (all of them
        for ``wiou_update: step``, one for ``level``); no change where they have none. Under DDP the mean is over
        every process's positives, so that all processes keep the same state."""
        total, count = preds[0].new_zeros(()), preds[0].new_zeros(())
        for level in levels:
            pred, pos, level_anchors = preds[level], positives[level], anchors[level]
            rows = per_anchor_view(pred, level_anchors.shape[0])[pos.image, pos.anchor, :4, pos.cell_y, pos.cell_x]
            box = self.head.decode_box(rows, torch.stack((pos.cell_x, pos.cell_y), -1).to(rows), pos.anchor_wh, level)
            iou = box_iou_pairwise(box_cxcywh_to_xyxy(box), box_cxcywh_to_xyxy(pos.target_box_cxcywh))
            total, count = total + (1.0 - iou).sum(), count + iou.numel()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            both = torch.stack((total, count))
            torch.distributed.all_reduce(both)
            total, count = both.unbind()
        if count > 0:
            momentum = self.running_mean_momentum
            self.state["iou_mean"] = (1.0 - momentum) * self.state["iou_mean"] + momentum * (total / count).cpu()

    def _level_terms(self, pred: Tensor, pos: LevelTargets, anchors: Tensor, level: int,
                     truths_xyxy: Tensor | None, box_keywords: dict[str, Tensor],
                     ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        view = per_anchor_view(pred, anchors.shape[0])  # [B, A, 5 + C, H, W]
        batch, num_anchors, _, height, width = view.shape
        pred_obj, pred_pos = read_head(view, pos)  # [B, A, H, W] and [P, 5 + C]

        pred_box = self.head.decode_box(pred_pos[:, :4], torch.stack((pos.cell_x, pos.cell_y), -1).to(pred_pos),
                                        pos.anchor_wh, level)
        pred_box_xyxy, target_box_xyxy = box_cxcywh_to_xyxy(pred_box), box_cxcywh_to_xyxy(pos.target_box_cxcywh)
        with torch.no_grad():
            iou = box_iou_pairwise(pred_box_xyxy, target_box_xyxy)
        scale = 2.0 - pos.truth_area_norm if self.box_scale == "two_minus_wh" else torch.ones_like(iou)

        counted_neg = self._negatives(view, pos, anchors, level, truths_xyxy)
        pos_norm, obj_norm = self._norms(pos.num_positives, batch, batch * num_anchors * height * width)

        fn = self.functions
        sums: dict[str, Tensor] = {}
        if "xy" in self.terms:
            target_xy = self.head.xy_target(pos.target_xy, level)
            sums["xy"] = (scale * fn["xy"](pred_pos[:, 0:2], target_xy).sum(-1)).sum() / pos_norm
        if "wh" in self.terms:
            sums["wh"] = (scale * fn["wh"](pred_pos[:, 2:4], pos.target_wh).sum(-1)).sum() / pos_norm
        if "box" in self.terms:
            raw = {"raw_box": pred_pos[:, :4]} if self.components["box"].raw_box else {}
            sums["box"] = (scale * fn["box"](pred_box_xyxy, target_box_xyxy, **box_keywords, **raw)).sum() / pos_norm
        obj_target = self._objectness_target(iou, pred_box_xyxy, target_box_xyxy)
        obj_rows = pos.objectness_row  # one row per cell: a kept collision's cell is one objectness target
        sums["obj_pos"] = (fn["obj"](pred_pos[:, 4], obj_target) * obj_rows).sum() / obj_norm
        sums["obj_neg"] = (fn["obj"](pred_obj, torch.zeros_like(pred_obj)) * counted_neg).sum() / obj_norm
        target_cls = smooth_labels(pos.target_cls, self.label_smoothing) if self.label_smoothing else pos.target_cls
        if self.cls_target == "iou":  # IoU-aware class targets (VarifocalNet, GFL): the true classes' 1 becomes IoU
            target_cls = target_cls * iou.clamp(min=0.0)[:, None]
        loss = fn["cls"](pred_pos[:, 5:], target_cls)
        sums["cls"] = (loss if self.components["cls"].per_row else loss.sum(-1)).sum() / pos_norm

        with torch.no_grad():
            diagnostics = self._diagnostics(pred_pos, pred_obj, pos, iou, counted_neg, batch)
        return sums, diagnostics

    def _norms(self, num_positives: int, batch: int, num_cells: int) -> tuple[float, float]:
        """What the positives' sums and the objectness sums of a level are divided by, by the reduction."""
        if self.reduction == "sum_per_image":
            return batch, batch
        per_term = (max(num_positives, 1), num_cells)
        if self.reduction == "mean_per_term_times_batch":  # ultralytics' ComputeLoss: the means times B
            return per_term[0] / batch, per_term[1] / batch
        return per_term

    def _objectness_target(self, iou: Tensor, pred_box_xyxy: Tensor, target_box_xyxy: Tensor) -> Tensor:
        """The positives' objectness target by ``obj_target``: 1, the IoU, or the CIoU, clamped at 0, no gradient."""
        if self.obj_target == "one":
            return torch.ones_like(iou)
        if self.obj_target == "ciou":
            with torch.no_grad():
                return (1.0 - ciou_loss(pred_box_xyxy, target_box_xyxy)).to(iou).clamp(min=0.0)
        return iou.clamp(min=0.0)

    def _negatives(self, view: Tensor, pos: LevelTargets, anchors: Tensor, level: int,
                   truths_xyxy: Tensor | None) -> Tensor:
        """``Tensor[B, A, H, W]`` float: 1 for a negative that counts, 0 for a positive or an ignored negative."""
        batch, num_anchors, _, height, width = view.shape
        stride = self.head.strides[level]
        with torch.no_grad():
            if self.ignore == "prediction":
                grid = grid_xy(height, width, device=view.device, dtype=view.dtype)
                boxes = self.head.decode_box(view[:, :, :4].permute(0, 1, 3, 4, 2), grid,
                                             anchors.view(1, num_anchors, 1, 1, 2), level)
                counted = ~ignore_mask(boxes, truths_xyxy, self.ignore_thresh, stride, self.head.centre_margin(level))
            elif self.ignore == "prior":
                counted = ~ignore_mask(anchor_boxes_at_cells(anchors, stride, height, width), truths_xyxy,
                                       self.ignore_thresh, stride)
            else:
                counted = torch.ones(batch, num_anchors, height, width, dtype=torch.bool, device=view.device)
            counted[pos.image, pos.anchor, pos.cell_y, pos.cell_x] = False  # a positive is never a negative
        return counted.to(view.dtype)

    def _diagnostics(self, pred_pos: Tensor, pred_obj: Tensor, pos: LevelTargets, iou: Tensor,
                     counted_neg: Tensor, batch: int) -> dict[str, Tensor]:
        n_pos = pos.num_positives
        zero = pred_obj.new_zeros(())
        if n_pos:
            cls_prob = self.head.class_probabilities(pred_pos[:, 5:])
            true_prob = (cls_prob * pos.target_cls).sum() / pos.target_cls.sum().clamp(min=1)
        n_neg = counted_neg.sum()
        n_cells = counted_neg.numel()
        return {
            "positives": pred_obj.new_tensor(float(n_pos)),
            "ignored": (n_cells - n_pos - n_neg).clamp(min=0),
            "iou": iou.mean() if n_pos else zero,
            "recall50": (iou > 0.5).to(iou).mean() if n_pos else zero,
            "recall75": (iou > 0.75).to(iou).mean() if n_pos else zero,
            "obj_pos": pred_pos[:, 4].sigmoid().mean() if n_pos else zero,
            "obj_neg": (pred_obj.sigmoid() * counted_neg).sum() / n_neg.clamp(min=1),
            "cls_prob": true_prob if n_pos else zero,
        }


class _ReadHead(torch.autograd.Function):
    """Read the objectness channel of every cell and the whole rows of the positives from one head map.

    Plain indexing would give the head map one zero-filled, full-size gradient per read and then add them; at
    batch 64 and 416 px that is most of the loss's time. Here backward fills one zero tensor and writes both.
    """

    @staticmethod
    def forward(ctx, view: Tensor, image: Tensor, anchor: Tensor, cell_y: Tensor, cell_x: Tensor):
        ctx.save_for_backward(image, anchor, cell_y, cell_x)
        ctx.shape = view.shape
        return view[:, :, 4].clone(), view[image, anchor, :, cell_y, cell_x]

    @staticmethod
    def backward(ctx, grad_obj: Tensor | None, grad_rows: Tensor | None):
        image, anchor, cell_y, cell_x = ctx.saved_tensors
        reference = grad_obj if grad_obj is not None else grad_rows
        grad = reference.new_zeros(ctx.shape)
        if grad_obj is not None:
            grad[:, :, 4] = grad_obj
        if grad_rows is not None:  # [B, A, H, W, 5 + C] view: the rows are its last dimension
            grad.permute(0, 1, 3, 4, 2).index_put_((image, anchor, cell_y, cell_x), grad_rows, accumulate=True)
        return grad, None, None, None, None


def read_head(view: Tensor, pos: LevelTargets) -> tuple[Tensor, Tensor]:
    """``(objectness logits Tensor[B, A, H, W], positive rows Tensor[P, 5 + C])`` of a ``[B, A, 5 + C, H, W]`` view."""
    return _ReadHead.apply(view, pos.image, pos.anchor, pos.cell_y, pos.cell_x)


def _check_inputs(preds: list[Tensor], targets: Tensor, head: HeadSpec) -> None:
    if len(preds) != head.num_levels:
        raise ValueError(f"expected {head.num_levels} head maps, got {len(preds)}")
    for level, pred in enumerate(preds):
        if pred.dim() != 4 or pred.shape[1] != head.channels:
            raise ValueError(f"head map {level} has shape {tuple(pred.shape)}; expected [B, {head.num_anchors} * "
                             f"(5 + {head.num_classes}), H, W]")
    if targets.dim() != 2 or targets.shape[1] != 6:
        raise ValueError(f"targets must be [N, 6] (image, class, cx, cy, w, h); got {tuple(targets.shape)}")
    if targets.numel() and not bool(torch.isfinite(targets).all()):
        raise ValueError("targets contain NaN or inf")


def build_criterion(cfg: LossConfig, head: HeadSpec, *, img_size: int | None = None) -> YoloCriterion:
    """Translate a :class:`~yolo_loss.config.schema.LossConfig` into a :class:`YoloCriterion` for ``head``
    (:func:`yolo_loss.head.build_head` of the same config). ``img_size`` (``data.img_size``) scales the objectness
    weights when ``loss.obj_weights_img_size`` is set (:func:`scaled_weights`)."""
    return YoloCriterion(
        head, xy=cfg.xy, wh=cfg.wh, box=cfg.box, box_scale=cfg.box_scale, obj=cfg.obj, obj_target=cfg.obj_target,
        cls=cfg.cls, cls_target=cfg.cls_target, label_smoothing=cfg.label_smoothing, assign=cfg.assign,
        assign_iou_thresh=cfg.assign_iou_thresh, anchor_t=cfg.anchor_t, neighbour_cells=cfg.neighbour_cells,
        collisions=cfg.collisions, ignore=cfg.ignore, ignore_thresh=cfg.ignore_thresh, reduction=cfg.reduction,
        weights=scaled_weights(cfg, img_size), level_weights=dict(vars(cfg.level_weights)),
        hyperparameters=cfg.hyperparameter_values())


def scaled_weights(cfg: LossConfig, img_size: int | None) -> dict[str, float]:
    """``loss.weights``, the objectness ones times ``(img_size / loss.obj_weights_img_size)^2`` when that is set
    (ultralytics' train.py: ``hyp['obj'] *= (imgsz / 640) ** 2``)."""
    weights = dict(vars(cfg.weights))
    if cfg.obj_weights_img_size:
        if img_size is None:
            raise ValueError("loss.obj_weights_img_size scales the objectness weights to the input size: "
                             "pass build_criterion(..., img_size=data.img_size)")
        factor = (img_size / cfg.obj_weights_img_size) ** 2
        weights.update(obj_pos=weights["obj_pos"] * factor, obj_neg=weights["obj_neg"] * factor)
    return weights
