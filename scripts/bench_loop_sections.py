"""Where train.py's training loop spends a step, part by part, in float32 and with bfloat16 autocast.

    python scripts/bench_loop_sections.py --config configs/shapes_nano.yaml [--steps 60] [--repeats 2] [--ops 12]

Trains ``--steps`` steps of the config's loop (the real loader, augmentation, logging; no evaluation timed) in each
precision in turn, ``--repeats`` times, with timers wrapped around the parts of :func:`yolo_loss.train.engine.
train_step` (the functions it calls, not a copy of it): the model's forward, the loss, the per-term gradient
measurement before the backward pass, the backward pass, clipping, the SGD step, the EMA update and the logging
after the step; "loader" is the time between two steps (the loader, its augmentation and the progress bar), and
"rest" the rest of the step (the learning rate, the copy to the device, the non-finite check, the returned terms).
Prints each part's mean milliseconds a step (the first 3 steps left out) and its bfloat16 speed-up (float32's time
over bfloat16's), then the same for the model (forward + backward), the rest of the loop and the whole step: what
the whole loop's speed-up is made of.

``--ops N`` adds one more pass per precision under ``torch.profiler`` (after the timed ones, whose timers it would
slow) and prints the N ATen operators with the most self CPU time a step over both precisions: which operators the
precision speeds up. Run it at ``OMP_NUM_THREADS=1`` and at 2 to see which operators do not use the second thread.
The profiler's own cost inflates the small operators; compare the large ones.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

from yolo_loss.allocator import reexec_with_allocator_settings

if __name__ == "__main__":
    reexec_with_allocator_settings()  # as train.py: glibc reads its settings at start-up

import torch  # noqa: E402

from yolo_loss.config.load import add_config_arguments, apply_overrides, config_from_args  # noqa: E402
from yolo_loss.losses.criterion import YoloCriterion  # noqa: E402
from yolo_loss.model.yolov3 import YOLOv3  # noqa: E402
from yolo_loss.tensorboard.log import RunLogger  # noqa: E402
from yolo_loss.train import engine  # noqa: E402
from yolo_loss.train.optim import ModelEMA  # noqa: E402

SKIP = 3  # the first steps hold the kernels' warm-up
MODEL = ("forward", "backward")


class Timers:
    """Seconds of each wrapped part in each training step, and the time between steps."""

    def __init__(self) -> None:
        self.parts: dict[str, list[float]] = {}
        self.step: dict[str, float] = {}
        self.last_end: float | None = None
        self.patches: list[tuple[object, str, object]] = []
        self.names: list[str] = []  # the wrapped parts, in the order they were wrapped
        self.profiler: torch.profiler.profile | None = None  # records steps SKIP + 1 to last_step
        self.last_step = 0
        self.steps_begun = 0

    def wrap(self, owner: object, name: str, part: str) -> None:
        """Replace ``owner.name`` by a timed call of it, adding to ``part``; undone by :meth:`restore`."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.step[part] = self.step.get(part, 0.0) + time.perf_counter() - start

        self.patches.append((owner, name, original))
        self.names.append(part)
        setattr(owner, name, timed)

    def wrap_step(self) -> None:
        """Time the whole of ``engine.train_step`` and the gap since the previous one (the loader)."""
        original = engine.train_step

        def timed(*args, **kwargs):
            self.steps_begun += 1
            if self.profiler is not None and self.steps_begun == SKIP + 1:
                self.profiler.start()
            start = time.perf_counter()
            self.step = {} if self.last_end is None else {"loader": start - self.last_end}
            result = original(*args, **kwargs)
            if self.profiler is not None and self.steps_begun == self.last_step:
                self.profiler.stop()
            self.last_end = end = time.perf_counter()
            self.step["rest"] = end - start - sum(v for k, v in self.step.items() if k != "loader")
            for part in [*self.names, "rest", "loader"]:  # 0 for a part this step did not run (logging, mostly)
                if part != "loader" or "loader" in self.step:
                    self.parts.setdefault(part, []).append(self.step.get(part, 0.0))
            return result

        self.patches.append((engine, "train_step", original))
        engine.train_step = timed

    def restore(self) -> None:
        for owner, name, original in reversed(self.patches):
            setattr(owner, name, original)
        self.patches.clear()


def measure(cfg, steps: int, profiler: torch.profiler.profile | None = None) -> dict[str, float]:
    """Mean milliseconds a step of each part over ``steps`` steps of ``cfg``'s loop (the first SKIP left out).

    With ``profiler``, it records from the first timed step to the end of the last (the loader between them
    included, the evaluation after them not)."""
    timers = Timers()
    timers.profiler, timers.last_step = profiler, steps + SKIP
    timers.wrap(YOLOv3, "forward", "forward")
    timers.wrap(YoloCriterion, "__call__", "loss")
    timers.wrap(RunLogger, "before_backward", "term gradients")
    timers.wrap(torch.Tensor, "backward", "backward")
    timers.wrap(engine, "grad_norm_and_clip", "clip")
    timers.wrap(torch.optim.SGD, "step", "SGD step")
    timers.wrap(ModelEMA, "update", "EMA")
    timers.wrap(RunLogger, "after_step", "logging")
    timers.wrap_step()
    try:
        with tempfile.TemporaryDirectory() as folder:
            run_cfg = apply_overrides(cfg, [f"train.max_steps={steps + SKIP}", "train.epochs=1000",
                                            "train.eval_points=1", "train.eval_at_start=false",
                                            f"train.out_dir={folder}"])
            run_dir = Path(folder) / "run"
            run_dir.mkdir()
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                engine.train(run_cfg, run_dir)  # it evaluates at the end, after the last timed step
    finally:
        timers.restore()
    return {part: 1000 * statistics.fmean(values[SKIP:]) for part, values in timers.parts.items()
            if len(values) > SKIP}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per precision, in turn")
    parser.add_argument("--ops", type=int, default=0, metavar="N",
                        help="then profile one pass per precision; print the N operators of most self CPU time")
    args = parser.parse_args()
    cfg = config_from_args(args)
    runs: dict[str, list[dict[str, float]]] = {"float32": [], "bfloat16": []}
    for _ in range(args.repeats):
        for precision, measured in runs.items():
            amp = "true" if precision == "bfloat16" else "false"
            measured.append(measure(apply_overrides(cfg, [f"train.amp={amp}"]), args.steps))
    means = {precision: {part: statistics.fmean(run.get(part, 0.0) for run in measured) for part in measured[0]}
             for precision, measured in runs.items()}
    parts = list(means["float32"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.config}, batch "
          f"{cfg.train.batch_size}; mean ms a step over {args.steps} steps, mean of {args.repeats} repeats")
    print("| part | float32 | bfloat16 | speed-up (float32 / bfloat16) |\n|---|---|---|---|")
    groups = [(part, [part]) for part in parts] + [
        ("**model (forward + backward)**", list(MODEL)),
        ("**the rest of the loop**", [part for part in parts if part not in MODEL]), ("**whole step**", parts)]
    for label, selected in groups:
        f32 = sum(means["float32"].get(part, 0.0) for part in selected)
        b16 = sum(means["bfloat16"].get(part, 0.0) for part in selected)
        print(f"| {label} | {f32:.1f} | {b16:.1f} | {f32 / b16 if b16 else float('nan'):.2f} |")
    if args.ops > 0:
        print_top_ops(cfg, args.steps, args.ops)


def print_top_ops(cfg, steps: int, count: int) -> None:
    """Profile one pass of ``steps`` steps per precision; print the ``count`` operators with the most self CPU
    time a step (float32's and bfloat16's together), in milliseconds a step, with bfloat16's speed-up."""
    per_step: dict[str, dict[str, float]] = {}
    for precision, amp in (("float32", "false"), ("bfloat16", "true")):
        profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        measure(apply_overrides(cfg, [f"train.amp={amp}"]), steps, profiler)  # starts and stops it
        per_step[precision] = {event.key: event.self_cpu_time_total / 1000 / steps
                               for event in profiler.key_averages()}
    names = sorted(set(per_step["float32"]) | set(per_step["bfloat16"]),
                   key=lambda name: -(per_step["float32"].get(name, 0.0) + per_step["bfloat16"].get(name, 0.0)))
    print(f"\nself CPU time a step under torch.profiler, one pass of {steps} steps each, the loader included; "
          f"{torch.get_num_threads()} threads")
    print("| operator | float32 ms | bfloat16 ms | speed-up |\n|---|---|---|---|")
    for name in names[:count]:
        f32, b16 = per_step["float32"].get(name, 0.0), per_step["bfloat16"].get(name, 0.0)
        print(f"| `{name}` | {f32:.1f} | {b16:.1f} | {f32 / b16 if b16 else float('nan'):.2f} |")


if __name__ == "__main__":
    main()
