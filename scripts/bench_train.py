"""Training throughput as ratios against the model alone: is the compute kept busy? And what does AMP gain?

    python scripts/bench_train.py [--config configs/shapes_nano.yaml] [--repeats 3] [--steps 40]
    python scripts/bench_train.py --full        # also Darknet-53 YOLOv3 at 416 px (CUDA only)
    python scripts/bench_train.py --precision both --sizes 160 256 --batches 8 16   # float32 vs AMP, 4 shapes

``--precision`` picks what the rows train in: ``config`` (the default: the config's ``train.amp``), ``float32``,
``amp`` (``train.amp=true``: bfloat16 autocast around the model on the CPU, float16 with loss scaling on CUDA; the
loss in float32, as train.py trains) or ``both`` (a float32 row and an AMP row per shape, measured in turn within
each repeat, the AMP row with the ratios AMP/float32 of (a), (b) and (c)). ``--sizes`` and ``--batches`` give
the image sizes (``data.img_size``, and ``data.shapes.image_size`` for the synthetic shapes, whose set of that size
is generated on first use and cached) and batch sizes to measure, every combination (default: the config's).
Weights and images are channels-last as the config says (``train.channels_last``, on by default).

For each model, images per second of:
  (a) model forward + backward + SGD step on batches already in memory (the loss replaced by the sum of the head
      outputs, which costs nothing: its gradient is ones);
  (b) the same with the config's loss;
  (c) the whole training loop of train.py: the real loader (the config's cache, augmentation and workers), the
      loss, EMA, gradient clipping, the non-finite check and TensorBoard logging, read from the run's
      ``speed/images_per_sec`` scalars (every 10 steps; the first window, with the kernels' warm-up, left out).
(a) and (b) autocast the model's forward as train.py's training step does (:func:`yolo_loss.train.engine.amp_dtype`).
(a), (b) and (c) are measured in turn, ``--repeats`` times; the table gives medians and (b)/(a), (c)/(a).
With ``--precision both`` the two precisions are measured in turn within each repeat, and their ratio is the median
(and range) of the repeats' own ratios: the speed of a shared machine drifts by more than a tenth between repeats, and
a ratio of medians taken from different repeats carries that drift, where one taken within a repeat carries less.
Targets: (b)/(a) >= 1/1.1 (the loss costs at most 10%); (c)/(a) >= 0.85 on the CPU model with the cache on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from yolo_loss.allocator import reexec_with_allocator_settings

if __name__ == "__main__":
    reexec_with_allocator_settings()  # before torch is imported: glibc reads its settings at start-up

import torch  # noqa: E402

from yolo_loss.config.load import apply_overrides, load_config  # noqa: E402
from yolo_loss.data import build_dataset, build_loader  # noqa: E402
from yolo_loss.train.engine import amp_dtype, memory_format, precision_name, train  # noqa: E402
from yolo_loss.head import build_head  # noqa: E402
from yolo_loss.losses.criterion import build_criterion  # noqa: E402
from yolo_loss.model import build_model  # noqa: E402
from yolo_loss.train.optim import build_optimizer  # noqa: E402
from yolo_loss.train.runtime import describe_cpu, select_device  # noqa: E402
from yolo_loss.tensorboard.log import read_scalars  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 3
LOG_EVERY = 10


def in_memory_rate(cfg, device: torch.device, batches: list, steps: int, with_loss: bool) -> float:
    """Images per second of (a) or (b): forward, backward and SGD step over ``batches`` already on the device."""
    num_classes = batches[0][2]
    model = build_model(cfg.model, num_classes).to(device, memory_format=memory_format(cfg)).train()
    optimizer = build_optimizer(model, cfg.train)
    criterion = build_criterion(cfg.loss, build_head(cfg, num_classes), img_size=cfg.data.img_size)
    dtype = amp_dtype(cfg, device)  # as train_step: autocast around the model alone, the loss in float32
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)  # off: scale and step pass through

    def step(index: int) -> None:
        images, targets, _ = batches[index % len(batches)]
        with torch.autocast(device.type, dtype=dtype or torch.float16, enabled=dtype is not None):
            preds = model(images)
        preds = [p.float() for p in preds]
        loss = criterion(preds, targets, images.shape[-2:]).total if with_loss else sum(p.sum() for p in preds)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for index in range(WARMUP_STEPS):
        step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for index in range(steps):
        step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batches[0][0].shape[0] / (time.perf_counter() - start)


def loop_rate(cfg, steps: int) -> float:
    """Images per second of (c): train.py's loop for ``WARMUP_STEPS + steps`` steps, from its speed scalars."""
    with tempfile.TemporaryDirectory() as folder:
        run_cfg = apply_overrides(cfg, [f"train.max_steps={LOG_EVERY * (1 + -(-steps // LOG_EVERY))}",
                                        "train.epochs=1000", "train.eval_points=1",
                                        "train.eval_at_start=false", f"train.log_interval={LOG_EVERY}",
                                        f"train.out_dir={folder}"])
        run_dir = Path(folder) / "run"
        run_dir.mkdir()
        with open(os.devnull, "w") as quiet, redirect_stdout(quiet), redirect_stderr(quiet):  # epoch lines
            train(run_cfg, run_dir)  # (it evaluates at the end: not timed)
        _, windows = read_scalars(run_dir, "train", "speed/images_per_sec")
    return statistics.median(windows[1:])  # the first window (step 1) holds the warm-up


def paired_ratio(amp_rates: list[float], float32_rates: list[float]) -> str:
    """``'median (min-max)'`` of the repeats' own AMP / float32 ratios (each repeat measures both, in turn)."""
    ratios = [amp / float32 for amp, float32 in zip(amp_rates, float32_rates, strict=True)]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def with_amp(cfg, amp: bool):
    """``cfg`` with ``train.amp`` set."""
    return apply_overrides(cfg, [f"train.amp={str(amp).lower()}"])


def bench(label: str, cfg, repeats: int, steps: int, precisions: tuple[bool, ...] | None = None) -> None:
    """One table row per entry of ``precisions`` (``train.amp`` values; default the config's), measured in turn
    within each repeat; with float32 and AMP both, the AMP row also gives AMP/float32 of (a), (b) and (c)."""
    device = select_device(cfg.train.device)
    dataset = build_dataset(cfg.data, "train", train=True)
    loader = build_loader(dataset, cfg.train.batch_size, shuffle=True, workers=0, seed=0)
    batches = []
    for images, targets, _ in loader:
        batches.append((images.to(device, memory_format=memory_format(cfg)), targets.to(device),
                        dataset.num_classes))
        if len(batches) == 8:
            break
    precisions = (cfg.train.amp,) if precisions is None else precisions
    configs = {amp: with_amp(cfg, amp) if amp != cfg.train.amp else cfg for amp in precisions}
    rates: dict[bool, dict[str, list[float]]] = {amp: {"a": [], "b": [], "c": []} for amp in precisions}
    for _ in range(repeats):
        for amp, run_cfg in configs.items():
            rates[amp]["a"].append(in_memory_rate(run_cfg, device, batches, steps, with_loss=False))
            rates[amp]["b"].append(in_memory_rate(run_cfg, device, batches, steps, with_loss=True))
            rates[amp]["c"].append(loop_rate(run_cfg, steps))
    medians = {amp: {k: statistics.median(v) for k, v in r.items()} for amp, r in rates.items()}
    for amp, run_cfg in configs.items():
        a, b, c = (medians[amp][k] for k in "abc")
        spread = {k: f"{min(v):.1f}-{max(v):.1f}" for k, v in rates[amp].items()}
        row = (f"| {label}, {precision_name(amp_dtype(run_cfg, device))} | {a:.1f} ({spread['a']}) "
               f"| {b:.1f} ({spread['b']}) | {c:.1f} ({spread['c']}) | {b / a:.2f} | {c / a:.2f} |")
        if len(precisions) > 1:
            row += " " + " | ".join(paired_ratio(rates[True][k], rates[False][k]) if amp else "-"
                                    for k in "abc") + " |"
        print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "shapes_nano.yaml")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--full", action="store_true", help="also Darknet-53 YOLOv3 at 416 px (CUDA only)")
    parser.add_argument("--precision", choices=("config", "float32", "amp", "both"), default="config",
                        help="config: the config's train.amp; amp: bfloat16 autocast on the CPU, float16 on CUDA; "
                             "both: float32 and AMP rows and their ratio")
    parser.add_argument("--sizes", type=int, nargs="+", metavar="PX", help="image sizes (default: the config's)")
    parser.add_argument("--batches", type=int, nargs="+", metavar="N", help="batch sizes (default: the config's)")
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    device = select_device(cfg.train.device)
    precisions = {"config": None, "float32": (False,), "amp": (True,), "both": (False, True)}[args.precision]
    amp_name = precision_name(amp_dtype(with_amp(cfg, True), device))
    print(f"torch {torch.__version__}, {describe_cpu() if device.type == 'cpu' else device}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"median images/s of {args.repeats} repeats (range), {args.steps} steps each; "
          f"{'channels-last' if cfg.train.channels_last else 'contiguous'}"
          + ("; AMP / float32: median (range) of the repeats' own ratios" if precisions == (False, True) else ""))
    ratios = f" (a) {amp_name}/float32 | (b) {amp_name}/float32 | (c) {amp_name}/float32 |"
    both = precisions is not None and len(precisions) > 1
    print("| model | (a) model | (b) + loss | (c) training loop | (b)/(a) | (c)/(a) |" + (ratios if both else ""))
    print("|---|---|---|---|---|---|" + ("---|---|---|" if both else ""))
    for size in args.sizes or [cfg.data.img_size]:
        for batch in args.batches or [cfg.train.batch_size]:
            shaped = cfg
            if args.sizes or args.batches:
                shaped = apply_overrides(cfg, [f"data.img_size={size}", f"train.batch_size={batch}"]
                                         + ([f"data.shapes.image_size={size}"] if cfg.data.format == "shapes"
                                            and size != cfg.data.img_size else []))
            bench(f"{args.config.stem}, {size} px, batch {batch}", shaped, args.repeats, args.steps, precisions)
    if args.full:
        if device.type != "cuda":
            print("--full: skipped, Darknet-53 at 416 px is a GPU measurement and no CUDA device is present")
            return
        full = apply_overrides(cfg, ["model.width=1.0", "model.depth=1.0", "data.img_size=416",
                                     "data.shapes.image_size=416", "train.amp=true", "data.workers=8"])
        bench(f"Darknet-53 YOLOv3, 416 px, batch {full.train.batch_size}, AMP", full, args.repeats, args.steps)


if __name__ == "__main__":
    main()
