"""What a run writes to TensorBoard (docs/tensorboard.md): the training loop calls :class:`RunLogger`.

Layout of a run folder: ``train/`` and ``val/`` are two TensorBoard runs with the **same tags**, so
``tensorboard --logdir <run>`` lists exactly ``train`` and ``val`` and draws training and validation on one chart;
``val/`` also holds the HParams session (the run's settings beside its final metrics), so that
``tensorboard --logdir <study folder>`` lists every run of a study in one table. The tags, their descriptions and
the Custom Scalars layout are :mod:`yolo_loss.tensorboard.tags`'s; the images :mod:`yolo_loss.tensorboard.images`'s.

Per-step values are read from the device only on the steps that log them (every ``train.log_interval`` steps,
the per-term gradients every ``train.grad_terms_interval``, histograms every ``train.histogram_interval``);
images, per-class AP and PR curves only at evaluation.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from yolo_loss.config.schema import Config
from yolo_loss.data.transforms import letterbox_boxes
from yolo_loss.decode import per_anchor_view
from yolo_loss.eval.metrics import Evaluator
from yolo_loss.head import HeadSpec
from yolo_loss.losses.assign import LevelTargets
from yolo_loss.losses.criterion import LossResult
from yolo_loss.tensorboard.images import batch_with_targets, truth_and_prediction_panel
from yolo_loss.tensorboard.tags import (COUNT_DIAGNOSTICS, DIAGNOSTICS, LEVEL_NAMES, hparams_summaries, layout,
                                        scalar_summary, tag_name)

PR_NUM_THRESHOLDS = 101  # score thresholds 0, 0.01, ..., 1
HISTOGRAM_NAMES = ("obj_logit_pos", "obj_logit_neg", "tx", "ty", "tw", "th")
SPLITS = ("train", "val")


# ----------------------------------------------------------------------------------------------------- scalars

def loss_scalars(result: LossResult, batch_size: int, *, weighted: bool = True) -> dict[str, float]:
    """Flatten a :class:`LossResult` into tags: ``loss/total``; ``loss/<term>/<level>`` and ``loss/<term>/sum``
    (unweighted); with ``weighted``, ``weighted/<term>/<level>`` and ``.../sum``; ``diag/<name>/<level>`` under
    the names of :data:`~yolo_loss.tensorboard.tags.DIAGNOSTICS` (the counts per image, with a ``sum`` over the
    levels). One device sync."""
    names = [("loss/", name) for name in result.terms]
    names += [("weighted/", name) for name in result.weighted] if weighted else []
    names += [("diag/", name) for name in result.diagnostics]
    values = torch.stack([result.total.detach().expand(len(LEVEL_NAMES)),
                          *[v.detach() for v in result.terms.values()],
                          *([v.detach() for v in result.weighted.values()] if weighted else []),
                          *[v.detach().to(result.total.dtype) for v in result.diagnostics.values()]]).tolist()
    scalars = {"loss/total": values[0][0]}
    for (group, name), per_level in zip(names, values[1:]):
        if group == "diag/":
            if name in COUNT_DIAGNOSTICS:
                per_level = [value / batch_size for value in per_level]
                scalars[f"diag/{DIAGNOSTICS[name][0]}/sum"] = sum(per_level)
            name = DIAGNOSTICS[name][0]
        else:
            scalars[f"{group}{name}/sum"] = sum(per_level)
        for level, value in zip(LEVEL_NAMES, per_level):
            scalars[f"{group}{name}/{level}"] = value
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


# ----------------------------------------------------------------------------------------------------- the logger

def is_weighted(cfg: Config) -> bool:
    """Whether any term or level weight of the loss is not 1 (else ``weighted/*`` would copy ``loss/*``)."""
    weights = [*vars(cfg.loss.weights).values(), *(w for level in vars(cfg.loss.level_weights).values()
                                                    for w in level)]
    return any(weight != 1.0 for weight in weights)


class _Writer:
    """A SummaryWriter whose scalars carry their description (on the first value of each tag)."""

    def __init__(self, folder: Path, purge_step: int | None) -> None:
        self.summary = SummaryWriter(folder, purge_step=purge_step)
        self.described: set[str] = set()

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.summary.file_writer.add_summary(scalar_summary(tag, value, with_description=tag not in self.described),
                                             step)
        self.described.add(tag)


class RunLogger:
    """Everything one training run writes to TensorBoard; the loop calls one method per event.

    Args:
        run_dir: the run folder; events go to ``run_dir/train`` and ``run_dir/val`` (the HParams session too).
        cfg: the run's config (``train.log_interval``, ``grad_terms_interval``, ``histogram_interval``,
            ``log_images``, the loss weights).
        head: the run's head description (for the histograms of the raw head outputs).
        class_names: per class index.
        val_set: where the fixed validation images (its first ``train.log_images``) come from; None: no images.
        device: the training device.
        terms: the criterion's terms (for the layout and the HParams metrics).
        label: the run's name in the HParams table (a study run: its variant and seed).
        varied: the settings a study varies (shown in the HParams table by default).
        resume_step: the step a resumed run starts from: later events of the interrupted run are dropped.
    """

    def __init__(self, run_dir: Path, cfg: Config, head: HeadSpec, class_names: list[str], val_set,
                 device: torch.device, *, terms: tuple[str, ...], label: str = "", varied: tuple[str, ...] = (),
                 resume_step: int | None = None) -> None:
        self.folder = Path(run_dir)
        purge = resume_step + 1 if resume_step is not None else None  # events up to the checkpoint's step stay
        self.train, self.val = (_Writer(self.folder / split, purge) for split in SPLITS)
        self.cfg, self.head, self.class_names, self.device = cfg, head, list(class_names), device
        self.terms, self.label, self.varied = terms, label or self.folder.name, tuple(varied)
        self.weighted = is_weighted(cfg)
        self.start_time = time.time()
        if resume_step is None:
            self.train.summary.add_custom_scalars(layout(terms, weighted=self.weighted))
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
            self.train.summary.add_image("images/train_batch", make_grid(drawn, nrow=4, padding=4, pad_value=255),
                                         step)
            self._batch_drawn = True
        if self._due(step, self.cfg.train.grad_terms_interval):
            self._grad_scalars = term_gradient_norms(result, head_outputs)

    def after_step(self, step: int, result: LossResult, head_outputs: list[Tensor], targets: Tensor, *,
                   lr: float, grad_norm: float) -> None:
        """Called after the optimiser step ``step``: the scalars every ``train.log_interval`` steps (and at step
        1), the per-term gradients measured before the backward pass, histograms when asked for."""
        batch_size = head_outputs[0].shape[0]
        self._images += batch_size
        for tag, value in self._grad_scalars.items():
            self.train.scalar(tag, value, step)
        self._grad_scalars = {}
        if self._due(step, self.cfg.train.log_interval):
            now = time.perf_counter()
            scalars = loss_scalars(result, batch_size, weighted=self.weighted)
            scalars.update({"optim/lr": lr, "optim/grad_norm": grad_norm,
                            "speed/images_per_sec": self._images / max(now - self._tick, 1e-9)})
            scalars.update(memory_scalars(self.device))
            for tag, value in scalars.items():
                self.train.scalar(tag, value, step)
            self._tick, self._images = time.perf_counter(), 0
        if self._due(step, self.cfg.train.histogram_interval):
            for tag, values in head_histograms(head_outputs, result.positives, self.head).items():
                if values.numel():
                    self.train.summary.add_histogram(tag, values, step)

    def evaluation(self, step: int, metrics: dict[str, float], val_losses: dict[str, float],
                   evaluator: Evaluator) -> None:
        """The validation scalars (metrics, AP50 per class, and the loss under the training tags), a PR curve per
        class, and each fixed validation image with its truth and the detections the evaluation made."""
        for key, value in metrics.items():
            if value >= 0:  # pycocotools' -1: no ground truth in that area range, nothing to plot
                self.val.scalar(f"metrics/{key}", value, step)
        for name, value in evaluator.per_class_ap50().items():
            self.val.scalar(f"metrics/AP50/{tag_name(str(name))}", value, step)
        for tag, value in val_losses.items():
            if self.weighted or not tag.startswith("weighted/"):
                self.val.scalar(tag, value, step)
        matches = evaluator.voc_matches()
        for label in np.flatnonzero(matches.num_gt).tolist():
            mine = matches.labels == label
            counts = pr_curve_counts(matches.scores[mine], matches.is_tp[mine], matches.is_fp[mine],
                                     int(matches.num_gt[label]))
            self.val.summary.add_pr_curve_raw(f"pr/{tag_name(self.class_names[label])}", global_step=step,
                                              num_thresholds=PR_NUM_THRESHOLDS, **counts)
        for index, (image, truth, meta) in enumerate(self.val_samples):
            det = evaluator.detections(meta["image_id"])  # original-image pixels, back onto the letterboxed input
            boxes_xyxy = letterbox_boxes(det.boxes_xyxy.float(), meta["scale"], meta["pad"])
            panel = truth_and_prediction_panel(image, truth, boxes_xyxy, det.scores, det.labels, self.class_names,
                                               title=f"image {meta['image_id']}")
            self.val.summary.add_image(f"images/val_{index:02d}", panel, step)
        self.val.summary.flush()

    def hparams(self) -> None:
        """The run's settings and the names of its final metrics: the HParams session, in ``val`` (at the end)."""
        for summary in hparams_summaries(self.cfg, self.start_time, label=self.label, varied=self.varied,
                                         terms=self.terms):
            self.val.summary.file_writer.add_summary(summary)

    def close(self) -> None:
        self.train.summary.close()
        self.val.summary.close()


def read_scalars(run_dir: Path, split: str, tag: str) -> tuple[list[int], list[float]]:
    """Steps and values of one scalar tag of a run (``split``: ``"train"`` or ``"val"``); empty when absent."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(run_dir) / split
    if not folder.is_dir():
        return [], []
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return [], []
    scalars = events.Scalars(tag)
    return [event.step for event in scalars], [event.value for event in scalars]
