"""Time the loss forward + backward against a floor that touches the same head tensors.

    python scripts/bench_loss.py [--repeats 15] [--threads N]

For batch 16 at 416 px with 80 classes and 6 boxes per image, and batch 64 with 20 boxes per image, prints the
median time of: the floor (``sum(p).backward()`` over the three head maps), the darknet, yolov4 and yolov5
presets (each with its decode), and the CIoU + focal variant; and each one's ratio to the floor. Target: at most
2.5x the floor at both sizes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from yolo_loss.allocator import reexec_with_allocator_settings  # noqa: E402

if __name__ == "__main__":
    reexec_with_allocator_settings()  # before torch is imported: glibc reads its settings at start-up

import torch  # noqa: E402

from yolo_loss.config import load_config  # noqa: E402
from yolo_loss.head import HeadSpec, anchors_per_level, class_activation  # noqa: E402
from yolo_loss.losses.criterion import build_criterion  # noqa: E402
from yolo_loss.schema import Config, LossConfig  # noqa: E402

STRIDES = (8, 16, 32)
PRESETS = Path(__file__).resolve().parents[1] / "configs" / "presets"


def make_inputs(batch: int, boxes_per_image: int, img: int, num_classes: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    preds = [torch.randn(batch, 3 * (5 + num_classes), img // s, img // s, generator=gen).requires_grad_()
             for s in STRIDES]
    n = batch * boxes_per_image
    wh = torch.rand(n, 2, generator=gen) * 0.6 + 0.02
    cxcy = wh / 2 + torch.rand(n, 2, generator=gen) * (1 - wh)
    targets = torch.cat([torch.arange(batch).repeat_interleave(boxes_per_image)[:, None].float(),
                         torch.randint(0, num_classes, (n, 1), generator=gen).float(), cxcy, wh], dim=1)
    return preds, targets


def median_ms(fn, preds, repeats: int) -> float:
    times = []
    for i in range(repeats + 2):
        for p in preds:
            p.grad = None
        start = time.perf_counter()
        fn()
        if i >= 2:  # two warm-up runs
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    img, num_classes = 416, 80
    variants = {name: load_config(PRESETS / f"{name}.yaml", (f"data.img_size={img}",))
                for name in ("darknet", "yolov4", "yolov5")}
    variants["ciou+focal"] = Config(loss=LossConfig(xy="none", wh="none", box="ciou", cls="focal"))
    malloc = {k: os.environ.get(k) for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")}
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores, glibc malloc env {malloc}")
    print("| batch | boxes/img | floor ms | variant | loss ms | ratio |")
    print("|---|---|---|---|---|---|")
    for batch, boxes in ((16, 6), (64, 20)):
        preds, targets = make_inputs(batch, boxes, img, num_classes)
        floor = median_ms(lambda: sum(p.sum() for p in preds).backward(), preds, args.repeats)
        for name, cfg in variants.items():
            head = HeadSpec.from_anchors(anchors_per_level(cfg.model, img), strides=STRIDES, num_classes=num_classes,
                                         class_activation=class_activation(cfg.loss.cls), decode=cfg.model.decode,
                                         scale_x_y=tuple(cfg.model.scale_x_y))
            criterion = build_criterion(cfg.loss, head, img_size=img)
            loss = median_ms(lambda: criterion(preds, targets, img).total.backward(), preds, args.repeats)
            print(f"| {batch} | {boxes} | {floor:.1f} | {name} | {loss:.1f} | {loss / floor:.2f}x |")


if __name__ == "__main__":
    main()
