"""TensorBoard logging: a short training read back with tensorboard's own EventAccumulator (every tag present,
finite, in range), the per-term gradient norms against separate backward passes, the PR-curve counts against
hand-worked values and the Evaluator's own VOC AP, and scripts/plot_run.py."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from yolo_loss.config.load import config_from_dict, config_to_dict, load_config
from yolo_loss.config.schema import YOLOV3_ANCHORS, LevelWeights, LossConfig, LossWeights
from yolo_loss.eval.metrics import Evaluator, voc_ap_area, voc_pr_curve
from yolo_loss.eval.postprocess import Detections
from yolo_loss.head import HeadSpec
from yolo_loss.losses.criterion import build_criterion
from yolo_loss.losses.criterion import LossResult
from yolo_loss.tensorboard.log import PR_NUM_THRESHOLDS, loss_scalars, pr_curve_counts, term_gradient_norms
from yolo_loss.tensorboard.tags import DIAGNOSTICS, LEVEL_NAMES, METRIC_TAGS, describe, hparam_values, hparams_summaries
from yolo_loss.train.engine import train

if TYPE_CHECKING:
    from conftest import RunScript

REPO = Path(__file__).resolve().parents[2]
TERMS = ("xy", "wh", "obj_pos", "obj_neg", "cls")  # the darknet preset's terms (no IoU box term)
ALL_EVENTS = {"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}  # keep every event, not a sample

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 steps of the darknet preset on 32 images of 64 px, evaluated twice, with every optional log on."""
    root = tmp_path_factory.mktemp("tb")
    cfg = config_from_dict({
        "model": {"width": 0.25, "depth": 0.33},
        "data": {"format": "shapes", "root": str(root / "shapes"), "img_size": 64, "cache": True, "workers": 0,
                 "shapes": {"num_train": 32, "num_val": 8, "image_size": 64, "max_objects": 3, "seed": 0}},
        "loss": config_to_dict(load_config(REPO / "configs" / "presets" / "darknet.yaml"))["loss"],
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "burn_in": 2, "ema": False, "eval_points": 2,
                  "log_interval": 1, "grad_terms_interval": 2, "histogram_interval": 4, "log_images": 4,
                  "seed": 0, "device": "cpu", "out_dir": str(root)},
        "eval": {"batch_size": 8},
        "name": "tb",
    })
    folder = root / "run"
    folder.mkdir()
    train(cfg, folder)
    return folder


def events(run_dir: Path, split: str) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / split), size_guidance=ALL_EVENTS)
    accumulator.Reload()
    return accumulator


def scalars(accumulator: EventAccumulator) -> dict[str, list]:
    return {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}


def loss_tags() -> set[str]:
    """The loss and diagnostic tags of the darknet preset (every weight 1: no weighted/* copies)."""
    tags = {"loss/total"} | {f"loss/{term}/{level}" for term in TERMS for level in (*LEVEL_NAMES, "sum")}
    tags |= {f"diag/{tag}/{level}" for tag, _ in DIAGNOSTICS.values() for level in LEVEL_NAMES}
    return tags | {"diag/positives_per_image/sum", "diag/ignored_per_image/sum"}


def check_range(tag: str, values: list[float]) -> None:
    assert all(math.isfinite(v) for v in values), tag
    name = tag.split("/")
    if name[0] == "diag" and name[1] in ("iou_pos", "recall50", "recall75", "p_obj_pos", "p_obj_neg", "p_cls_true"):
        assert all(0.0 <= v <= 1.0 for v in values), (tag, values)
    elif name[0] == "metrics":
        assert all(0.0 <= v <= 1.0 for v in values), (tag, values)
    elif name[0] in ("speed", "memory"):
        assert all(v > 0 for v in values), (tag, values)
    else:  # loss terms, counts, gradient norms
        assert all(v >= 0 for v in values), (tag, values)


def test_training_scalars_every_tag_finite_and_in_range(run_dir: Path) -> None:
    found = scalars(events(run_dir, "train"))
    expected = loss_tags() | {"optim/lr", "optim/grad_norm", "speed/images_per_sec", "memory/cpu_rss_mb",
                              "memory/cpu_peak_rss_mb"}
    expected |= {f"grad/{term}/{level}" for term in (*TERMS, "total") for level in (*LEVEL_NAMES, "all")}
    assert expected <= set(found), sorted(expected - set(found))
    for tag, series in found.items():
        check_range(tag, [event.value for event in series])
    assert [e.step for e in found["loss/total"]] == list(range(1, 9))  # log_interval 1
    assert [e.step for e in found["grad/xy/all"]] == [1, 2, 4, 6, 8]  # step 1, then every grad_terms_interval
    assert max(e.value for e in found["diag/positives_per_image/sum"]) > 0
    assert not [tag for tag in found if tag.startswith("weighted/")]  # every weight is 1: no copies of loss/*
    # the per-term norms are parts of the total's: none is above the sum of all of them, and they are not all 0
    for step in range(5):
        parts = [found[f"grad/{term}/all"][step].value for term in TERMS]
        assert found["grad/total/all"][step].value <= sum(parts) * (1 + 1e-5)
        assert max(parts) > 0


def test_validation_shares_the_training_tags_and_metrics_are_in_range(run_dir: Path) -> None:
    """Validation at step 0 (before training) and at the 2 evaluation points (steps 4 and 8); the same loss tags as
    training, so the two overlay; AP50 of every class next to the PR curves."""
    found = scalars(events(run_dir, "val"))
    assert loss_tags() <= set(found), sorted(loss_tags() - set(found))
    assert set(found) & loss_tags() == set(scalars(events(run_dir, "train"))) & loss_tags()  # same names: overlaid
    assert [e.step for e in found["loss/total"]] == [0, 4, 8]
    # every metric, except those pycocotools leaves undefined (-1: no truth of that size at 64 px) and skipped
    final = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for tag in METRIC_TAGS:
        key = tag.split("/")[1]
        if final[key] >= 0:
            assert [e.step for e in found[tag]][-2:] == [4, 8], tag  # both evaluations (and step 0 when defined)
            assert found[tag][-1].value == pytest.approx(final[key])
        else:
            assert tag not in found
    # metrics.json keeps the curve the events show, after each training step's evaluation (step 0 is not in it)
    curve = json.loads((run_dir / "metrics.json").read_text())["evaluations"]
    assert [(e["step"], e["epoch"]) for e in curve] == [(4, 1.0), (8, 2.0)]
    assert [e["AP"] for e in curve] == pytest.approx([e.value for e in found["metrics/AP"]][-2:])
    per_class = {tag for tag in found if tag.startswith("metrics/AP50/")}
    assert per_class == {f"metrics/AP50/{name}" for name in ("ellipse", "rectangle", "triangle", "diamond", "star",
                                                             "cross")}
    assert all([e.step for e in found[tag]] == [0, 4, 8] for tag in per_class)
    for tag, series in found.items():
        check_range(tag, [event.value for event in series])


def test_every_scalar_tag_has_a_description_and_the_layout_names_existing_tags(run_dir: Path) -> None:
    """The description TensorBoard shows with each tag comes from yolo_loss.tensorboard.tags.describe; the Custom
    Scalars layout (written with the run) has losses and metrics first, and each of its patterns matches a tag of the
    run."""
    import re

    train_events, val_events = events(run_dir, "train"), events(run_dir, "val")
    tags = set()
    for accumulator in (train_events, val_events):
        for tag in accumulator.Tags()["scalars"]:
            description = accumulator.SummaryMetadata(tag).summary_description
            assert description and description == describe(tag) and description != tag, tag
            tags.add(tag)
    assert describe("diag/p_obj_neg/P3").startswith("mean objectness probability on the counted negatives")
    assert "times its term and level weights" in describe("weighted/cls/P4")
    layout_events = train_events.Tensors("custom_scalars__config__")
    from tensorboard.plugins.custom_scalar import layout_pb2

    config = layout_pb2.Layout()
    config.ParseFromString(tensor_util.make_ndarray(layout_events[0].tensor_proto).item())
    titles = [category.title for category in config.category]
    assert titles[0] == "losses and metrics" and "weighted terms" not in titles
    for category in config.category:
        for chart in category.chart:
            for pattern in chart.multiline.tag:
                assert any(re.search(pattern, tag) for tag in tags), (chart.title, pattern)
    first = [chart.title for chart in config.category[0].chart]
    assert first[:2] == ["total loss (train and val)", "xy: P3, P4, P5 and sum (unweighted)"]
    assert "objectness: p_obj_pos (positives) vs p_obj_neg (negatives)" in [
        chart.title for chart in config.category[1].chart]


def test_the_run_list_is_train_and_val(run_dir: Path) -> None:
    """tensorboard --logdir <run> lists exactly 'train' and 'val': no empty third run, no folder prefix."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(run_dir))
    assert sorted(multiplexer.Runs()) == ["train", "val"]


def test_images_pr_curves_and_histograms(run_dir: Path) -> None:
    train_events, val_events = events(run_dir, "train"), events(run_dir, "val")
    batch = train_events.Images("images/train_batch")  # once: 4 images of the first batch
    assert [e.step for e in batch] == [1]
    # one grid: 4 images of 64 px enlarged 2x in a row, 4 px apart
    assert (batch[0].width, batch[0].height) == (4 * (128 + 4) + 4, 128 + 8)
    image_tags = sorted(tag for tag in val_events.Tags()["images"] if tag.startswith("images/val_"))
    assert image_tags == [f"images/val_{k:02d}" for k in range(4)]  # one per validation sample
    for tag in image_tags:
        panels = val_events.Images(tag)
        assert [e.step for e in panels] == [0, 4, 8]
        # truth | prediction, each 64 px enlarged 2x under a 34 px header, 6 px apart
        assert (panels[0].width, panels[0].height) == (2 * 128 + 6, 128 + 34)

    pr_tags = [tag for tag in val_events.Tags()["tensors"] if tag.startswith("pr/")]
    assert pr_tags, val_events.Tags()["tensors"]
    for tag in pr_tags:
        curves = val_events.Tensors(tag)
        assert [e.step for e in curves][-2:] == [4, 8]
        data = tensor_util.make_ndarray(curves[-1].tensor_proto)  # rows tp, fp, tn, fn, precision, recall
        assert data.shape == (6, PR_NUM_THRESHOLDS)
        tp, fp, _, fn, precision, recall = data
        assert np.all(np.diff(tp) <= 0) and np.all(np.diff(fp) <= 0)  # fewer detections at higher thresholds
        assert np.all(tp + fn == tp[0] + fn[0]) and tp[0] + fn[0] > 0  # the class's truths, at every threshold
        assert np.all((0 <= precision) & (precision <= 1)) and np.all((0 <= recall) & (recall <= 1))

    histograms = {tag: train_events.Histograms(tag) for tag in train_events.Tags()["histograms"]}
    assert set(histograms) == {f"hist/{n}" for n in ("obj_logit_pos", "obj_logit_neg", "tx", "ty", "tw", "th")}
    assert all([e.step for e in series] == [1, 4, 8] for series in histograms.values())
    assert all(e.histogram_value.num > 0 for series in histograms.values() for e in series)


def test_hparams_session_in_the_val_folder(run_dir: Path) -> None:
    val = events(run_dir, "val")
    content = val.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    assert set(content) == {hparams_metadata.EXPERIMENT_TAG, hparams_metadata.SESSION_START_INFO_TAG,
                            hparams_metadata.SESSION_END_INFO_TAG}
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["run"].string_value == "run" and start.group_name == "run"  # the folder's name
    assert start.hparams["loss.xy"].string_value == "bce"
    assert start.hparams["train.lr"].number_value == pytest.approx(0.01)
    assert start.hparams["model.anchors"].string_value.startswith("[[")  # lists as JSON
    assert "train.out_dir" not in start.hparams and "data.root" not in start.hparams
    experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
    metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    assert ("", "metrics/AP") in metrics and ("", "loss/total") in metrics and ("", "loss/cls/sum") in metrics
    for group, tag in metrics:  # the metrics the table reads exist in the session's own folder
        if tag.startswith("metrics/") and tag not in val.Tags()["scalars"]:
            continue  # -1 metrics are not written (see above)
        assert tag in val.Tags()["scalars"], tag
    shown = [info.name for info in experiment.hparam_infos if info.differs]
    assert shown == ["loss.xy", "loss.wh", "loss.box", "loss.obj", "loss.cls"]  # listed first, ticked at first
    assert [info.name for info in experiment.hparam_infos][:len(shown) + 1] == [*shown, "run"]
    xy = next(info for info in experiment.hparam_infos if info.name == "loss.xy")
    assert [v.string_value for v in xy.domain_discrete.values] == ["bce", "mse", "mse_t", "mse_linear", "none"]


def test_a_study_shows_its_own_settings_and_groups_its_seeds() -> None:
    """A study run (label variant/seed=N, varied keys): its label and the study's keys first; the seeds of a
    variant form one group, whose row in the table is their mean."""
    cfg = load_config(REPO / "configs" / "shapes_nano.yaml")
    experiment, start, _ = hparams_summaries(cfg, 0.0, label="xy=mse,cls=ce/seed=3", varied=("loss.xy", "loss.cls"))
    info = hparams_metadata.parse_experiment_plugin_data(experiment.value[0].metadata.plugin_data.content)
    assert [i.name for i in info.hparam_infos if i.differs] == ["loss.xy", "loss.cls"]
    session = hparams_metadata.parse_session_start_info_plugin_data(start.value[0].metadata.plugin_data.content)
    assert session.group_name == "xy=mse,cls=ce" and session.hparams["run"].string_value == "xy=mse,cls=ce/seed=3"


def test_hparam_values_flatten_the_settings() -> None:
    values = hparam_values(load_config(REPO / "configs" / "shapes_nano.yaml"))
    assert values["loss.weights.obj_neg"] == (1.0, None)
    assert values["loss.level_weights.xy"] == ("[1.0, 1.0, 1.0]", None)
    assert values["train.ema"] == (True, (False, True))
    assert values["data.img_size"] == (160, None) and values["name"][0] == "shapes_nano"
    assert not any(key.startswith(("data.root", "data.shapes", "train.out_dir")) for key in values)


def test_term_gradient_norms_equal_separate_backward_passes() -> None:
    """Each term's norm equals the gradient norm of a criterion whose other terms have weight 0."""
    torch.manual_seed(0)
    anchors = [torch.tensor(YOLOV3_ANCHORS[3 * i:3 * i + 3], dtype=torch.float32) for i in range(3)]
    preds = [torch.randn(2, 3 * 8, 64 // s, 64 // s, requires_grad=True) for s in (8, 16, 32)]
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 2, 0.2, 0.3, 0.1, 0.1], [1, 0, 0.7, 0.6, 0.8, 0.5]])
    loss_cfg = LossConfig(level_weights=LevelWeights(xy=[1.0, 2.0, 0.5]), weights=LossWeights(cls=3.0))
    head = HeadSpec.from_anchors(anchors, strides=(8, 16, 32), num_classes=3)
    criterion = build_criterion(loss_cfg, head)
    norms = term_gradient_norms(criterion(preds, targets, 64), preds)
    assert all(p.grad is None for p in preds)  # measuring does not touch .grad

    for term in (*TERMS, "total"):
        weights = {t: (1.0 if term in (t, "total") else 0.0) * getattr(loss_cfg.weights, t) for t in TERMS}
        alone = build_criterion(LossConfig(level_weights=LevelWeights(xy=[1.0, 2.0, 0.5]),
                                           weights=LossWeights(**weights)), head)
        grads = torch.autograd.grad(alone(preds, targets, 64).total, preds)
        for level, grad in zip(LEVEL_NAMES, grads):
            assert norms[f"grad/{term}/{level}"] == pytest.approx(float(grad.norm()), rel=1e-5, abs=1e-9)
        assert norms[f"grad/{term}/all"] == pytest.approx(float(torch.cat([g.flatten() for g in grads]).norm()),
                                                         rel=1e-5)
    assert norms["grad/xy/P3"] > 0 and norms["grad/obj_neg/P5"] > 0


def test_loss_scalars_counts_per_image_and_sums() -> None:
    level = torch.tensor
    result = LossResult(total=torch.tensor(6.0), terms={"xy": level([1.0, 2.0, 3.0])},
                        weighted={"xy": level([2.0, 4.0, 0.0])},
                        diagnostics={"positives": level([4.0, 2.0, 0.0]), "iou": level([0.5, 0.25, 0.0])})
    scalars = loss_scalars(result, batch_size=2)
    assert scalars == {"loss/total": 6.0, "loss/xy/P3": 1.0, "loss/xy/P4": 2.0, "loss/xy/P5": 3.0, "loss/xy/sum": 6.0,
                       "weighted/xy/P3": 2.0, "weighted/xy/P4": 4.0, "weighted/xy/P5": 0.0, "weighted/xy/sum": 6.0,
                       "diag/positives_per_image/P3": 2.0, "diag/positives_per_image/P4": 1.0,
                       "diag/positives_per_image/P5": 0.0, "diag/positives_per_image/sum": 3.0,
                       "diag/iou_pos/P3": 0.5, "diag/iou_pos/P4": 0.25, "diag/iou_pos/P5": 0.0}
    unweighted = loss_scalars(result, batch_size=2, weighted=False)
    assert set(scalars) - set(unweighted) == {f"weighted/xy/{level}" for level in (*LEVEL_NAMES, "sum")}


def test_weighted_tags_only_when_some_weight_is_not_1() -> None:
    from yolo_loss.tensorboard.log import is_weighted

    cfg = load_config(REPO / "configs" / "shapes_nano.yaml")
    assert not is_weighted(cfg)
    assert is_weighted(load_config(REPO / "configs" / "shapes_nano.yaml", ["loss.weights.cls=2"]))
    assert is_weighted(load_config(REPO / "configs" / "shapes_nano.yaml", ["loss.level_weights.obj_pos=[4, 1, 0.4]"]))


def test_pr_curve_counts_by_hand() -> None:
    """Two truths; detections 0.9 (TP), 0.8 (FP), 0.3 (TP), 0.2 (neither: on a difficult box)."""
    scores = np.array([0.9, 0.8, 0.3, 0.2])
    counts = pr_curve_counts(scores, np.array([1, 0, 1, 0], bool), np.array([0, 1, 0, 0], bool), num_gt=2,
                             num_thresholds=11)
    assert counts["true_positive_counts"].tolist() == [2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 0]
    assert counts["false_positive_counts"].tolist() == [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert counts["false_negative_counts"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2]
    assert counts["precision"][[0, 5, 9, 10]].tolist() == pytest.approx([2 / 3, 0.5, 1.0, 0.0])
    assert counts["recall"][[0, 5, 9, 10]].tolist() == pytest.approx([1.0, 0.5, 0.5, 0.0])


CATEGORY_IDS = [3, 7, 11]


def coco_gt(boxes_per_image: dict[int, list[tuple[int, list[float], int]]]) -> COCO:
    """``{image_id: [(category_id, [x1, y1, x2, y2], iscrowd), ...]}`` as an in-memory COCO ground truth."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 160, "height": 160} for i in boxes_per_image]
    annotations = [{"id": n, "image_id": i, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1), "iscrowd": crowd}
                   for n, (i, (c, (x1, y1, x2, y2), crowd)) in enumerate(
                       ((i, box) for i, boxes in boxes_per_image.items() for box in boxes), start=1)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, ("circle", "square", "tri"))]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def test_voc_matches_reproduce_the_evaluators_ap() -> None:
    """The per-detection TP/FP behind the curves (Evaluator.voc_matches) give the Evaluator's own per-class VOC AP,
    and Evaluator.detections gives back what an image was given, by decreasing score."""
    rng = np.random.default_rng(0)
    gt = {image: [(CATEGORY_IDS[int(rng.integers(3))], [x, y, x + 20, y + 25], int(rng.random() < 0.1))
                  for x, y in rng.integers(0, 130, size=(4, 2)).tolist()] for image in range(1, 7)}
    evaluator = Evaluator(coco_gt(gt), CATEGORY_IDS)
    for image, boxes in gt.items():
        rows = [([x1 + dx, y1 + dy, x2 + dx, y2 + dy], float(rng.random()), CATEGORY_IDS.index(cat))
                for cat, (x1, y1, x2, y2), _ in boxes for dx, dy in rng.integers(-8, 9, size=(2, 2)).tolist()]
        rows.append(([5.0, 5.0, 30.0, 30.0], 0.95, 0))  # a false positive
        evaluator.update([image], [Detections(torch.tensor([r[0] for r in rows], dtype=torch.float32),
                                              torch.tensor([r[1] for r in rows]),
                                              torch.tensor([r[2] for r in rows]))])
    matches = evaluator.voc_matches()
    labels, scores, is_tp, is_fp, num_gt = matches.labels, matches.scores, matches.is_tp, matches.is_fp, matches.num_gt
    per_class = evaluator.per_class_ap50()
    names = {0: "circle", 1: "square", 2: "tri"}
    for label in np.flatnonzero(num_gt).tolist():
        order = np.argsort(-scores[labels == label], kind="stable")
        recall, precision = voc_pr_curve(is_tp[labels == label][order], is_fp[labels == label][order],
                                         int(num_gt[label]))
        assert voc_ap_area(recall, precision) == pytest.approx(per_class[names[label]])
        counts = pr_curve_counts(scores[labels == label], is_tp[labels == label], is_fp[labels == label],
                                 int(num_gt[label]))
        assert counts["recall"][0] == pytest.approx(recall[-1])
    given = evaluator.detections(6)
    assert len(given) == 2 * len(gt[6]) + 1 and given.scores[0] == pytest.approx(0.95)
    assert bool((given.scores[:-1] >= given.scores[1:]).all())
    with pytest.raises(KeyError, match="has not been evaluated"):
        evaluator.detections(99)


def test_plot_run_writes_pngs(run_dir: Path, tmp_path: Path, run_script: RunScript) -> None:
    done = run_script("scripts/plot_run.py", str(run_dir), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    names = {"losses.png", "diagnostics.png", "gradients.png", "metrics.png", "per_class.png", "training.png"}
    assert {p.name for p in tmp_path.iterdir()} == names
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)
    missing = run_script("scripts/plot_run.py", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no TensorBoard events" in missing.stderr


def test_a_weight_of_2_writes_the_weighted_terms(tmp_path: Path) -> None:
    """With loss.weights.cls=2 the logger writes weighted/* beside loss/* (and only then, see above)."""
    from yolo_loss.head import build_head
    from yolo_loss.tensorboard.log import RunLogger

    cfg = load_config(REPO / "configs" / "shapes_nano.yaml", ["loss.weights.cls=2", "train.log_images=0"])
    head = build_head(cfg, 3)
    criterion = build_criterion(cfg.loss, head)
    preds = [torch.randn(2, head.channels, 64 // s, 64 // s) for s in (8, 16, 32)]
    result = criterion(preds, torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4]]), 64)
    logger = RunLogger(tmp_path, cfg, head, ["a", "b", "c"], None, torch.device("cpu"), terms=criterion.terms)
    logger.after_step(1, result, preds, torch.zeros(0, 6), lr=0.01, grad_norm=1.0)
    logger.close()
    found = set(events(tmp_path, "train").Tags()["scalars"])
    assert "weighted/cls/sum" in found and "loss/cls/sum" in found
    torch.testing.assert_close(torch.tensor(scalars(events(tmp_path, "train"))["weighted/cls/sum"][0].value),
                               torch.tensor(2 * scalars(events(tmp_path, "train"))["loss/cls/sum"][0].value))
