"""The run folder, a typed contract: what ``train.py`` writes in a run's folder and what the study runner, the
reports and the findings read back. Nothing else names these files or parses what a run printed.

A run folder holds, besides checkpoints (``last.pt``, ``best.pt``) and the TensorBoard event files:

- ``config.yaml`` and ``command.txt``: the resolved config and the command line (:mod:`yolo_loss.train.runtime`;
  :func:`recorded_processor` reads the processors back);
- ``status.json`` (:class:`RunStatus`): where the run is, rewritten by ``train.py`` as it goes: ``running``,
  ``finished``, ``stopped`` at a step (a signal: resume from ``last.pt``) or ``failed`` with the reason and the
  exit status;
- ``metrics.json`` (:class:`RunMetrics`): what the run measured, written once, at the very end; its presence
  means the run finished;
- in a study, ``run.json`` (the variant, seed and overrides), ``train.log`` and, for a run the runner saw fail,
  ``failed.json`` (:mod:`yolo_loss.studies.runner`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG = "config.yaml"
COMMAND = "command.txt"
RUN_START_FILES = (CONFIG, COMMAND)  # what train.py writes before it trains (yolo_loss.train.runtime)
STATUS = "status.json"
METRICS = "metrics.json"
CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"

EXIT_INTERRUPTED = 130  # train.py's exit status when a signal stopped it (the shell's for Ctrl-C: 128 + SIGINT)
FLOAT32 = "float32"  # the precision of a run whose metrics.json does not record one (written before it was)


class RunFolderError(ValueError):
    """A run folder's file that cannot be read as the contract says; the message names the file."""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{path}: cannot be read ({error})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: not a JSON object")
    return data


@dataclass
class RunMetrics:
    """``metrics.json``: the final evaluation and how the run got there.

    Attributes:
        metrics: the last evaluation (COCO AP, AP50, ..., VOC AP50); steps: optimiser steps taken.
        final_terms: the mean weighted loss terms of the last epoch trained, and their ``total``.
        train_seconds, images_per_sec: training time without evaluation, summed over resumes, and its speed.
        nonfinite_skipped: steps skipped for a non-finite loss; world_size: processes that trained it.
        start: the pretrained backbone's fingerprint (empty for a model trained from scratch).
        precision: ``float32``, ``bfloat16`` or ``float16`` (``train.amp``); threads: CPU threads per process
            (CPU rounding depends on it: a run is reproduced with as many).
        evaluations: every evaluation after a step, ``{"step", "epoch" (fractional), AP, AP50, ...}``: the
            validation curve (the study report's convergence check reads it).
    """

    metrics: dict[str, float]
    steps: int
    final_terms: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    images_per_sec: float = 0.0
    nonfinite_skipped: int = 0
    world_size: int = 1
    start: dict[str, Any] = field(default_factory=dict)
    precision: str = FLOAT32
    threads: int | None = None
    evaluations: list[dict[str, float]] = field(default_factory=list)

    def write(self, run_dir: Path) -> None:
        _write_json(Path(run_dir) / METRICS, dataclasses.asdict(self))

    @classmethod
    def read(cls, run_dir: Path) -> RunMetrics:
        """Read a run's ``metrics.json``; runs written before a field existed get its default (``precision``
        float32, ``threads`` None: unrecorded).

        Raises:
            RunFolderError: the file is missing, unreadable, or lacks ``metrics`` or ``steps``.
        """
        path = Path(run_dir) / METRICS
        data = _read_json(path)
        known = {f.name for f in dataclasses.fields(cls)}
        missing = sorted({"metrics", "steps"} - set(data))
        if missing:
            raise RunFolderError(f"{path}: no {', '.join(missing)}")
        values = {key: value for key, value in data.items() if key in known}
        values["precision"] = values.get("precision") or FLOAT32
        return cls(**values)


def finished(run_dir: Path) -> bool:
    """Whether the run finished: its ``metrics.json`` is there."""
    return (Path(run_dir) / METRICS).is_file()


RUNNING, FINISHED, STOPPED, FAILED = "running", "finished", "stopped", "failed"
STATES = (RUNNING, FINISHED, STOPPED, FAILED)


@dataclass(frozen=True)
class RunStatus:
    """``status.json``: where a run is, as ``train.py`` last wrote it.

    Attributes:
        state: ``running``; ``finished``; ``stopped`` (a signal: ``last.pt`` holds step ``step``, resume from it);
            ``failed`` (``reason`` says why, ``exit_status`` is ``train.py``'s).
        step: optimiser steps taken when it was written.
    """

    state: str
    step: int = 0
    reason: str = ""
    exit_status: int | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"run status {self.state!r}: one of {', '.join(STATES)}")

    def describe(self, run_dir: Path | None = None) -> str:
        """One line for a person: what ``train.py`` prints when it stops, and what ``ablate.py`` reports."""
        if self.state == STOPPED:
            where = f" {Path(run_dir) / CHECKPOINT}" if run_dir is not None else " last.pt"
            return f"stopped at step {self.step}; resume with --resume{where}"
        if self.state == FAILED:
            status = f" (exit status {self.exit_status})" if self.exit_status is not None else ""
            return f"failed at step {self.step}{status}: {self.reason}"
        return f"{self.state} at step {self.step}"

    def write(self, run_dir: Path) -> None:
        _write_json(Path(run_dir) / STATUS, dataclasses.asdict(self))

    @classmethod
    def read(cls, run_dir: Path) -> RunStatus | None:
        """The run's status, or None where ``train.py`` never wrote one (a run that has not started, or one
        trained before the status file existed).

        Raises:
            RunFolderError: the file is there but is not a status record.
        """
        path = Path(run_dir) / STATUS
        if not path.is_file():
            return None
        data = _read_json(path)
        try:
            return cls(**data)
        except (TypeError, ValueError) as error:
            raise RunFolderError(f"{path}: not a run status ({error})") from None


def failure_status(error: BaseException, run_dir: Path) -> RunStatus:
    """The ``failed`` status for the exception that ends ``train.py``: its exit status, the error's first line
    (the original error where an entry point turned it into ``SystemExit``) and the step of the last checkpoint
    (the status that checkpoint wrote)."""
    cause = error.__context__ if isinstance(error, SystemExit) and error.__context__ is not None else error
    if isinstance(error, SystemExit):
        exit_status = error.code if isinstance(error.code, int) else 1
    else:
        exit_status = EXIT_INTERRUPTED if isinstance(error, KeyboardInterrupt) else 1
    reason = f"exit status {exit_status}" if cause is error and isinstance(error, SystemExit) else (
        f"{type(cause).__name__}: {cause}".splitlines()[0])
    try:
        previous = RunStatus.read(run_dir)
    except RunFolderError:
        previous = None
    return RunStatus(FAILED, previous.step if previous is not None else 0, reason, exit_status)


def recorded_processor(run_dir: Path) -> str:
    """The processors that trained in ``run_dir``, as ``write_config_and_command`` (:mod:`yolo_loss.train.runtime`)
    recorded them in ``command.txt``: the ``describe_cpu`` part of each invocation's ``# host:`` line. One, or
    several joined by ``" + "`` in the order they first trained it (a run resumed on another machine), so that such
    a run differs from one trained on either alone. ``""`` when the file is absent, the run trained on CUDA, or it
    was written before the processor was recorded; invocations that recorded none are left out."""
    try:
        lines = (Path(run_dir) / COMMAND).read_text().splitlines()
    except OSError:
        return ""
    marker = ", device: cpu: "
    processors = [line.split(marker, 1)[1].rsplit(" (", 1)[0]
                  for line in lines if line.startswith("# host: ") and marker in line]
    return " + ".join(dict.fromkeys(processors))
