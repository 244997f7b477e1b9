"""Run an ablation study: every variant x seed of a study file, each a train.py run in its own folder.

    python scripts/ablate.py configs/ablations/loss_axes.yaml [--jobs N | --devices 0,1] [--dry-run]
    python scripts/ablate.py STUDY --devices 0,1,2,3 --nproc-per-run 2   # each run: torchrun over 2 GPUs

Re-running the same command skips finished runs, resumes interrupted ones from their last checkpoint and restarts
failed ones (their folder is set aside as <seed folder>.failed-N). At the end the study folder gets results.csv,
results.md, metrics.png and loss_curves.png (scripts/report.py rebuilds them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from yolo_loss.ablation import StudyError, describe_command, load_study, run_study, train_command  # noqa: E402
from yolo_loss.study_report import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="a study file, e.g. configs/ablations/loss_axes.yaml")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time; the CPU threads are divided among them")
    parser.add_argument("--devices", help="comma-separated CUDA device ids, one run per device at a time "
                                          "(per --nproc-per-run devices)")
    parser.add_argument("--nproc-per-run", type=int, default=1, metavar="N",
                        help="train each run data-parallel over N processes with torchrun (README, 'Distributed "
                             "training'); train.batch_size is per process")
    parser.add_argument("--dry-run", action="store_true", help="print the runs, their state and their commands")
    parser.add_argument("--only", action="append", metavar="VARIANT",
                        help="run only this variant (its name as in the run folders, e.g. xy=bce,cls=ce); repeatable")
    args = parser.parse_args()
    if args.nproc_per_run < 1:
        parser.error("--nproc-per-run must be at least 1")
    devices = args.devices.split(",") if args.devices else None
    if devices and len(devices) % args.nproc_per_run:
        parser.error(f"--devices lists {len(devices)} devices, which --nproc-per-run {args.nproc_per_run} "
                     "cannot share out")
    try:
        study = load_study(args.study)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.dry_run:
        try:
            runs = study.runs(args.only)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        for run in runs:
            command = train_command(study, run, nproc_per_run=args.nproc_per_run)
            print(f"# {run.name} [{run.state()}]\n{describe_command(command)}")
        return
    try:
        outcomes = run_study(study, jobs=len(devices) // args.nproc_per_run if devices else args.jobs,
                             devices=devices, nproc_per_run=args.nproc_per_run, only=args.only)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # the runs got the signal too and saved their checkpoints
        print("interrupted: run the same command again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    for path in write_report(study.out):
        print(f"wrote {path}")
    if any(outcome.status == "failed" for outcome in outcomes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
