"""What a run writes to TensorBoard (README, "TensorBoard"): the training loop calls :class:`RunLogger`.

Layout of ``<run>/tensorboard/``:

- ``train/`` and ``val/``: two runs with the **same tags** (``loss/total``, ``xy/P3``, ``diag/iou/P3``, ...), so
  TensorBoard draws training and validation on one chart;
- the folder itself: the hparams session (the run's config and the names of its final metrics), written once at
  the end of training, so that ``tensorboard --logdir <study folder>`` lists every run of a study in one table.

Per-step values are read from the device only on the steps that log them (every ``train.log_interval`` steps,
the per-term gradients every ``train.grad_terms_interval``, histograms every ``train.histogram_interval``);
images and PR curves only at evaluation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import sys
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from google.protobuf import struct_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api_pb2, metadata as hparams_metadata, plugin_data_pb2
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.writer import FileWriter
from torchvision.utils import draw_bounding_boxes, make_grid

from yolo_loss.data.transforms import letterbox_boxes
from yolo_loss.decode import per_anchor_view
from yolo_loss.evaluation import COCO_METRIC_KEYS, VOC_METRIC_KEYS, Evaluator
from yolo_loss.head import HeadSpec
from yolo_loss.losses.assign import LevelTargets
from yolo_loss.losses.criterion import LossResult
from yolo_loss.schema import Config

LEVEL_NAMES = ("P3", "P4", "P5")  # strides 8, 16, 32
COUNT_DIAGNOSTICS = ("positives", "ignored")  # counts: logged per image (train and val batches differ in size)
METRIC_TAGS = tuple(f"metrics/{key}" for key in COCO_METRIC_KEYS + VOC_METRIC_KEYS)
# Drawn predictions: those scoring at least this (darknet's display threshold), the best few per image.
DRAW_SCORE_THRESH = 0.25
DRAW_MAX_DETECTIONS = 20
DRAW_MIN_SIDE = 320  # smaller images are enlarged (nearest) by a whole factor so that the labels stay readable
TRUTH_COLOR, PREDICTION_COLOR = (0, 220, 0), (255, 40, 40)
PR_NUM_THRESHOLDS = 101  # score thresholds 0, 0.01, ..., 1
HISTOGRAM_NAMES = ("obj_logit_pos", "obj_logit_neg", "tx", "ty", "tw", "th")
# The settings of a run that go to the HParams table: whole sections, then single keys (paths and loader details
# are left out: they do not change what is learnt).
HPARAM_SECTIONS = ("model", "loss", "train", "data.augment", "eval")
HPARAM_KEYS = ("name", "data.format", "data.img_size")
HPARAM_EXCLUDED = ("train.out_dir",)
# TensorBoard's HParams table opens with five settings ticked, those marked "differs" first: the five loss components.
# (A run cannot know which settings differ across its study; these are what an ablation varies most.)
HPARAMS_SHOWN_FIRST = ("loss.xy", "loss.wh", "loss.box", "loss.obj", "loss.cls")
GROUP_IGNORES = ("name", "train.seed")  # runs differing only in these are one session group (mean metrics)


# ----------------------------------------------------------------------------------------------------- scalars

def loss_scalars(result: LossResult, batch_size: int) -> dict[str, float]:
    """Flatten a :class:`LossResult` into tags: ``loss/total``; ``<term>/<level>`` and ``<term>/sum`` (unweighted);
    ``weighted/<term>/<level>`` and ``.../sum``; ``diag/<name>/<level>`` (``positives`` and ``ignored`` as counts
    per image, with a ``sum`` over the levels). One device sync."""
    names = [("", name) for name in result.terms] + [("weighted/", name) for name in result.weighted]
    names += [("diag/", name) for name in result.diagnostics]
    values = torch.stack([result.total.detach().expand(len(LEVEL_NAMES)),
                          *[v.detach() for v in result.terms.values()],
                          *[v.detach() for v in result.weighted.values()],
                          *[v.detach().to(result.total.dtype) for v in result.diagnostics.values()]]).tolist()
    scalars = {"loss/total": values[0][0]}
    for (group, name), per_level in zip(names, values[1:]):
        if group == "diag/" and name in COUNT_DIAGNOSTICS:
            per_level = [value / batch_size for value in per_level]
        for level, value in zip(LEVEL_NAMES, per_level):
            scalars[f"{group}{name}/{level}"] = value
        if group != "diag/" or name in COUNT_DIAGNOSTICS:
            scalars[f"{group}{name}/sum"] = sum(per_level)
    return scalars


def term_gradient_norms(result: LossResult, head_outputs: list[Tensor]) -> dict[str, float]:
    """The L2 norm of the gradient that each weighted term alone (summed over the levels) sends into each head
    output: ``grad/<term>/<level>``, ``grad/<term>/all`` (the three heads together) and the same for ``total``.

    ``head_outputs`` are the tensors the criterion was called with; their graph is kept (``retain_graph``) for the
    backward pass that follows. The parameters' ``.grad`` are not touched. One device sync.
    """
    norms, total = [], None
    for per_level in result.weighted.values():
        grads = torch.autograd.grad(per_level.sum(), head_outputs, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, head_outputs)]
        norms.append(torch.stack([g.detach().float().norm() for g in grads]))
        total = grads if total is None else [t + g for t, g in zip(total, grads)]
    norms.append(torch.stack([g.detach().float().norm() for g in total]))
    scalars = {}
    for name, per_level in zip([*result.weighted, "total"], torch.stack(norms).tolist()):
        for level, value in zip(LEVEL_NAMES, per_level):
            scalars[f"grad/{name}/{level}"] = value
        scalars[f"grad/{name}/all"] = math.sqrt(sum(value * value for value in per_level))
    return scalars


def memory_scalars(device: torch.device) -> dict[str, float]:
    """``memory/cpu_rss_mb`` (now), ``memory/cpu_peak_rss_mb`` and, on CUDA, ``memory/cuda_max_allocated_mb``
    (peaks since the start of the process). None of them waits for the device."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    scalars = {"memory/cpu_peak_rss_mb": peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)}
    try:
        with open("/proc/self/statm") as statm:
            scalars["memory/cpu_rss_mb"] = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):  # not Linux: the peak is what there is
        scalars["memory/cpu_rss_mb"] = scalars["memory/cpu_peak_rss_mb"]
    if device.type == "cuda":
        scalars["memory/cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return scalars


@torch.no_grad()
def head_histograms(preds: list[Tensor], positives: list[LevelTargets], head: HeadSpec) -> dict[str, Tensor]:
    """Raw head outputs over all levels: objectness logits on the positives (``obj_logit_pos``) and on every other
    cell (``obj_logit_neg``, ignored ones included), and ``tx, ty, tw, th`` on the positives, with the positives
    the criterion assigned (``LossResult.positives``). ``hist/<name>`` tags."""
    parts: dict[str, list[Tensor]] = {name: [] for name in HISTOGRAM_NAMES}
    for pred, pos in zip(preds, positives):
        view = per_anchor_view(pred.detach(), head.num_anchors)  # [B, A, 5 + C, H, W]
        rows = view[pos.image, pos.anchor, :5, pos.cell_y, pos.cell_x]  # [P, 5]
        negative = torch.ones_like(view[:, :, 4], dtype=torch.bool)
        negative[pos.image, pos.anchor, pos.cell_y, pos.cell_x] = False
        parts["obj_logit_pos"].append(rows[:, 4])
        parts["obj_logit_neg"].append(view[:, :, 4][negative])
        for channel, name in enumerate(("tx", "ty", "tw", "th")):
            parts[name].append(rows[:, channel])
    return {f"hist/{name}": torch.cat(values).float().cpu() for name, values in parts.items()}


# ----------------------------------------------------------------------------------------------------- images

def _enlarge(image: Tensor) -> tuple[Tensor, int]:
    factor = max(1, math.ceil(DRAW_MIN_SIDE / max(image.shape[-2:])))
    if factor > 1:
        image = torch.nn.functional.interpolate(image[None], scale_factor=factor, mode="nearest")[0]
    return image, factor


def draw_boxes(image: Tensor, boxes_xyxy: Tensor, labels: list[str], color: tuple[int, int, int]) -> Tensor:
    """``Tensor[3, H, W]`` float in [0, 1] with the boxes (input pixels) and their labels drawn, enlarged to at least
    :data:`DRAW_MIN_SIDE` px; returns uint8."""
    image, factor = _enlarge(image.detach().float().cpu().clamp(0, 1))
    image = (image * 255).round().to(torch.uint8)
    if boxes_xyxy.shape[0] == 0:
        return image
    height, width = image.shape[-2:]
    boxes = boxes_xyxy.detach().float().cpu() * factor
    boxes = torch.stack((boxes[:, 0].clamp(0, width - 1), boxes[:, 1].clamp(0, height - 1),
                         boxes[:, 2].clamp(0, width - 1), boxes[:, 3].clamp(0, height - 1)), dim=1)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2])
    return draw_bounding_boxes(image, boxes, labels, colors=color, width=2, fill_labels=True)


def truth_and_prediction_panel(image: Tensor, truth: Tensor, boxes_xyxy: Tensor, scores: Tensor, labels: Tensor,
                               class_names: list[str]) -> Tensor:
    """Two copies of ``image`` side by side, uint8: the ground truth (``truth``: ``Tensor[n, 5]`` rows ``(class,
    cx, cy, w, h)`` normalised, as the dataset gives them) in green on the left, the predictions (input pixels)
    scoring at least :data:`DRAW_SCORE_THRESH` in red on the right, each labelled ``class score``."""
    height, width = image.shape[-2:]
    truth_xyxy = torch.cat((truth[:, 1:3] - truth[:, 3:5] / 2, truth[:, 1:3] + truth[:, 3:5] / 2), dim=1)
    truth_xyxy = truth_xyxy * truth_xyxy.new_tensor([width, height, width, height])
    left = draw_boxes(image, truth_xyxy, [class_names[int(c)] for c in truth[:, 0].tolist()], TRUTH_COLOR)
    shown = (scores >= DRAW_SCORE_THRESH).nonzero().flatten()[:DRAW_MAX_DETECTIONS]  # scores are sorted
    right = draw_boxes(image, boxes_xyxy[shown], [f"{class_names[int(c)]} {s:.2f}" for c, s in
                                                  zip(labels[shown].tolist(), scores[shown].tolist())],
                       PREDICTION_COLOR)
    gap = torch.full((3, left.shape[1], 4), 255, dtype=torch.uint8)
    return torch.cat((left, gap, right), dim=2)


def batch_with_targets(images: Tensor, targets: Tensor, class_names: list[str], count: int) -> Tensor:
    """``uint8[N, 3, H', W']``: the first ``count`` images of a training batch with their targets (``Tensor[n, 6]``
    rows ``(image, class, cx, cy, w, h)`` normalised) drawn in green."""
    height, width = images.shape[-2:]
    images, targets = images[:count].detach().float().cpu(), targets.detach().float().cpu()
    drawn = []
    for index, image in enumerate(images):
        rows = targets[targets[:, 0] == index]
        xyxy = torch.cat((rows[:, 2:4] - rows[:, 4:6] / 2, rows[:, 2:4] + rows[:, 4:6] / 2), dim=1)
        xyxy = xyxy * xyxy.new_tensor([width, height, width, height])
        drawn.append(draw_boxes(image, xyxy, [class_names[int(c)] for c in rows[:, 1].tolist()], TRUTH_COLOR))
    return torch.stack(drawn)


# ----------------------------------------------------------------------------------------------------- PR curves

def pr_curve_counts(scores: np.ndarray, is_tp: np.ndarray, is_fp: np.ndarray, num_gt: int,
                    num_thresholds: int = PR_NUM_THRESHOLDS) -> dict[str, np.ndarray]:
    """TensorBoard's raw PR-curve arrays at the score thresholds ``k / (num_thresholds - 1)``: a detection
    counts at a threshold when its score is at least that; ``fn`` is the class's ground truth not found there
    (so recall is over all of it, not only the detected); ``tn`` is 0 (undefined for detection); precision is 0
    where nothing is detected."""
    thresholds = np.arange(num_thresholds) / (num_thresholds - 1)  # k / (K - 1) exactly, as linspace's are not
    tp_scores, fp_scores = np.sort(scores[is_tp]), np.sort(scores[is_fp])
    tp = (tp_scores.shape[0] - np.searchsorted(tp_scores, thresholds, side="left")).astype(np.float64)
    fp = (fp_scores.shape[0] - np.searchsorted(fp_scores, thresholds, side="left")).astype(np.float64)
    return {"true_positive_counts": tp, "false_positive_counts": fp,
            "true_negative_counts": np.zeros_like(tp), "false_negative_counts": num_gt - tp,
            "precision": tp / np.maximum(tp + fp, 1.0), "recall": tp / max(num_gt, 1)}


def tag_name(name: str) -> str:
    """A class name as a tag component: letters, digits, ``_ . -``; anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "_"


# ----------------------------------------------------------------------------------------------------- hparams

def hparam_values(cfg: Config) -> dict[str, tuple[Any, tuple | None]]:
    """The run's settings for the HParams table: ``{dotted key: (value, allowed values or None)}``, lists as JSON."""
    def leaves(node: Any, prefix: str):
        for f in fields(node):
            value, key = getattr(node, f.name), f"{prefix}{f.name}"
            if is_dataclass(value):
                yield from leaves(value, key + ".")
            else:
                choices = f.metadata.get("choices") or ((False, True) if isinstance(value, bool) else None)
                yield key, (json.dumps(value) if isinstance(value, list) else value, choices)

    flat = dict(leaves(cfg, ""))
    return {key: value for key, value in flat.items() if key not in HPARAM_EXCLUDED
            and (key in HPARAM_KEYS or any(key.startswith(section + ".") for section in HPARAM_SECTIONS))}


def _hparams_summary(tag: str, plugin_data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=hparams_metadata.create_summary_metadata(plugin_data),
                      tensor=hparams_metadata.NULL_TENSOR)
    return summary


def _proto_value(value: Any) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, (int, float)):
        return struct_pb2.Value(number_value=value)
    return struct_pb2.Value(string_value=str(value))


def hparams_summaries(cfg: Config, start_time: float) -> list[summary_pb2.Summary]:
    """The hparams plugin's experiment (settings and metric names), session start (this run's values) and session
    end. The metrics are the last values of ``metrics/*`` and ``loss/total`` in the ``val`` run and of
    ``loss/total`` in the ``train`` run below the session's folder."""
    values = hparam_values(cfg)
    infos = []
    for key, (value, choices) in values.items():
        kind = (api_pb2.DATA_TYPE_BOOL if isinstance(value, bool) else api_pb2.DATA_TYPE_FLOAT64
                if isinstance(value, (int, float)) else api_pb2.DATA_TYPE_STRING)
        info = api_pb2.HParamInfo(name=key, type=kind, differs=key in HPARAMS_SHOWN_FIRST)
        if choices:
            info.domain_discrete.extend(list(choices))
        infos.append(info)
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(group="val", tag=tag), display_name=tag.split("/")[1])
               for tag in METRIC_TAGS]
    metrics += [api_pb2.MetricInfo(name=api_pb2.MetricName(group=group, tag="loss/total"),
                                   display_name=f"{group} loss") for group in ("train", "val")]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=start_time)
    # Runs with the same settings apart from their name and seed form one group in the table, which shows the mean
    # of their metrics (the seeds of a study's variant; each run stays listed in the group).
    shared = {key: value for key, (value, _) in values.items() if key not in GROUP_IGNORES}
    group = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=start_time, group_name=group[:16])
    for key, (value, _) in values.items():
        start.hparams[key].CopyFrom(_proto_value(value))
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    return [_hparams_summary(hparams_metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
            _hparams_summary(hparams_metadata.SESSION_START_INFO_TAG,
                             plugin_data_pb2.HParamsPluginData(session_start_info=start)),
            _hparams_summary(hparams_metadata.SESSION_END_INFO_TAG,
                             plugin_data_pb2.HParamsPluginData(session_end_info=end))]


# ----------------------------------------------------------------------------------------------------- the logger

class RunLogger:
    """Everything one training run writes to TensorBoard; the loop calls one method per event.

    Args:
        run_dir: the run folder; events go to ``run_dir/tensorboard/{train,val}`` and hparams to
            ``run_dir/tensorboard``.
        cfg: the run's config (``train.log_interval``, ``grad_terms_interval``, ``histogram_interval``,
            ``log_images``).
        head: the run's head description (for the histograms of the raw head outputs).
        class_names: per class index.
        val_set: where the fixed validation images (its first ``train.log_images``) come from; None: no images.
        device: the training device.
        resume_step: the step a resumed run starts from: later events of the interrupted run are dropped.
    """

    def __init__(self, run_dir: Path, cfg: Config, head: HeadSpec, class_names: list[str], val_set,
                 device: torch.device, *, resume_step: int | None = None) -> None:
        self.folder = Path(run_dir) / "tensorboard"
        purge = resume_step + 1 if resume_step is not None else None  # events up to the checkpoint's step stay
        self.train = SummaryWriter(self.folder / "train", purge_step=purge)
        self.val = SummaryWriter(self.folder / "val", purge_step=purge)
        self.cfg, self.head, self.class_names, self.device = cfg, head, list(class_names), device
        self.start_time = time.time()
        count = min(cfg.train.log_images, len(val_set)) if val_set is not None else 0
        self.val_samples = [val_set[index] for index in range(count)]  # deterministic letterbox: fixed images
        self._batch_drawn = cfg.train.log_images == 0
        self._tick, self._images = time.perf_counter(), 0
        self._grad_scalars: dict[str, float] = {}

    @staticmethod
    def _due(step: int, interval: int) -> bool:
        return interval > 0 and (step % interval == 0 or step == 1)

    def start_epoch(self) -> None:
        """Restart the images-per-second clock (evaluation and checkpoints are not training time)."""
        self._tick, self._images = time.perf_counter(), 0

    def before_backward(self, step: int, result: LossResult, head_outputs: list[Tensor], images: Tensor,
                        targets: Tensor) -> None:
        """Called with the loss of step ``step`` (counted from 1) before its backward pass: draws the first
        training batch once and, every ``train.grad_terms_interval`` steps, measures the per-term gradients."""
        if not self._batch_drawn:
            drawn = batch_with_targets(images, targets, self.class_names, self.cfg.train.log_images)
            self.train.add_image("images/train_batch", make_grid(drawn, nrow=4, padding=4, pad_value=255), step)
            self._batch_drawn = True
        if self._due(step, self.cfg.train.grad_terms_interval):
            self._grad_scalars = term_gradient_norms(result, head_outputs)

    def after_step(self, step: int, result: LossResult, head_outputs: list[Tensor], targets: Tensor, *,
                   lr: float, grad_norm: float) -> None:
        """Called after the optimiser step ``step``: the scalars every ``train.log_interval`` steps (and at step
        1), the per-term gradients measured before the backward pass, histograms when asked for."""
        batch_size = head_outputs[0].shape[0]
        self._images += batch_size
        if self._grad_scalars:
            for tag, value in self._grad_scalars.items():
                self.train.add_scalar(tag, value, step)
            self._grad_scalars = {}
        if self._due(step, self.cfg.train.log_interval):
            now = time.perf_counter()
            scalars = loss_scalars(result, batch_size)
            scalars.update({"optim/lr": lr, "optim/grad_norm": grad_norm,
                            "speed/images_per_sec": self._images / max(now - self._tick, 1e-9)})
            scalars.update(memory_scalars(self.device))
            for tag, value in scalars.items():
                self.train.add_scalar(tag, value, step)
            self._tick, self._images = time.perf_counter(), 0
        if self._due(step, self.cfg.train.histogram_interval):
            for tag, values in head_histograms(head_outputs, result.positives, self.head).items():
                if values.numel():
                    self.train.add_histogram(tag, values, step)

    def evaluation(self, step: int, metrics: dict[str, float], val_losses: dict[str, float],
                   evaluator: Evaluator) -> None:
        """The validation scalars (metrics, and the loss under the training tags), a PR curve per class and the
        fixed validation images with their truth and the detections the evaluation made."""
        for key, value in metrics.items():
            if value >= 0:  # pycocotools' -1: no ground truth in that area range, nothing to plot
                self.val.add_scalar(f"metrics/{key}", value, step)
        for tag, value in val_losses.items():
            self.val.add_scalar(tag, value, step)
        matches = evaluator.voc_matches()
        for label in np.flatnonzero(matches.num_gt).tolist():
            mine = matches.labels == label
            counts = pr_curve_counts(matches.scores[mine], matches.is_tp[mine], matches.is_fp[mine],
                                     int(matches.num_gt[label]))
            self.val.add_pr_curve_raw(f"pr/{tag_name(self.class_names[label])}", global_step=step,
                                      num_thresholds=PR_NUM_THRESHOLDS, **counts)
        if self.val_samples:
            panels = self._draw_predictions(evaluator)  # one row per image: truth | predictions, two images a row
            self.val.add_image("images/predictions", make_grid(panels, nrow=2, padding=8, pad_value=255), step)
        self.val.flush()

    def _draw_predictions(self, evaluator: Evaluator) -> Tensor:
        panels = []
        for image, truth, meta in self.val_samples:
            det = evaluator.detections(meta["image_id"])  # original-image pixels, back onto the letterboxed input
            boxes_xyxy = letterbox_boxes(det.boxes_xyxy.float(), meta["scale"], meta["pad"])
            panels.append(truth_and_prediction_panel(image, truth, boxes_xyxy, det.scores, det.labels,
                                                     self.class_names))
        return torch.stack(panels)

    def hparams(self) -> None:
        """The run's settings and the names of its final metrics, in ``run_dir/tensorboard`` (once, at the end)."""
        writer = FileWriter(str(self.folder))
        for summary in hparams_summaries(self.cfg, self.start_time):
            writer.add_summary(summary)
        writer.close()

    def close(self) -> None:
        self.train.close()
        self.val.close()


def read_scalars(run_dir: Path, split: str, tag: str) -> tuple[list[int], list[float]]:
    """Steps and values of one scalar tag of a run (``split``: ``"train"`` or ``"val"``); empty when absent."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(run_dir) / "tensorboard" / split
    if not folder.is_dir():
        return [], []
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return [], []
    scalars = events.Scalars(tag)
    return [event.step for event in scalars], [event.value for event in scalars]
