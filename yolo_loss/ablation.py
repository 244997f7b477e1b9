"""Ablation studies: a YAML file of axes and seeds expanded into runs, each a ``train.py`` process in its own folder.

A study file (``configs/ablations/*.yaml``)::

    base: ../shapes_nano.yaml          # the config every run starts from (relative to this file)
    out: ../../runs/ablations/loss_axes  # the study folder (relative to this file)
    combine: one_at_a_time             # or grid
    baseline: {xy: bce, box: mse, cls: bce}   # one_at_a_time: the variant every other one differs from
    include: [{xy: mse, cls: focal}]   # optional: more combinations, after the ones ``combine`` gives
    seeds: [0, 1, 2]                   # train.seed of each repetition
    overrides: {train.epochs: 6}       # dotted overrides applied to every run, before the variant's
    axes:                              # axis -> variant name -> dotted overrides (applied in axis order)
      xy: {bce: {loss.xy: bce}, mse: {loss.xy: mse}}
      cls: {bce: {}, focal: {loss.cls: focal}}

``grid`` takes every combination of the axes' variants; ``one_at_a_time`` takes the baseline and, for each axis,
every other value of that axis with the rest at the baseline; ``include`` adds combinations of its own. A run is named after all its axis values and its seed
(``xy=bce,cls=focal/seed=1``) and lives in that folder below ``out``. Every run's config is built and checked when
the study is expanded, so a bad variant stops the study before anything trains, with the variant and key named.

Run state is read from the folder alone: ``metrics.json`` (written by ``train.py`` at the very end) means finished,
``failed.json`` (written by the runner) failed, ``last.pt`` without either interrupted (resumed from it), an empty or
missing folder new.

A run may be several processes: with ``nproc_per_run`` > 1 each run is ``torchrun`` (``python -m
torch.distributed.run --standalone``) of ``train.py``, data-parallel over that many processes (README, "Distributed
training"), and ``--dry-run`` prints those commands for a cluster scheduler.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from yolo_loss.config import ConfigError, load_config

STUDY_KEYS = {"base", "out", "combine", "baseline", "include", "seeds", "overrides", "axes"}
COMBINE_MODES = ("grid", "one_at_a_time")
REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "train.py"

# Files of a run folder.
RUN_INFO = "run.json"  # the variant, seed and overrides, written when the run is first started
STUDY_INFO = "study.json"  # in the study folder: the expansion, so report.py needs nothing else
FINISHED = "metrics.json"
FAILED = "failed.json"
CHECKPOINT = "last.pt"
LOG = "train.log"


# train.py's status when Ctrl-C / SIGTERM stopped it after saving last.pt (130), or the process was killed by a
# signal outright (negative): the run is interrupted, not failed.
INTERRUPTED_STATUSES = {130, -2, -9, -15}
# What train.py prints after saving last.pt on a signal. torchrun passes a signal on to its processes but exits 1
# itself, whatever they did: this line in the run's log tells an interrupted torchrun run from a failed one.
STOPPED_LINE = "stopped at step"


class StudyError(ValueError):
    """A study file that cannot be expanded; the message names the file, the variant and the key."""


@dataclass(frozen=True)
class Variant:
    """One combination of axis values: ``fields`` maps axis -> value name, ``overrides`` the dotted ``key=value``s."""

    fields: tuple[tuple[str, str], ...]
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return ",".join(f"{axis}={value}" for axis, value in self.fields)


@dataclass(frozen=True)
class Run:
    variant: Variant
    seed: int
    folder: Path
    overrides: tuple[str, ...]  # the study's, the variant's, then train.seed

    @property
    def name(self) -> str:
        return f"{self.variant.name}/seed={self.seed}"

    def state(self) -> str:
        """``finished``, ``failed``, ``interrupted`` (a checkpoint to resume) or ``new``."""
        if (self.folder / FINISHED).is_file():
            return "finished"
        if (self.folder / FAILED).is_file():
            return "failed"
        if (self.folder / CHECKPOINT).is_file():
            return "interrupted"
        return "new"


@dataclass
class Study:
    path: Path
    base: Path
    out: Path
    combine: str
    seeds: list[int]
    axes: dict[str, dict[str, dict[str, Any]]]
    baseline: dict[str, str] = field(default_factory=dict)
    include: list[dict[str, str]] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline_name(self) -> str | None:
        if not self.baseline:
            return None
        return ",".join(f"{axis}={self.baseline[axis]}" for axis in self.axes)

    def variants(self) -> list[Variant]:
        names = {axis: list(values) for axis, values in self.axes.items()}
        if self.combine == "grid":
            combos = [dict(zip(names, values)) for values in itertools.product(*names.values())]
        else:
            combos = [dict(self.baseline)]
            for axis, values in names.items():
                combos += [{**self.baseline, axis: value} for value in values if value != self.baseline[axis]]
        combos += [combo for combo in self.include if combo not in combos]
        return [Variant(tuple(combo.items()),
                        tuple(itertools.chain.from_iterable(
                            dotted(self.axes[axis][value]) for axis, value in combo.items())))
                for combo in combos]

    def runs(self, only: list[str] | None = None) -> list[Run]:
        """Every variant x seed, or those of the variants named in ``only``.

        Raises:
            ValueError: ``only`` names a variant the study does not have.
        """
        variants = self.variants()
        if only:
            unknown = sorted(set(only) - {variant.name for variant in variants})
            if unknown:
                raise ValueError(f"no variant {', '.join(unknown)} in {self.path.name}; its variants: "
                                 + ", ".join(variant.name for variant in variants))
            variants = [variant for variant in variants if variant.name in only]
        common = tuple(dotted(self.overrides))
        return [Run(variant, seed, self.out / variant.name / f"seed={seed}",
                    common + variant.overrides + (f"train.seed={seed}",))
                for variant in variants for seed in self.seeds]


def dotted(overrides: dict[str, Any]) -> list[str]:
    """``{"loss.xy": "mse", "model.anchors": [[1, 2], ...]}`` -> ``["loss.xy=mse", "model.anchors=[[1, 2], ...]"]``
    (values written as flow YAML, which is how ``--set`` parses them back)."""
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"
            for key, value in overrides.items()]


def load_study(path: str | Path, *, check_configs: bool = True) -> Study:
    """Read and check a study file; with ``check_configs`` build every run's config (a bad one is an error).

    Raises:
        StudyError: naming the file, and the variant and key where there is one.
    """
    path = Path(path).resolve()
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise StudyError(f"{path}: cannot read the study file: {err}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: a study file is a mapping with the keys {', '.join(sorted(STUDY_KEYS))}")
    unknown = set(raw) - STUDY_KEYS
    if unknown:
        raise StudyError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(STUDY_KEYS))}")
    for key in ("base", "out", "axes", "seeds"):
        if key not in raw:
            raise StudyError(f"{path}: '{key}' is missing")
    combine = raw.get("combine", "grid")
    if combine not in COMBINE_MODES:
        raise StudyError(f"{path}: combine: {combine!r} is not one of {', '.join(COMBINE_MODES)}")
    seeds = raw["seeds"]
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise StudyError(f"{path}: seeds: expected a list of distinct integers, got {seeds!r}")
    axes = raw["axes"]
    if not isinstance(axes, dict) or not axes:
        raise StudyError(f"{path}: axes: expected a mapping of axis -> {{variant: {{dotted.key: value}}}}")
    for axis, values in axes.items():
        if not isinstance(values, dict) or not values:
            raise StudyError(f"{path}: axes.{axis}: expected a mapping of variant name -> overrides")
        for value, overrides in values.items():
            if overrides is None:
                values[value] = overrides = {}
            if not isinstance(overrides, dict):
                raise StudyError(f"{path}: axes.{axis}.{value}: expected a mapping of dotted keys to values")
            for name in (axis, str(value)):
                if not name or any(c in name for c in "=,/ "):
                    raise StudyError(f"{path}: axes.{axis}.{value}: axis and variant names may not contain "
                                     "'=', ',', '/' or spaces (they name the run folders)")
    axes = {str(axis): {str(value): overrides for value, overrides in values.items()} for axis, values in axes.items()}
    baseline = {str(k): str(v) for k, v in (raw.get("baseline") or {}).items()}
    if combine == "one_at_a_time":
        if set(baseline) != set(axes):
            raise StudyError(f"{path}: baseline: one_at_a_time needs a value for every axis "
                             f"({', '.join(axes)}), got {', '.join(baseline) or 'none'}")
        for axis, value in baseline.items():
            if value not in axes[axis]:
                raise StudyError(f"{path}: baseline.{axis}: {value!r} is not one of {', '.join(axes[axis])}")
    elif baseline:
        for axis, value in baseline.items():
            if axis not in axes or value not in axes[axis]:
                raise StudyError(f"{path}: baseline.{axis}: {value!r} is not a variant of that axis")
    include = raw.get("include") or []
    if not isinstance(include, list) or not all(isinstance(combo, dict) for combo in include):
        raise StudyError(f"{path}: include: expected a list of {{axis: variant}} mappings")
    include = [{str(k): str(v) for k, v in combo.items()} for combo in include]
    for combo in include:
        if set(combo) != set(axes) or any(value not in axes[axis] for axis, value in combo.items()):
            raise StudyError(f"{path}: include: {combo} must name one variant of every axis ({', '.join(axes)})")
    include = [{axis: combo[axis] for axis in axes} for combo in include]  # in axis order
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise StudyError(f"{path}: overrides: expected a mapping of dotted keys to values")
    study = Study(path=path, base=(path.parent / raw["base"]).resolve(), out=(path.parent / raw["out"]).resolve(),
                  combine=combine, seeds=list(seeds), axes=axes, baseline=baseline, include=include,
                  overrides=overrides)
    if not study.base.is_file():
        raise StudyError(f"{path}: base: {study.base} does not exist")
    if check_configs:
        for variant in study.variants():
            try:
                load_config(study.base, tuple(dotted(overrides)) + variant.overrides)
            except ConfigError as err:
                raise StudyError(f"{path}: variant {variant.name}: {err}") from None
    return study


def train_command(study: Study, run: Run, *, python: str = sys.executable, nproc_per_run: int = 1) -> list[str]:
    """The ``train.py`` command line of a run: a fresh start in its folder, or ``--resume`` from its checkpoint.

    With ``nproc_per_run`` > 1, ``train.py`` under ``python -m torch.distributed.run --standalone
    --nproc_per_node=N`` (torchrun on one node, with a free port of its own, so runs side by side do not collide;
    for several nodes a scheduler replaces ``--standalone`` by its rendezvous options).
    """
    start = (["--resume", str(run.folder / CHECKPOINT)] if run.state() == "interrupted"
             else ["--run-dir", str(run.folder)])
    launcher = [python] if nproc_per_run == 1 else [python, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc_per_run}"]
    return [*launcher, str(TRAIN_SCRIPT), "--config", str(study.base), *start, "--set", *run.overrides]


def describe_command(command: list[str]) -> str:
    return shlex.join(command)


def write_study_info(study: Study) -> None:
    """``study.json`` in the study folder: what :mod:`scripts.report` needs besides the run folders."""
    study.out.mkdir(parents=True, exist_ok=True)
    info = {"study_file": str(study.path), "base": str(study.base), "combine": study.combine, "seeds": study.seeds,
            "axes": list(study.axes), "baseline": study.baseline_name,
            "variants": [variant.name for variant in study.variants()]}
    (study.out / STUDY_INFO).write_text(json.dumps(info, indent=2))


def write_run_info(study: Study, run: Run, command: list[str]) -> None:
    info = {"variant": run.variant.name, "fields": dict(run.variant.fields), "seed": run.seed,
            "overrides": list(run.overrides), "command": describe_command(command), "study": str(study.path)}
    (run.folder / RUN_INFO).write_text(json.dumps(info, indent=2))


def record_failure(run: Run, returncode: int, log_tail: list[str]) -> dict[str, Any]:
    """Write ``failed.json``: the exit status, the error line (``error: ...`` of our entry points, else the last
    line) and the log tail."""
    errors = [line for line in log_tail if line.startswith("error:") or "Error" in line]
    failure = {"returncode": returncode, "error": (errors or log_tail or ["(no output)"])[-1],
               "log_tail": log_tail}
    (run.folder / FAILED).write_text(json.dumps(failure, indent=2))
    return failure


def stopped_by_signal(run: Run) -> bool:
    """Whether the last invocation in the run's log says that train.py stopped on a signal and saved last.pt."""
    log = (run.folder / LOG).read_text(errors="replace")
    return STOPPED_LINE in log[log.rfind("\n$ ") + 1:]  # each invocation starts with a '$ command' line


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
    status: str  # finished, failed or interrupted
    seconds: float
    detail: str  # the AP50 of a finished run, the error of a failed one


def run_study(study: Study, *, jobs: int = 1, devices: list[str] | None = None, nproc_per_run: int = 1,
              only: list[str] | None = None, python: str = sys.executable, echo=print) -> list[Outcome]:
    """Run every unfinished run of ``study`` (resuming interrupted ones, restarting failed ones after setting their
    folder aside), ``jobs`` at a time, each of ``nproc_per_run`` processes (torchrun when more than one) with
    ``cpu_count // (jobs * nproc_per_run)`` threads each, or with ``nproc_per_run`` devices of ``devices`` per run.
    A failed run is recorded in its folder and does not stop the others. ``only``: run just these variants (by
    name). Returns what this call ran.

    Raises:
        ValueError: ``devices`` cannot be shared out ``nproc_per_run`` to a run, or ``only`` names a variant the
            study does not have.
    """
    if nproc_per_run < 1:
        raise ValueError(f"nproc_per_run must be at least 1, got {nproc_per_run}")
    slots = None  # the CUDA_VISIBLE_DEVICES of each run running at once
    if devices:
        if len(devices) % nproc_per_run:
            raise ValueError(f"{len(devices)} devices cannot be shared out {nproc_per_run} to a run")
        slots = [",".join(devices[i:i + nproc_per_run]) for i in range(0, len(devices), nproc_per_run)]
    write_study_info(study)
    runs = study.runs(only)
    todo = [run for run in runs if run.state() != "finished"]
    jobs = max(1, min(jobs, len(slots) if slots else jobs, len(todo) or 1))
    threads = str(max(1, (os.cpu_count() or 1) // (jobs * nproc_per_run)))
    free_devices: queue.Queue[str | None] = queue.Queue()
    for device in (slots or [None] * jobs):
        free_devices.put(device)
    lock = threading.Lock()
    counts = {"done": len(runs) - len(todo), "running": 0, "failed": 0}
    durations: list[float] = []
    started = time.monotonic()
    processes = f"{nproc_per_run} processes of {threads} threads" if nproc_per_run > 1 else f"{threads} threads"
    echo(f"study {study.path.name}: {len(runs)} runs, {counts['done']} finished already, {len(todo)} to run, "
         f"{jobs} at a time ({processes} each{', devices ' + ' '.join(slots) if slots else ''}); "
         f"folder {study.out}")

    def progress(line: str) -> None:
        left = len(runs) - counts["done"] - counts["failed"]
        eta = (sum(durations) / len(durations) * left / jobs / 60) if durations else float("nan")
        eta_text = f"~{eta:.0f} min left" if durations else "time left unknown yet"
        echo(f"[{counts['done']}/{len(runs)} done, {counts['running']} running, {counts['failed']} failed, "
             f"{eta_text}] {line}")

    def execute(run: Run) -> Outcome:
        state = run.state()
        if state == "failed":
            set_aside(run.folder, "failed")
            state = "new"
        elif state == "new" and run.folder.exists() and any(run.folder.iterdir()):
            set_aside(run.folder, "incomplete")  # killed before its first checkpoint
        run.folder.mkdir(parents=True, exist_ok=True)
        command = train_command(study, run, python=python, nproc_per_run=nproc_per_run)
        write_run_info(study, run, command)
        device = free_devices.get()
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        with lock:
            counts["running"] += 1
            progress(f"{run.name}: {'resuming' if state == 'interrupted' else 'starting'}")
        tick = time.monotonic()
        try:
            with (run.folder / LOG).open("a") as log:
                log.write(f"$ {describe_command(command)}\n")
                log.flush()
                returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=REPO).returncode
        finally:
            free_devices.put(device)
        seconds = time.monotonic() - tick
        if returncode == 0 and run.state() == "finished":
            metrics = json.loads((run.folder / FINISHED).read_text())["metrics"]
            outcome = Outcome(run, "finished", seconds, f"AP50 {metrics.get('AP50', float('nan')):.3f}")
        elif run.state() == "interrupted" and (returncode in INTERRUPTED_STATUSES or stopped_by_signal(run)):
            outcome = Outcome(run, "interrupted", seconds, "stopped by a signal; the next invocation resumes it")
        else:
            tail = (run.folder / LOG).read_text(errors="replace").splitlines()[-30:]
            outcome = Outcome(run, "failed", seconds, record_failure(run, returncode, tail)["error"])
        with lock:
            counts["running"] -= 1
            if outcome.status != "interrupted":
                counts["done" if outcome.status == "finished" else "failed"] += 1
            durations.append(seconds)
            progress(f"{run.name}: {outcome.status} in {seconds / 60:.1f} min ({outcome.detail})")
        return outcome

    with ThreadPoolExecutor(jobs) as pool:
        outcomes = list(pool.map(execute, todo))
    echo(f"study {study.path.name}: {counts['done']}/{len(runs)} finished, {counts['failed']} failed, "
         f"{(time.monotonic() - started) / 60:.1f} min")
    return outcomes
