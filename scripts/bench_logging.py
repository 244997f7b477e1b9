"""Cost of the per-term gradient norms (``train.grad_terms_interval``) against a training step.

    python scripts/bench_logging.py [--config configs/shapes_nano.yaml] [--repeats 20] [--threads N]

On real batches of the config's training set (cached, augmented) and its model: the median time of a whole
training step (forward, loss, backward, clipping, SGD step) and of one measurement of the per-term gradient norms
(:func:`yolo_loss.tensorboard.log.term_gradient_norms`, one ``autograd.grad`` per term into the head outputs),
timed alternately on the same batches; then the share of training time at some intervals N. Wall-clock and
CPU times are both reported: on a machine shared with other work the wall clock of a multi-threaded step swings
widely, while the CPU time of a single thread (``--threads 1``) does not.
"""

from __future__ import annotations

import argparse
import statistics
import time

from yolo_loss.allocator import reexec_with_allocator_settings

if __name__ == "__main__":
    reexec_with_allocator_settings()  # before torch is imported: glibc reads its settings at start-up

import torch  # noqa: E402

from yolo_loss.config.load import load_config  # noqa: E402
from yolo_loss.data import build_dataset, build_loader  # noqa: E402
from yolo_loss.train.engine import memory_format  # noqa: E402
from yolo_loss.head import build_head  # noqa: E402
from yolo_loss.losses.criterion import build_criterion  # noqa: E402
from yolo_loss.model import build_model  # noqa: E402
from yolo_loss.train.optim import build_optimizer, grad_norm_and_clip  # noqa: E402
from yolo_loss.tensorboard.log import term_gradient_norms  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shapes_nano.yaml")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, ["train.device=cpu"])
    dataset = build_dataset(cfg.data, "train", train=True)
    loader = build_loader(dataset, cfg.train.batch_size, shuffle=True, workers=0, seed=0)
    batches = []
    for images, targets, _ in loader:
        batches.append((images.contiguous(memory_format=memory_format(cfg)), targets))
        if len(batches) == 4:
            break
    model = build_model(cfg.model, dataset.num_classes).to(memory_format=memory_format(cfg))
    criterion = build_criterion(cfg.loss, build_head(cfg, dataset.num_classes), img_size=cfg.data.img_size)
    optimizer = build_optimizer(model, cfg.train)

    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def step(index: int, measure: bool) -> tuple[tuple[float, float], tuple[float, float]]:
        """((wall, cpu) seconds of the step without the measurement, (wall, cpu) seconds of the measurement)."""
        images, targets = batches[index % len(batches)]
        start = now()
        preds = [p.float() for p in model(images)]
        result = criterion(preds, targets, images.shape[-2:])
        before = now()
        if measure:
            term_gradient_norms(result, preds)
        after = now()
        optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        grad_norm_and_clip(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        end = now()
        return (tuple(e - s - (a - b) for e, s, a, b in zip(end, start, after, before)),
                tuple(a - b for a, b in zip(after, before)))

    model.train()
    for index in range(3):  # warm-up
        step(index, True)
    steps, measurements = [], []
    for index in range(args.repeats):
        plain, _ = step(index, False)
        with_measure, measure = step(index, True)
        steps += [plain, with_measure]
        measurements.append(measure)
    print(f"{args.config}: batch {cfg.train.batch_size}, {cfg.data.img_size} px, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    for clock, which in (("wall", 0), ("cpu", 1)):
        step_ms = statistics.median(s[which] for s in steps) * 1e3
        measure_ms = statistics.median(m[which] for m in measurements) * 1e3
        print(f"{clock:>4}: training step {step_ms:.1f} ms ({cfg.train.batch_size / step_ms * 1e3:.1f} img/s); "
              f"one per-term gradient measurement {measure_ms:.1f} ms ({measure_ms / step_ms:.1%} of a step); "
              + ", ".join(f"every {n} steps +{measure_ms / (n * step_ms):.2%}" for n in (1, 10, 50)))


if __name__ == "__main__":
    main()
