"""Train a compact YOLOv3 with a configurable loss, then evaluate it.

    python train.py --config configs/shapes_nano.yaml [--set loss.xy=mse train.epochs=3] [--resume RUN/last.pt]
    torchrun --nproc_per_node=N train.py --config ...   # N processes, train.batch_size images each
                                                        # (docs/distributed.md)
"""

from __future__ import annotations

from yolo_loss.allocator import reexec_with_allocator_settings

if __name__ == "__main__":
    reexec_with_allocator_settings()  # before torch is imported: glibc reads its settings at start-up

import argparse
import sys
from pathlib import Path

from yolo_loss.train import distributed as dist
from yolo_loss.checkpoint import CheckpointError
from yolo_loss.config.load import add_config_arguments, config_from_args, dump_config, exit_on_config_error
from yolo_loss.darknet.weights import DarknetWeightsError
from yolo_loss.data import DataError
from yolo_loss.train.engine import NonFiniteLoss, ResumeError, format_metrics, train
from yolo_loss.train.run_folder import CHECKPOINT, EXIT_INTERRUPTED, failure_status, finished
from yolo_loss.train.runtime import make_run_dir, remove_unstarted_run_dir, write_config_and_command
from yolo_loss.config.schema import Config
from yolo_loss.tensorboard.tags import custom_scalars_url, tensorboard_url

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--resume", type=Path, help="a checkpoint (last.pt) to continue; its run folder is reused")
    parser.add_argument("--force-resume", action="store_true", help="resume even if the config changed")
    parser.add_argument("--run-dir", type=Path, help="use this run folder, which may exist but must not hold a run "
                                                       "(default: <train.out_dir>/<name>[-N])")
    parser.add_argument("--label", default="", help="the run's name in TensorBoard's HParams table (default: its "
                                                    "folder's name; the study runner gives variant/seed)")
    parser.add_argument("--varied", nargs="+", default=[], metavar="KEY",
                        help="the settings a study varies, shown first in the HParams table")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic kernels (torch.use_deterministic_algorithms, cuDNN, cuBLAS workspace): "
                             "the same as --set train.deterministic=true, and recorded in the run's config.yaml")
    args = parser.parse_args()
    if args.deterministic:
        args.overrides.append("train.deterministic=true")
    with exit_on_config_error():
        cfg = config_from_args(args)
    if args.print_config:
        print(dump_config(cfg))
        return
    dist.setup(cfg.train.device)  # under torchrun: join the other processes (docs/distributed.md)
    is_main = dist.is_main()  # rank 0 writes the run's files and prints
    # Rank 0 picks (and creates) the run folder; under torchrun the other processes get its answer.
    run_dir, created, error = dist.broadcast_object(prepare_run_dir(args, cfg) if is_main else (None, False, None))
    if error:
        dist.on_main(print)(f"error: {error}", file=sys.stderr)
        raise SystemExit(2)
    if is_main:
        write_config_and_command(run_dir, dump_config(cfg), sys.argv)
        print(f"run folder: {run_dir}")
    try:
        with exit_on_config_error(DataError, CheckpointError, ResumeError, DarknetWeightsError):
            try:
                result = train(cfg, run_dir, resume=args.resume, force_resume=args.force_resume, label=args.label,
                               varied=tuple(args.varied))
            except NonFiniteLoss as error:
                print(f"error: {error}", file=sys.stderr)
                raise SystemExit(1) from None
    except BaseException as error:
        # Stopped before training (a config or data error): the folder this invocation created holds only its
        # config.yaml and command.txt, and goes, so the next run gets its name rather than <name>-1.
        if is_main and created and remove_unstarted_run_dir(run_dir):
            print(f"(removed the run folder {run_dir}: nothing was trained in it)", file=sys.stderr)
        elif is_main:
            failure_status(error, run_dir).write(run_dir)
        raise
    dist.teardown()
    if result.stopped:  # the engine has said where it stopped and how to resume
        raise SystemExit(EXIT_INTERRUPTED)
    if not is_main:
        return
    print(f"\nfinished {result.steps} steps; validation metrics:\n{format_metrics(result.metrics)}\n")
    print(f"checkpoints: {run_dir / 'best.pt'}, {run_dir / 'last.pt'}")
    print(f"evaluate again: python eval.py --checkpoint {run_dir / 'best.pt'}")
    print(f"TensorBoard:    tensorboard --logdir {run_dir}")
    print(f"                then open {tensorboard_url()} (smoothing off; the loss and the metrics pinned)")
    print(f"                or {custom_scalars_url()} (each chart overlays what is compared; smoothing off)")


def prepare_run_dir(args: argparse.Namespace, cfg: Config) -> tuple[Path | None, bool, str | None]:
    """The run folder, whether this call created it, and None; or None, False and why it cannot be used. The
    folder is that of ``--resume`` (not created), the ``--run-dir`` if it holds no run yet (created if it did not
    exist), else a new ``<train.out_dir>/<name>[-N]`` (created)."""
    if args.resume is not None:
        return args.resume.resolve().parent, False, None
    if args.run_dir is not None:
        run_dir = args.run_dir
        if (run_dir / CHECKPOINT).exists() or finished(run_dir):
            return None, False, f"{run_dir} holds a run already; continue it with --resume {run_dir / CHECKPOINT}"
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir, created, None
    return make_run_dir(Path(cfg.train.out_dir), cfg.name or Path(args.config).stem), True, None


if __name__ == "__main__":
    main()
