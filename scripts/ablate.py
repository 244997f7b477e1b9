"""Run an ablation study: every variant x seed of a study file, each a train.py run in its own folder.

    python scripts/ablate.py configs/ablations/loss_axes.yaml [--jobs N | --devices 0,1] [--dry-run]
    python scripts/ablate.py STUDY --devices 0,1,2,3 --nproc-per-run 2   # each run: torchrun over 2 GPUs
    python scripts/ablate.py STUDY --status                              # each run's state, owner and AP
    python scripts/ablate.py STUDY --launcher slurm --partition gpu --gpus-per-run 1 --time 120

Several launchers (terminals, machines sharing the folder, Slurm jobs) can work on one study at once: each claims a
run before training it (yolo_loss/studies/run_locks.py), so every run is trained once.

With `seeds: {auto: [0, 1, 2, 3, 4], cap: 10}` the launcher then adds seeds, a round at a time, to the variants
whose difference from the baseline is unresolved (yolo_loss/studies/study.py); --status lists the next round.
With `tune:` it first trains each variant's candidates at the tuning seeds (<variant>/tune=<candidate>/seed=<s>),
then each variant's evaluation runs at the candidate chosen; --dry-run and --status list the search runs and say
which variants' evaluation runs wait for their choice.

Re-running the same command skips finished runs, resumes interrupted ones from their last checkpoint and restarts
failed ones (their folder is set aside as <seed folder>.failed-N). At the end the study folder gets results.csv,
results.md, metrics.png and loss_curves.png (scripts/report.py rebuilds them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from yolo_loss.studies.study import StudyError, finished_metric, load_study
from yolo_loss.studies.runner import describe_command, next_round, run_state, run_study, submit_study, train_command
from yolo_loss.studies.run_locks import CLAIM_TIMEOUT_SECONDS
from yolo_loss.studies.report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="a study file, e.g. configs/ablations/loss_axes.yaml")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time; the CPU threads are divided among them")
    parser.add_argument("--devices", help="comma-separated CUDA device ids, one run per device at a time "
                                          "(per --nproc-per-run devices)")
    parser.add_argument("--nproc-per-run", type=int, default=1, metavar="N",
                        help="train each run data-parallel over N processes with torchrun (docs/distributed.md); "
                             "train.batch_size is per process")
    parser.add_argument("--dry-run", action="store_true", help="print the runs, their state and their commands")
    parser.add_argument("--status", action="store_true",
                        help="print each run's state: finished, running (where, since when), interrupted, failed, new")
    parser.add_argument("--only", action="append", metavar="VARIANT",
                        help="run only this variant (its name as in the run folders, e.g. xy=bce,cls=ce); repeatable")
    parser.add_argument("--claim-timeout", type=float, default=CLAIM_TIMEOUT_SECONDS, metavar="SECONDS",
                        help="a claim from another host whose heartbeat is older than this is taken over "
                             f"(default {CLAIM_TIMEOUT_SECONDS:.0f})")
    cluster = parser.add_argument_group("cluster (submitit)")
    cluster.add_argument("--launcher", choices=("local", "slurm", "submitit-local"), default="local",
                         help="local: train here; slurm: one Slurm job per run (a job array); submitit-local: the "
                              "same jobs as local processes (to try the cluster path without Slurm)")
    cluster.add_argument("--partition", help="Slurm partition")
    cluster.add_argument("--gpus-per-run", type=int, default=0, help="GPUs per job; more than 1 trains the run "
                                                                     "with torchrun over them")
    cluster.add_argument("--cpus-per-run", type=int, default=8, help="CPU cores per job")
    cluster.add_argument("--time", type=int, default=240, metavar="MINUTES", help="time limit of each job")
    cluster.add_argument("--wait", action="store_true", help="wait for the jobs and write the report (always for "
                                                             "submitit-local)")
    args = parser.parse_args()
    if args.nproc_per_run < 1:
        parser.error("--nproc-per-run must be at least 1")
    devices = args.devices.split(",") if args.devices else None
    if devices and len(devices) % args.nproc_per_run:
        parser.error(f"--devices lists {len(devices)} devices, which --nproc-per-run {args.nproc_per_run} "
                     "cannot share out")
    try:
        study = load_study(args.study)
        runs = study.search_runs(args.only) + study.runs(args.only)
    except (StudyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.dry_run or args.status:
        for run in runs:
            state = run_state(run, timeout=args.claim_timeout)
            if args.status:  # a finished run with its final metric: the search's, or AP
                metric = study.tune.metric if run.search else "AP"
                value = finished_metric(run, metric) if state == "finished" else None
                print(f"{run.name}: {state}" + ("" if value is None else f" ({metric} {value:.4f})"))
            else:
                command = train_command(run, nproc_per_run=args.nproc_per_run)
                print(f"# {run.name} [{state}]\n{describe_command(command)}")
        for choice in study.choices():  # tune: each variant's choice, or what its evaluation waits for
            if args.only and choice.variant not in args.only:
                continue
            if choice.chosen:
                print(f"tune: {choice.describe()}")
            else:
                print(f"tune: {choice.describe_wait(study.seeds)}")
        for run in next_round(study):  # seeds: auto, once every listed run has ended
            print(f"{run.name}: next round (auto seeds), {run.state()}")
        return
    if args.launcher != "local":
        submit(study, args)
        return
    try:
        outcomes = run_study(study, jobs=len(devices) // args.nproc_per_run if devices else args.jobs,
                             devices=devices, nproc_per_run=args.nproc_per_run, only=args.only,
                             claim_timeout=args.claim_timeout)
    except KeyboardInterrupt:  # the runs got the signal too and saved their checkpoints
        print("interrupted: run the same command again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    for path in write_report(study.out):
        print(f"wrote {path}")
    if any(outcome.status == "failed" for outcome in outcomes):
        raise SystemExit(1)


def submit(study, args: argparse.Namespace) -> None:
    """--launcher slurm / submitit-local: one job per unfinished run through submitit (docs/studies.md, "Sharing a
    study: several launchers, machines, a cluster")."""
    import submitit

    folder = study.out / "submitit"
    if args.launcher == "slurm":
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(timeout_min=args.time, cpus_per_task=args.cpus_per_run, nodes=1,
                                   tasks_per_node=1, slurm_gpus_per_node=args.gpus_per_run or None,
                                   slurm_partition=args.partition, name=study.path.stem)
    else:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=args.time)
    jobs = submit_study(study, executor, only=args.only, nproc_per_run=max(1, args.gpus_per_run),
                        claim_timeout=args.claim_timeout)
    print(f"submitted {len(jobs)} job(s) ({args.launcher}): {', '.join(str(job.job_id) for job in jobs)}; "
          f"logs in {folder}")
    if args.launcher == "slurm" and not args.wait:
        print(f"when they are done: python scripts/report.py {study.out}")
        return
    results = [job.result() for job in jobs]
    for result in results:
        print(f"{result['run']}: {result['status']} ({result['detail']})")
    for path in write_report(study.out):
        print(f"wrote {path}")
    if any(result["status"] == "failed" for result in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
