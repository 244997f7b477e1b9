"""Where evaluation time goes: loading, the model, decode + NMS, bookkeeping, pycocotools, the VOC metric.

    python scripts/bench_eval.py [--checkpoint runs/shapes_nano/best.pt] [--repeats 3]

Three cases, each timed stage by stage over the whole validation set (medians of ``--repeats`` passes):
  - shapes, 200 images: the checkpoint's model (``make run`` writes runs/shapes_nano/best.pt) on its own set;
  - shapes, 5000 images: the same model on a 5000-image validation set generated for this (once, cached);
  - coco128, 128 images (when ../shared/data is present): an untrained 80-class nano model whose output biases
    put every score near the threshold (objectness 0.05, classes 0.2: an early-training model, the worst case
    for NMS), at 320 px.
Decode and NMS are batched (one ``batched_nms`` per batch, no Python loop over boxes); candidates per image are
capped at ``eval.max_candidates`` (3000) before NMS.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from yolo_loss.allocator import reexec_with_allocator_settings

if __name__ == "__main__":
    reexec_with_allocator_settings()  # before torch is imported: glibc reads its settings at start-up

import torch  # noqa: E402

from yolo_loss.checkpoint import load_checkpoint  # noqa: E402
from yolo_loss.config.load import apply_overrides, config_from_dict, load_config  # noqa: E402
from yolo_loss.data import build_dataset, build_loader  # noqa: E402
from yolo_loss.data.transforms import unletterbox_boxes  # noqa: E402
from yolo_loss.train.engine import memory_format  # noqa: E402
from yolo_loss.eval.metrics import Evaluator  # noqa: E402
from yolo_loss.head import build_head  # noqa: E402
from yolo_loss.model import build_model  # noqa: E402
from yolo_loss.eval.postprocess import postprocess  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAGES = ("load", "model", "decode+nms", "bookkeeping", "pycocotools", "voc")


@torch.no_grad()
def timed_pass(model, loader, cfg, device) -> tuple[dict[str, float], float, dict[str, float]]:
    """One evaluation pass, each stage timed: seconds per stage, candidates per image, the metrics."""
    seconds = dict.fromkeys(STAGES, 0.0)
    dataset = loader.dataset
    evaluator = Evaluator(dataset.ground_truth_coco, dataset.category_ids)
    head = build_head(cfg, dataset.num_classes)
    detections_total = 0
    clock = time.perf_counter()
    for images, _, metas in loader:
        now = time.perf_counter()
        seconds["load"] += now - clock
        images = images.to(device, memory_format=memory_format(cfg))
        preds = [p.float() for p in model(images)]
        clock, now = now, time.perf_counter()
        seconds["model"] += now - clock
        detections = postprocess(preds, head, conf_thresh=cfg.eval.conf_thresh, nms_iou=cfg.eval.nms_iou,
                                 max_det=cfg.eval.max_det, max_candidates=cfg.eval.max_candidates)
        clock, now = now, time.perf_counter()
        seconds["decode+nms"] += now - clock
        for det, meta in zip(detections, metas):
            det.boxes_xyxy = unletterbox_boxes(det.boxes_xyxy.cpu(), meta["scale"], meta["pad"], meta["orig_size"])
            detections_total += len(det)
        evaluator.update([m["image_id"] for m in metas], detections)
        clock = time.perf_counter()
        seconds["bookkeeping"] += clock - now
    seconds["voc"] = _time(evaluator.voc_metrics)  # first: it caches the VOC matching that compute() reuses
    seconds["pycocotools"] = _time(evaluator.coco_metrics)
    metrics = evaluator.compute()
    return seconds, detections_total / len(dataset), metrics


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(label: str, cfg, model, device, repeats: int) -> None:
    dataset = build_dataset(cfg.data, "val", train=False)
    loader = build_loader(dataset, cfg.eval.batch_size, shuffle=False, workers=cfg.data.workers, seed=0)
    model.to(device, memory_format=memory_format(cfg)).eval()
    passes = [timed_pass(model, loader, cfg, device) for _ in range(repeats)]
    median = {stage: statistics.median(p[0][stage] for p in passes) for stage in STAGES}
    total = sum(median.values())
    shares = " | ".join(f"{median[s]:.2f} s ({median[s] / total:.0%})" for s in STAGES)
    print(f"| {label} | {len(dataset)} | {passes[0][1]:.0f} | {shares} | {total:.2f} s "
          f"| {len(dataset) / total:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "runs" / "shapes_nano" / "best.pt")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        print(f"error: {args.checkpoint} does not exist; run `make run` first or pass --checkpoint", file=sys.stderr)
        raise SystemExit(2)
    state = load_checkpoint(args.checkpoint)
    cfg = config_from_dict(state["config"], source=str(args.checkpoint))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg.model, len(state["class_names"]))
    model.load_state_dict(state["ema"]["module"] if state.get("ema") else state["model"])
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"median of {args.repeats} passes; eval.batch_size {cfg.eval.batch_size}, conf_thresh "
          f"{cfg.eval.conf_thresh}, max_candidates {cfg.eval.max_candidates}")
    print("| case | images | detections/image | " + " | ".join(STAGES) + " | total | images/s |")
    print("|---" * (len(STAGES) + 5) + "|")
    bench(f"shapes {cfg.data.img_size} px, trained", cfg, model, device, args.repeats)
    large = apply_overrides(cfg, ["data.shapes.num_val=5000"])
    bench(f"shapes {cfg.data.img_size} px, trained", large, model, device, args.repeats)
    coco = REPO / "configs" / "coco128.yaml"
    coco_cfg = load_config(coco, ["model.prior_obj=0.05", "model.prior_cls=0.2", "data.cache=false"])
    if not Path(coco_cfg.data.root).is_dir():
        print(f"coco128: skipped, {coco_cfg.data.root} is absent")
        return
    torch.manual_seed(0)
    untrained = build_model(coco_cfg.model, 80)
    bench(f"coco128 {coco_cfg.data.img_size} px, untrained (scores near the threshold)", coco_cfg, untrained, device,
          args.repeats)


if __name__ == "__main__":
    main()
