"""Launching a study's runs: each a ``train.py`` process (or ``torchrun`` of it) in its own folder, here or as cluster
jobs. The study file and its expansion: :mod:`yolo_loss.studies.study`.

Run state is read from the folder alone, through :mod:`yolo_loss.train.run_folder`: ``metrics.json`` (written by
``train.py`` at the very end) means finished, ``failed.json`` (written by the runner) failed, ``last.pt`` without
either interrupted (resumed from it), an empty or missing folder new; ``train.py``'s ``status.json`` tells a run
stopped by a signal from one that failed. A launcher claims a run before it trains it (``<run folder>.claim``,
:mod:`yolo_loss.studies.run_locks`), so several launchers, here, on other machines or as cluster jobs
(:func:`submit_study`), share a study and train each run once.

A run may be several processes: with ``nproc_per_run`` > 1 each run is ``torchrun`` (``python -m
torch.distributed.run --standalone``) of ``train.py``, data-parallel over that many processes (docs/distributed.md),
and ``--dry-run`` prints those commands for a cluster scheduler.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolo_loss.studies import run_locks
from yolo_loss.studies.stats import Difference, judge_family
from yolo_loss.studies.study import (FAILED, LOG, RUN_INFO, STUDY_INFO, Run, Study, StudyError, dotted, finished_metric,
                                     load_study)
from yolo_loss.train import run_folder

REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO / "train.py"



# train.py's status when Ctrl-C / SIGTERM stopped it after saving last.pt (130), or the process was killed by a
# signal outright (negative): the run is interrupted, not failed. torchrun passes a signal on to its processes but
# exits 1 itself, whatever they did: the run's status.json tells an interrupted torchrun run from a failed one.
INTERRUPTED_STATUSES = {130, -2, -9, -15}


def train_command(run: Run, *, python: str = sys.executable, nproc_per_run: int = 1) -> list[str]:
    """The ``train.py`` command line of a run (from its base config and overrides): a fresh start in its folder,
    or ``--resume`` from its checkpoint.

    With ``nproc_per_run`` > 1, ``train.py`` under ``python -m torch.distributed.run --standalone
    --nproc_per_node=N`` (torchrun on one node, with a free port of its own, so runs side by side do not collide;
    for several nodes a scheduler replaces ``--standalone`` by its rendezvous options).
    """
    start = (["--resume", str(run.folder / run_folder.CHECKPOINT)] if run.state() == "interrupted"
             else ["--run-dir", str(run.folder)])
    launcher = [python] if nproc_per_run == 1 else [python, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc_per_run}"]
    labels = ["--label", run.label, *(["--varied", *run.varied] if run.varied else [])]
    return [*launcher, str(TRAIN_SCRIPT), "--config", str(run.base), *start, *labels, "--set", *run.overrides]


def describe_command(command: list[str]) -> str:
    return shlex.join(command)


def write_study_info(study: Study) -> None:
    """``study.json`` in the study folder: what :mod:`scripts.report` needs besides the run folders."""
    study.out.mkdir(parents=True, exist_ok=True)
    seeds = study.variant_seeds()
    info = {"study_file": str(study.path), "base": str(study.base), "combine": study.combine,
            "seeds": [seed for seed in study.seed_pool() if any(seed in own for own in seeds.values())],
            "axes": list(study.axes), "baseline": study.baseline_name, "folders": study.folders(),
            "variants": [variant.name for variant in study.variants()], "min_effect": study.min_effect,
            "labels": study.labels}
    if study.auto is not None:
        info["auto"] = {"first": study.seeds, "cap": study.auto.cap, "metric": study.auto.metric}
    if study.auto is not None or study.extra_seeds:
        info["variant_seeds"] = seeds
    if study.untuned:
        info["untuned"] = study.untuned_folders()
    if study.tune is not None:
        info["tune"] = {"seeds": list(study.tune.seeds), "metric": study.tune.metric,
                        "select": dotted(study.tune.select),
                        "variants": {choice.variant: {"candidates": {name: dotted(overrides) for name, overrides
                                                                     in study.tune.grid[choice.variant].items()},
                                                      "values": choice.values, "chosen": choice.chosen or None,
                                                      "on_edge": choice.on_edge}
                                     for choice in study.choices()}}
    (study.out / STUDY_INFO).write_text(json.dumps(info, indent=2))


def write_run_json(run: Run, command: list[str]) -> None:
    """``run.json`` in the run folder: its variant, seed, overrides, study file and the launcher's command (what
    a study's report and its auto seeds read back; ``train.py`` writes its own ``config.yaml`` and ``command.txt``)."""
    info = {"variant": run.variant.name, "fields": dict(run.variant.fields), "seed": run.seed,
            "overrides": list(run.overrides), "command": describe_command(command), "study": str(run.study_file)}
    if run.candidate:  # tune: the candidate a search run tries, or the one chosen for an evaluation run
        info["tune"] = {"role": "search" if run.search else "evaluation", "candidate": run.candidate,
                        "candidate_overrides": list(run.candidate_overrides)}
    (run.folder / RUN_INFO).write_text(json.dumps(info, indent=2))


def record_failure(run: Run, returncode: int, log_tail: list[str]) -> dict[str, Any]:
    """Write ``failed.json``: the exit status, the error (the reason in train.py's ``status.json``, else the log's
    last ``error: ...`` line, else its last line) and the log tail."""
    status = _status(run)
    errors = [line for line in log_tail if line.startswith("error:") or "Error" in line]
    error = (status.describe() if status is not None and status.state == run_folder.FAILED
             else (errors or log_tail or ["(no output)"])[-1])
    failure = {"returncode": returncode, "error": error, "log_tail": log_tail}
    (run.folder / FAILED).write_text(json.dumps(failure, indent=2))
    return failure


def _status(run: Run) -> run_folder.RunStatus | None:
    try:
        return run_folder.RunStatus.read(run.folder)
    except run_folder.RunFolderError:
        return None


def stopped_by_signal(run: Run) -> bool:
    """Whether train.py's status says that it stopped on a signal after saving last.pt."""
    status = _status(run)
    return status is not None and status.state == run_folder.STOPPED


def set_aside(folder: Path, reason: str) -> Path:
    """Rename ``folder`` to ``<folder>.<reason>-<n>`` (never deleting what a run left) and return the new path."""
    n = 1
    while (target := folder.with_name(f"{folder.name}.{reason}-{n}")).exists():
        n += 1
    folder.rename(target)
    return target


@dataclass
class Outcome:
    run: Run
    status: str  # finished, failed, interrupted, or held (claimed by another live launcher: not run here)
    seconds: float
    detail: str  # the AP50 of a finished run, the error of a failed one, the owner of a held one


def claim_path(run: Run) -> Path:
    """The run's claim file, beside its folder (``seed=N.claim``): setting a folder aside never moves it."""
    return run.folder.with_name(run.folder.name + ".claim")


def run_state(run: Run, *, timeout: float = run_locks.CLAIM_TIMEOUT_SECONDS) -> str:
    """What ``ablate.py --status`` prints for a run: finished, failed, interrupted, new, or running (host, pid and
    start of a live claim) / claimed by a dead owner."""
    state = run.state()
    if state == "finished":
        return state
    held = run_locks.read_claim(claim_path(run))
    if held is None:
        return state
    claim, heartbeat = held
    owner = f"{claim.host} pid {claim.pid}" + (f" (train.py pid {claim.run_pid})" if claim.run_pid else "")
    if run_locks.owner_alive(claim, heartbeat, timeout=timeout):
        return f"running on {owner} since {claim.started_text}"
    return f"{state}, claimed by a dead owner ({owner}, since {claim.started_text}): the next launcher takes it over"


def _die_with_parent() -> None:
    """In the run's process, before train.py starts (Linux): SIGTERM when the launcher dies, so a killed launcher
    leaves no orphan training in a folder that a relaunch will resume (train.py saves last.pt and exits 130)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Launcher:
    """Trains runs of a study in this process's threads, each after claiming it (:mod:`yolo_loss.studies.run_locks`);
    any number of launchers, here or on other machines sharing the folder, can work on one study at once."""

    def __init__(self, *, threads: str, python: str = sys.executable, nproc_per_run: int = 1,
                 claim_timeout: float = run_locks.CLAIM_TIMEOUT_SECONDS,
                 heartbeat_seconds: float = run_locks.HEARTBEAT_SECONDS) -> None:
        self.threads, self.python, self.nproc_per_run = threads, python, nproc_per_run
        self.claim_timeout, self.heartbeat_seconds = claim_timeout, heartbeat_seconds

    def execute(self, run: Run, device: str | None = None,
                on_start: Callable[[str], None] | None = None) -> Outcome:
        """Claim the run and train (or resume) it; ``held`` when a live owner has it, ``finished`` at once when a
        launcher finished it since it was listed. ``on_start`` is called with ``"starting"`` or ``"resuming"`` once
        the run is claimed and about to train here, and not at all for a run this launcher does not start."""
        mine, other = run_locks.try_claim(claim_path(run), timeout=self.claim_timeout)
        if mine is None:
            owner = f"{other.host} pid {other.pid}" if other else "another launcher"
            return Outcome(run, "held", 0.0, f"claimed by {owner}")
        try:
            state = run.state()
            if state == "finished":
                return Outcome(run, "finished", 0.0, "finished by another launcher")
            if on_start is not None:
                on_start("resuming" if state == "interrupted" else "starting")
            return self._train(run, mine, device)
        finally:
            run_locks.release(claim_path(run), mine)

    def _train(self, run: Run, claim: run_locks.Claim, device: str | None) -> Outcome:
        state = run.state()
        if state == "failed":
            set_aside(run.folder, "failed")
        elif state == "new" and run.folder.exists() and any(run.folder.iterdir()):
            set_aside(run.folder, "incomplete")  # killed before its first checkpoint
        run.folder.mkdir(parents=True, exist_ok=True)
        command = train_command(run, python=self.python, nproc_per_run=self.nproc_per_run)
        write_run_json(run, command)
        env = {**os.environ, "OMP_NUM_THREADS": self.threads, "MKL_NUM_THREADS": self.threads}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        tick = time.monotonic()
        with (run.folder / LOG).open("a") as log:
            log.write(f"$ {describe_command(command)}\n")
            log.flush()
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                       preexec_fn=_die_with_parent if sys.platform == "linux" else None)
            run_locks.update_claim(claim_path(run), claim, run_pid=process.pid)
            while True:
                try:
                    returncode = process.wait(timeout=self.heartbeat_seconds)
                    break
                except subprocess.TimeoutExpired:
                    run_locks.heartbeat(claim_path(run))
        seconds = time.monotonic() - tick
        if returncode == 0 and run.state() == "finished":
            metrics = run_folder.RunMetrics.read(run.folder).metrics
            return Outcome(run, "finished", seconds, f"AP50 {metrics.get('AP50', float('nan')):.3f}")
        if run.state() == "interrupted" and (returncode in INTERRUPTED_STATUSES or stopped_by_signal(run)):
            return Outcome(run, "interrupted", seconds, "stopped by a signal; the next invocation resumes it")
        tail = (run.folder / LOG).read_text(errors="replace").splitlines()[-30:]
        return Outcome(run, "failed", seconds, record_failure(run, returncode, tail)["error"])


def training_order(study: Study, runs: list[Run]) -> list[Run]:
    """``runs`` seed by seed (every variant at the study's first seed, then at its second, ...), variants in study
    order within a seed: a study stopped partway has its variants at the same seeds, so its paired differences are
    already usable, and each further round of seeds adds one pair to every comparison."""
    pool = study.seed_pool()
    return sorted(runs, key=lambda run: pool.index(run.seed))


def next_round(study: Study) -> list[Run]:
    """With auto seeds (:class:`AutoSeeds`), the runs of the next round once every listed run has finished or
    failed: for each variant whose comparison with the baseline in the study's metric is not decided by the verdict
    rule (:func:`yolo_loss.studies.stats.judge_family` over the study's family: neither better, worse nor equivalent, or
    still preliminary) and that has fewer than ``cap`` seeds, its next seed, with the baseline at that seed. Empty
    without auto seeds, while a listed run is still to train, or when every variant is decided or at the cap."""
    if study.auto is None:
        return []
    if any(run.state() in ("new", "interrupted") for run in study.runs()):
        return []
    seeds, pool = study.variant_seeds(), study.seed_pool()
    variants = {variant.name: variant for variant in study.variants()}
    baseline = variants[study.baseline_name]
    reference = {seed: value for seed in seeds[baseline.name]
                 if (value := finished_metric(study.run(baseline, seed), study.auto.metric)) is not None}
    compared = [name for name in variants if name != baseline.name]
    family = judge_family([Difference.of([value - reference[seed] for seed in seeds[name] if seed in reference
                                          if (value := finished_metric(study.run(variants[name], seed),
                                                                        study.auto.metric)) is not None])
                           for name in compared], study.min_effect)
    planned: list[Run] = []
    baseline_seeds: set[int] = set()
    for name, judged in zip(compared, family):
        if judged.decided or len(seeds[name]) >= study.auto.cap:
            continue
        seed = next(seed for seed in pool if seed not in seeds[name])
        planned.append(study.run(variants[name], seed))
        if seed not in baseline_seeds:
            baseline_seeds.add(seed)
            planned.append(study.run(baseline, seed))
    order = list(variants)
    return sorted(planned, key=lambda run: (pool.index(run.seed), order.index(run.listed_as or run.variant.name)))


def run_study(study: Study, *, jobs: int = 1, devices: list[str] | None = None, nproc_per_run: int = 1,
              only: list[str] | None = None, python: str = sys.executable, echo=print,
              claim_timeout: float = run_locks.CLAIM_TIMEOUT_SECONDS,
              heartbeat_seconds: float = run_locks.HEARTBEAT_SECONDS) -> list[Outcome]:
    """Run every unfinished run of ``study`` that no other live launcher holds (resuming interrupted ones,
    restarting failed ones after setting their folder aside), ``jobs`` at a time, each of ``nproc_per_run``
    processes (torchrun when more than one) with ``cpu_count // (jobs * nproc_per_run)`` threads each, or with
    ``nproc_per_run`` devices of ``devices`` per run. A failed run is recorded in its folder and does not stop the
    others. ``only``: run just these variants (by name). With ``tune``, the search runs first (with the evaluation
    runs of the variants without candidates), then the evaluation runs of each variant whose search has chosen.
    Returns what this call ran (``held`` for the runs other launchers had).

    Raises:
        ValueError: ``devices`` cannot be shared out ``nproc_per_run`` to a run, or ``only`` names a variant the
            study does not have.
    """
    slots = device_slots(devices, nproc_per_run)
    write_study_info(study)
    runs = study.search_runs(only) + study.runs(only)
    todo = ([run for run in study.search_runs(only) if run.state() != "finished"]
            + training_order(study, [run for run in study.runs(only) if run.state() != "finished"]))
    if not todo and not only:
        todo = [run for run in next_round(study) if run.state() != "finished"]
    tried = {run.folder for run in todo}  # a tuned variant's evaluation runs join once its search has chosen
    jobs = max(1, min(jobs, len(slots) if slots else jobs, len(todo) or 1))
    threads = str(max(1, (os.cpu_count() or 1) // (jobs * nproc_per_run)))
    launcher = Launcher(threads=threads, python=python, nproc_per_run=nproc_per_run, claim_timeout=claim_timeout,
                        heartbeat_seconds=heartbeat_seconds)
    free_devices: queue.Queue[str | None] = queue.Queue()
    for device in (slots or [None] * jobs):
        free_devices.put(device)
    lock = threading.Lock()
    counts = {"done": len(runs) - len(todo), "running": 0, "failed": 0, "held": 0}
    total = [len(runs)]  # grows with each round of auto seeds
    durations: list[float] = []
    started = time.monotonic()
    processes = f"{nproc_per_run} processes of {threads} threads" if nproc_per_run > 1 else f"{threads} threads"
    auto = (f", seeds added to unresolved variants up to {study.auto.cap} (on {study.auto.metric})"
            if study.auto and not only else "")
    waiting = [name for name in study.waiting() if not only or name in only]
    if waiting:
        auto += (f" ({len(study.search_runs(only))} of them tuning runs; the evaluation runs of {', '.join(waiting)} "
                 "are planned once their tuning has chosen)")
    echo(f"study {study.path.name}: {len(runs)} runs{auto}, {counts['done']} finished already, {len(todo)} to run, "
         f"{jobs} at a time ({processes} each{', devices ' + ' '.join(slots) if slots else ''}); "
         f"folder {study.out}; launcher {run_locks.LAUNCHER_ID}")

    def progress(line: str) -> None:
        left = total[0] - counts["done"] - counts["failed"] - counts["held"]
        eta = (sum(durations) / len(durations) * left / jobs / 60) if durations else float("nan")
        eta_text = f"~{eta:.0f} min left" if durations else "time left unknown yet"
        echo(f"[{counts['done']}/{total[0]} done, {counts['running']} running, {counts['failed']} failed, "
             f"{counts['held']} held elsewhere, {eta_text}] {line}")

    def execute(run: Run) -> Outcome:
        device = free_devices.get()
        started_here = []

        def on_start(action: str) -> None:  # called once the run is claimed: never for a run held elsewhere
            with lock:
                started_here.append(action)
                counts["running"] += 1
                progress(f"{run.name}: {action}")

        try:
            outcome = launcher.execute(run, device, on_start=on_start)
        finally:
            free_devices.put(device)
        with lock:
            counts["running"] -= len(started_here)
            if outcome.status in ("finished", "failed", "held"):
                counts["done" if outcome.status == "finished" else outcome.status] += 1
            if outcome.status in ("finished", "failed") and outcome.seconds:
                durations.append(outcome.seconds)
            if started_here:
                progress(f"{run.name}: {outcome.status} in {outcome.seconds / 60:.1f} min ({outcome.detail})")
            else:  # held by a live launcher, or finished by one since it was listed
                progress(f"{run.name}: {outcome.detail}, not started here")
        return outcome

    def grow(runs_added: list[Run]) -> None:
        with lock:
            total[0] += len(runs_added)

    with ThreadPoolExecutor(jobs) as pool:
        outcomes = list(pool.map(execute, todo))
        outcomes += later_runs(study, lambda more: list(pool.map(execute, more)), grow, only=only, tried=tried,
                               echo=echo)
    held = f", {counts['held']} held by other launchers" if counts["held"] else ""
    echo(f"study {study.path.name}: {counts['done']}/{total[0]} finished, {counts['failed']} failed{held}, "
         f"{(time.monotonic() - started) / 60:.1f} min")
    return outcomes


def device_slots(devices: list[str] | None, nproc_per_run: int) -> list[str] | None:
    """The ``CUDA_VISIBLE_DEVICES`` of each run running at once: ``devices`` shared out ``nproc_per_run`` to a run
    (None without devices).

    Raises:
        ValueError: ``nproc_per_run`` below 1, or ``devices`` that cannot be shared out that way.
    """
    if nproc_per_run < 1:
        raise ValueError(f"nproc_per_run must be at least 1, got {nproc_per_run}")
    if not devices:
        return None
    if len(devices) % nproc_per_run:
        raise ValueError(f"{len(devices)} devices cannot be shared out {nproc_per_run} to a run")
    return [",".join(devices[i:i + nproc_per_run]) for i in range(0, len(devices), nproc_per_run)]


def later_runs(study: Study, execute: Callable[[list[Run]], list[Outcome]], grow: Callable[[list[Run]], None], *,
               only: list[str] | None, tried: set[Path], echo=print) -> list[Outcome]:
    """The runs planned after the first pass of :func:`run_study`, trained by ``execute`` (``grow`` counts them
    in): with ``tune``, the evaluation runs of each variant whose search this pass finished (a search held by
    another launcher is left to it: that launcher plans the evaluation once it has finished); then, with auto
    seeds, one round at a time (a round waits for the rest of the study, so it is planned from every listed run's
    result and adds one pair to each unresolved comparison)."""
    outcomes: list[Outcome] = []
    while study.tune and (chosen := [run for run in training_order(study, study.runs(only))
                                     if run.state() != "finished" and run.folder not in tried]):
        tried |= {run.folder for run in chosen}
        for choice in study.choices():
            if choice.variant in {run.variant.name for run in chosen}:
                echo(f"tune: {choice.describe()}")
        grow(chosen)
        outcomes += execute(chosen)
    write_study_info(study)
    while not only and study.auto and (more := [run for run in next_round(study) if run.state() != "finished"]):
        grow(more)
        echo(f"auto seeds: {len(more)} more run(s): seed {', '.join(sorted({str(run.seed) for run in more}))} "
             f"for {', '.join(run.name for run in more)}")
        outcomes += execute(more)
        write_study_info(study)
    return outcomes


def run_in_job(study_file: str, run_name: str, *, nproc_per_run: int = 1, python: str = sys.executable,
               claim_timeout: float = run_locks.CLAIM_TIMEOUT_SECONDS) -> dict[str, Any]:
    """What one cluster job runs (submitted by :func:`submit_study`): load the study, claim its run ``run_name``
    and train (or resume) it with every CPU the job has, as a local launcher would; returns the outcome."""
    study = load_study(study_file, check_configs=False)
    runs = {run.name: run for run in study.search_runs() + study.runs() + next_round(study)}
    if run_name not in runs:
        raise StudyError(f"{study_file}: no run {run_name!r}")
    threads = str(max(1, (os.cpu_count() or 1) // nproc_per_run))
    outcome = Launcher(threads=threads, python=python, nproc_per_run=nproc_per_run,
                       claim_timeout=claim_timeout).execute(runs[run_name])
    return {"run": run_name, "status": outcome.status, "seconds": outcome.seconds, "detail": outcome.detail}


def submit_study(study: Study, executor: Any, *, only: list[str] | None = None, nproc_per_run: int = 1,
                 python: str = sys.executable, claim_timeout: float = run_locks.CLAIM_TIMEOUT_SECONDS) -> list[Any]:
    """Submit one job per unfinished run to a submitit executor (``submitit.AutoExecutor`` for Slurm, or
    ``submitit.LocalExecutor``), as one job array; each job claims its run first (:func:`run_in_job`), so jobs and
    local launchers can share a study. With ``tune``, the search runs and the evaluation runs already planned: a
    tuned variant's evaluation runs are submitted by a submission after its search has finished. Returns the
    submitit jobs."""
    write_study_info(study)
    todo = ([run for run in study.search_runs(only) if run.state() != "finished"]
            + training_order(study, [run for run in study.runs(only) if run.state() != "finished"]))
    if not todo and not only:  # auto seeds: one round per submission
        todo = [run for run in next_round(study) if run.state() != "finished"]
    with executor.batch():
        jobs = [executor.submit(run_in_job, str(study.path), run.name, nproc_per_run=nproc_per_run, python=python,
                                claim_timeout=claim_timeout) for run in todo]
    return jobs
