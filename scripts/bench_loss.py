"""Time the loss forward + backward against a floor that touches the same head tensors.

    python scripts/bench_loss.py [--repeats 15] [--threads N] [--default-malloc] [--only NAME ...] [--cpu-time]
                                 [--processes N]

For batch 16 at 416 px with 80 classes and 6 boxes per image, and batch 64 with 20 boxes per image, prints the
median time of: the floor (``sum(p).backward()`` over the three head maps), the darknet, yolov4 and yolov5
presets (each with its decode), the CIoU + focal variant and CIoU with each dynamic assigner (TAL, SimOTA, ATSS,
which assign over every candidate of the head); and each one's ratio to the floor. Target: at most
2.5x the floor at both sizes (darknet's loss at batch 64: at most 2.0x, with either allocator).

The script re-executes itself with the entry points' glibc malloc settings (``yolo_loss.allocator``) unless
``--default-malloc`` is given, which runs it with glibc's defaults (dropping those settings from the environment
if they are there). ``--only`` times the named variants alone; ``--cpu-time`` times with the process's CPU clock
rather than the wall clock (steadier while another job shares the cores; with ``--threads 1`` only).

``--processes N`` measures in N fresh processes, one after another, and prints each row's median floor and loss
over them and the median (range) of their ratios. The ratio depends on the process as well as on the code: on a
2-core AMD EPYC (2026-12-07), two of seven processes ran the floor at batch 64 in 10 ms instead of 16-18 and
darknet's loss in 37-38 ms instead of 27-34, 3.8-4.0x against 1.65-1.89x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from yolo_loss.allocator import ALLOCATOR_ENV, ALLOCATOR_OPT_OUT, reexec_with_allocator_settings


def select_allocator() -> None:
    """Re-execute with the allocator settings, or with ``--default-malloc`` without them (glibc reads them once,
    at start-up, so this happens before torch is imported)."""
    if "--default-malloc" not in sys.argv[1:]:
        reexec_with_allocator_settings()
    elif any(name in os.environ for name in ALLOCATOR_ENV):
        env = {name: value for name, value in os.environ.items() if name not in ALLOCATOR_ENV}
        env[ALLOCATOR_OPT_OUT] = "1"
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


if __name__ == "__main__":
    select_allocator()

import torch  # noqa: E402

from yolo_loss.config.load import load_config  # noqa: E402
from yolo_loss.config.schema import Config, LossConfig  # noqa: E402
from yolo_loss.decode import STRIDES  # noqa: E402
from yolo_loss.head import HeadSpec, anchors_per_level, class_activation  # noqa: E402
from yolo_loss.losses.criterion import build_criterion  # noqa: E402
from yolo_loss.train.runtime import describe_cpu  # noqa: E402

VARIANTS = ("darknet", "yolov4", "yolov5", "ciou+focal", "ciou+tal", "ciou+simota", "ciou+atss")
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


def median_ms(fn, preds, repeats: int, clock=time.perf_counter) -> float:
    times = []
    for i in range(repeats + 2):
        for p in preds:
            p.grad = None
        start = clock()
        fn()
        if i >= 2:  # two warm-up runs
            times.append((clock() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--default-malloc", action="store_true", help="glibc's malloc defaults (see above)")
    parser.add_argument("--only", nargs="+", choices=VARIANTS, help="time these variants alone")
    parser.add_argument("--cpu-time", action="store_true", help="the process's CPU time, not the wall clock")
    parser.add_argument("--processes", type=int, default=1,
                        help="measure in this many fresh processes; medians and the ratios' range over them")
    parser.add_argument("--rows-json", action="store_true", help=argparse.SUPPRESS)  # a child of --processes
    args = parser.parse_args()
    if args.cpu_time and args.threads != 1:
        parser.error("--cpu-time adds up the threads' time: use it with --threads 1")
    if args.processes < 1:
        parser.error(f"--processes must be at least 1, got {args.processes}")
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    malloc = {k: os.environ.get(k) for k in ALLOCATOR_ENV}
    header = (f"torch {torch.__version__}, {describe_cpu()}, {args.threads} threads, {os.cpu_count()} cores, "
              f"glibc malloc env {malloc}, {'CPU' if args.cpu_time else 'wall'} time")
    if not args.rows_json:
        print(header + (f"; medians over {args.processes} processes, the ratio's range in brackets"
                        if args.processes > 1 else ""))
        print("| batch | boxes/img | floor ms | variant | loss ms | ratio |")
        print("|---|---|---|---|---|---|")
    if args.processes > 1:
        print_across_processes(args)
        return
    for batch, boxes, floor, name, loss in measure(args, clock):
        if args.rows_json:
            print(json.dumps([batch, boxes, floor, name, loss]), flush=True)
        else:
            print(f"| {batch} | {boxes} | {floor:.1f} | {name} | {loss:.1f} | {loss / floor:.2f}x |", flush=True)


def print_across_processes(args: argparse.Namespace) -> None:
    """Run this script ``args.processes`` times with the same settings (one child at a time, each printing its rows
    as JSON) and print each row's median floor and loss over the children and the median (range) of their ratios."""
    argv = ["--repeats", str(args.repeats), "--threads", str(args.threads), "--rows-json"]
    argv += (["--default-malloc"] if args.default_malloc else []) + (["--cpu-time"] if args.cpu_time else [])
    argv += ["--only", *args.only] if args.only else []
    rows: dict[tuple[int, int, str], list[tuple[float, float]]] = {}
    for _ in range(args.processes):
        child = subprocess.run([sys.executable, os.path.abspath(__file__), *argv],
                               capture_output=True, text=True, check=True)
        for line in child.stdout.splitlines():
            if line.startswith("["):
                batch, boxes, floor, name, loss = json.loads(line)
                rows.setdefault((batch, boxes, name), []).append((floor, loss))
    for (batch, boxes, name), measured in rows.items():
        floors, losses = [f for f, _ in measured], [loss for _, loss in measured]
        ratios = [loss / f for f, loss in measured]
        print(f"| {batch} | {boxes} | {statistics.median(floors):.1f} | {name} | {statistics.median(losses):.1f} | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |", flush=True)


def measure(args, clock) -> list[tuple[int, int, float, str, float]]:
    """``(batch, boxes per image, floor ms, variant, loss ms)`` for each size and variant, in this process."""
    img, num_classes = 416, 80
    variants = {name: load_config(PRESETS / f"{name}.yaml", (f"data.img_size={img}",))
                for name in ("darknet", "yolov4", "yolov5")}
    variants["ciou+focal"] = Config(loss=LossConfig(xy="none", wh="none", box="ciou", cls="focal"))
    for rule in ("tal", "simota", "atss"):
        variants[f"ciou+{rule}"] = Config(loss=LossConfig(xy="none", wh="none", box="ciou", assign=rule))
    variants = {name: cfg for name, cfg in variants.items() if not args.only or name in args.only}
    rows = []
    for batch, boxes in ((16, 6), (64, 20)):
        preds, targets = make_inputs(batch, boxes, img, num_classes)
        floor = median_ms(lambda: sum(p.sum() for p in preds).backward(), preds, args.repeats, clock)
        for name, cfg in variants.items():
            head = HeadSpec.from_anchors(anchors_per_level(cfg.model, img), strides=STRIDES, num_classes=num_classes,
                                         class_activation=class_activation(cfg.loss.cls), decode=cfg.model.decode,
                                         scale_x_y=tuple(cfg.model.scale_x_y))
            criterion = build_criterion(cfg.loss, head, img_size=img)
            loss = median_ms(lambda: criterion(preds, targets, img).total.backward(), preds, args.repeats, clock)
            rows.append((batch, boxes, floor, name, loss))
    return rows


if __name__ == "__main__":
    main()
