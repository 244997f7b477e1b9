"""What a run's TensorBoard tags are called, what each one means (its description, shown in TensorBoard's tooltip),
the Custom Scalars layout that draws the comparisons on one chart each, and the HParams summaries.

Tags (``P3, P4, P5``: the levels at strides 8, 16, 32; ``sum`` over the three):

- ``loss/total``, ``loss/<term>/<level|sum>``: the unweighted terms (``xy, wh, box, obj_pos, obj_neg, cls``);
  ``weighted/<term>/...`` the same times their weights, written only when some weight is not 1;
- ``diag/p_obj_pos``, ``diag/p_obj_neg`` (objectness probability on positives and counted negatives),
  ``diag/p_cls_true`` (probability of the true class), ``diag/iou_pos``, ``diag/recall50``, ``diag/recall75``
  (box quality of the positives), ``diag/positives_per_image``, ``diag/ignored_per_image``;
- ``grad/<term>/<level|all>``: the gradient norm each weighted term sends into the head outputs;
- ``optim/lr``, ``optim/grad_norm``, ``speed/images_per_sec``, ``memory/*``;
- ``metrics/<AP|AP50|...>`` and ``metrics/AP50/<class>`` (validation only).
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from dataclasses import fields, is_dataclass
from typing import Any

from google.protobuf import struct_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api_pb2, metadata as hparams_metadata, plugin_data_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata

from yolo_loss.config.schema import Config
from yolo_loss.eval.metrics import COCO_METRIC_KEYS, VOC_METRIC_KEYS

LEVEL_NAMES = ("P3", "P4", "P5")  # strides 8, 16, 32
LEVEL_TEXT = {"P3": "level P3 (stride 8, small objects)", "P4": "level P4 (stride 16)",
              "P5": "level P5 (stride 32, large objects)", "sum": "summed over the three levels",
              "all": "the three head outputs together"}
TERM_TEXT = {
    "xy": "the x, y term (loss.xy) on the positives", "wh": "the w, h term (loss.wh) on the positives",
    "box": "the IoU-family box term (loss.box) on the positives' decoded boxes",
    "obj_pos": "the objectness term on the positives (target 1, or the IoU under obj_target: iou)",
    "obj_neg": "the objectness term on the negatives that the ignore rule counts (target 0)",
    "cls": "the class term (loss.cls) on the positives", "total": "all weighted terms together",
}
# The criterion's diagnostics (LossResult.diagnostics) -> their tag, named for what they are, and their meaning.
DIAGNOSTICS = {
    "positives": ("positives_per_image", "positives (assigned anchors) per image"),
    "ignored": ("ignored_per_image", "negatives the ignore rule leaves out of the objectness loss, per image"),
    "iou": ("iou_pos", "mean IoU of the positives' decoded boxes with their truths (box quality)"),
    "recall50": ("recall50", "fraction of positives whose decoded box overlaps its truth by IoU > 0.5"),
    "recall75": ("recall75", "fraction of positives whose decoded box overlaps its truth by IoU > 0.75"),
    "obj_pos": ("p_obj_pos", "mean objectness probability on the positives (should rise towards 1)"),
    "obj_neg": ("p_obj_neg", "mean objectness probability on the counted negatives (should fall towards 0)"),
    "cls_prob": ("p_cls_true", "mean probability of the true class on the positives"),
}
COUNT_DIAGNOSTICS = ("positives", "ignored")  # counts: per image (train and val batches differ in size), with a sum
METRIC_TEXT = {
    "AP": "COCO AP, IoU 0.5:0.95 (pycocotools)", "AP50": "COCO AP at IoU 0.5", "AP75": "COCO AP at IoU 0.75",
    "APs": "COCO AP of small objects (< 32^2 px)", "APm": "COCO AP of medium objects (32^2 to 96^2 px)",
    "APl": "COCO AP of large objects (> 96^2 px)", "VOC07_AP50": "PASCAL VOC 2007 11-point AP at IoU 0.5",
    "VOC_AP50": "PASCAL VOC 2010+ all-point AP at IoU 0.5",
}
METRIC_TAGS = tuple(f"metrics/{key}" for key in COCO_METRIC_KEYS + VOC_METRIC_KEYS)
OTHER_TEXT = {
    "optim/lr": "learning rate of the step (burn-in, then the schedule)",
    "optim/grad_norm": "total gradient norm of the parameters before clipping (train.grad_clip)",
    "speed/images_per_sec": "training images per second since the last log (evaluation excluded)",
    "memory/cpu_rss_mb": "resident memory of the process now, MB",
    "memory/cpu_peak_rss_mb": "peak resident memory of the process, MB",
    "memory/cuda_max_allocated_mb": "peak CUDA memory allocated by torch, MB",
}


def describe(tag: str) -> str:
    """The description of a scalar tag (shown in TensorBoard's tooltip and the Custom Scalars charts)."""
    parts = tag.split("/")
    if tag in OTHER_TEXT:
        return OTHER_TEXT[tag]
    if tag == "loss/total":
        return "the loss the optimiser minimises: the sum of the weighted terms (per image under sum_per_image)"
    if parts[0] in ("loss", "weighted") and len(parts) == 3:
        weighting = "unweighted" if parts[0] == "loss" else "times its term and level weights"
        return f"{TERM_TEXT.get(parts[1], parts[1])}, {LEVEL_TEXT.get(parts[2], parts[2])}, {weighting}"
    if parts[0] == "diag":
        meaning = next((text for name, text in DIAGNOSTICS.values() if name == parts[1]), parts[1])
        return f"{meaning}; {LEVEL_TEXT.get(parts[-1], parts[-1])}"
    if parts[0] == "grad":
        return (f"L2 norm of the gradient that {TERM_TEXT.get(parts[1], parts[1])} (weighted) sends into "
                f"{LEVEL_TEXT.get(parts[2], parts[2])}")
    if parts[0] == "metrics" and len(parts) == 3:
        return f"VOC all-point AP at IoU 0.5 of the class {parts[2]} (validation)"
    if parts[0] == "metrics":
        return f"{METRIC_TEXT.get(parts[1], parts[1])} (validation)"
    return tag


def scalar_summary(tag: str, value: float, *, with_description: bool) -> summary_pb2.Summary:
    """One scalar as a summary; ``with_description`` (for the first value of a tag) adds its description, which
    TensorBoard reads from a tag's first event."""
    item = summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
    if with_description:
        item.metadata.CopyFrom(scalar_metadata.create_summary_metadata(display_name=tag, description=describe(tag)))
    return summary_pb2.Summary(value=[item])


PINNED = ("loss/total", "metrics/AP", "metrics/AP50", "metrics/AP75")  # the first cards of the link below


def tensorboard_url(port: int = 6006) -> str:
    """The Time Series dashboard with smoothing 0 (every point as logged) and the loss and the metrics pinned on top,
    so that they are the first screen."""
    cards = json.dumps([{"plugin": "scalars", "tag": tag} for tag in PINNED], separators=(",", ":"))
    return f"http://localhost:{port}/?smoothing=0&pinnedCards={urllib.parse.quote(cards)}#timeseries"


def custom_scalars_url(port: int = 6006) -> str:
    """The Custom Scalars dashboard (each chart overlays what is compared: :func:`layout`) with smoothing 0, a
    setting the legacy dashboards read from the URL's hash (their default, 0.6, smooths a short curve away).
    Checked in Chromium with TensorBoard 2.21: the dashboard opens at smoothing 0; its "ignore outliers in chart
    scaling" box, which the browser's local storage keeps rather than the URL, stays as the reader left it."""
    return f"http://localhost:{port}/#custom_scalars&_smoothingWeight=0"


def tag_name(name: str) -> str:
    """A class name as a tag component: letters, digits, ``_ . -``; anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "_"


def layout(terms: tuple[str, ...], *, weighted: bool) -> dict[str, dict[str, list]]:
    """The Custom Scalars layout (``SummaryWriter.add_custom_scalars``): each chart overlays what is compared. Losses
    and metrics first; TensorBoard merges the layouts of all runs, so a study folder gets it over its runs too."""
    def chart(*patterns: str) -> list:
        return ["Multiline", list(patterns)]

    losses = {"total loss (train and val)": chart(r"^loss/total$")}
    losses |= {f"{term}: P3, P4, P5 and sum (unweighted)": chart(rf"^loss/{term}/") for term in terms}
    losses |= {"COCO AP, AP50, AP75": chart(r"^metrics/AP$", r"^metrics/AP50$", r"^metrics/AP75$"),
               "COCO AP by object size": chart(r"^metrics/AP[sml]$"),
               "VOC AP50 (2007 11-point, all-point)": chart(r"^metrics/VOC"),
               "AP50 per class (VOC all-point)": chart(r"^metrics/AP50/")}
    criterion = {"objectness: p_obj_pos (positives) vs p_obj_neg (negatives)": chart(r"^diag/p_obj_"),
                 "box quality of the positives: recall50, recall75, mean IoU": chart(r"^diag/recall", r"^diag/iou"),
                 "true-class probability on the positives": chart(r"^diag/p_cls_true/"),
                 "positives and ignored negatives per image": chart(r"^diag/positives_", r"^diag/ignored_")}
    gradients = {"gradient norm of each term into the heads (switch the y axis to log)": chart(r"^grad/[^/]+/all$")}
    gradients |= {f"gradient norm of {term} per level": chart(rf"^grad/{term}/P") for term in (*terms, "total")}
    optimisation = {"learning rate": chart(r"^optim/lr$"), "gradient norm before clipping": chart(r"^optim/grad_"),
                    "training images per second": chart(r"^speed/"), "memory (MB)": chart(r"^memory/")}
    result = {"losses and metrics": losses, "what the criterion sees": criterion, "gradients": gradients,
              "optimisation": optimisation}
    if weighted:
        result["weighted terms"] = {f"{term} (weighted)": chart(rf"^weighted/{term}/") for term in terms}
    return result


# ----------------------------------------------------------------------------------------------------- hparams

# The settings of a run that go to the HParams table: whole sections, then single keys (paths and loader details
# are left out: they do not change what is learnt).
HPARAM_SECTIONS = ("model", "loss", "train", "data.augment", "eval")
HPARAM_KEYS = ("name", "data.format", "data.img_size")
HPARAM_EXCLUDED = ("train.out_dir",)
# Shown by default when no study says what it varies: the five loss components.
DEFAULT_SHOWN = ("loss.xy", "loss.wh", "loss.box", "loss.obj", "loss.cls")
RUN_HPARAM = "run"  # the run's label (a study run: its variant and seed), the table's first column


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


def hparams_summaries(cfg: Config, start_time: float, *, label: str, varied: tuple[str, ...] = (),
                      terms: tuple[str, ...] = ()) -> list[summary_pb2.Summary]:
    """The HParams plugin's experiment, session start and session end, written into the run's ``val`` folder
    (the session): its settings, ``run`` (``label``) among them, with the keys a study varies (``varied``; the
    loss components without a study) marked to show by default and listed first; its metrics are the last
    ``metrics/*``, ``loss/total`` and ``loss/<term>/sum`` of validation. Runs of one variant (the label without
    its ``/seed=N``) form one group, named so in the table's first column, whose row shows their mean."""
    values = {RUN_HPARAM: (label, None), **hparam_values(cfg)}
    shown = set(varied or DEFAULT_SHOWN)
    infos = []
    for key, (value, choices) in sorted(values.items(), key=lambda item: (item[0] not in shown,
                                                                          item[0] != RUN_HPARAM)):
        kind = (api_pb2.DATA_TYPE_BOOL if isinstance(value, bool) else api_pb2.DATA_TYPE_FLOAT64
                if isinstance(value, (int, float)) else api_pb2.DATA_TYPE_STRING)
        info = api_pb2.HParamInfo(name=key, type=kind, differs=key in shown)
        if choices:
            info.domain_discrete.extend(list(choices))
        infos.append(info)
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(group="", tag=tag), display_name=tag.split("/", 1)[1],
                                  description=describe(tag)) for tag in METRIC_TAGS]
    metrics += [api_pb2.MetricInfo(name=api_pb2.MetricName(group="", tag=tag), display_name=f"val {tag}",
                                   description=describe(tag))
                for tag in ("loss/total", *(f"loss/{term}/sum" for term in terms))]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=start_time)
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=start_time, group_name=re.sub(r"/seed=\d+$", "", label))
    for key, (value, _) in values.items():
        start.hparams[key].CopyFrom(_proto_value(value))
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    return [_hparams_summary(hparams_metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
            _hparams_summary(hparams_metadata.SESSION_START_INFO_TAG,
                             plugin_data_pb2.HParamsPluginData(session_start_info=start)),
            _hparams_summary(hparams_metadata.SESSION_END_INFO_TAG,
                             plugin_data_pb2.HParamsPluginData(session_end_info=end))]
