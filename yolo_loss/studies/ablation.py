"""Ablation studies: a YAML file of axes and seeds expanded into runs, each a ``train.py`` process in its own folder.

A study file (``configs/ablations/*.yaml``)::

    base: ../shapes_nano.yaml          # the config every run starts from (relative to this file)
    out: ../../runs/ablations/loss_axes  # the study folder (relative to this file)
    combine: one_at_a_time             # or grid
    baseline: {xy: bce, box: mse, cls: bce}   # one_at_a_time: the variant every other one differs from
    include: [{xy: mse, cls: focal}]   # optional: more combinations, after the ones ``combine`` gives
    min_effect: 0.01                   # optional: the smallest difference of interest (the equivalence margin)
    labels: {"xy=mse,box=mse,cls=bce": "paper's SSE on x, y"}  # optional: names for the plots
    seeds: [0, 1, 2]                   # train.seed of each repetition, or {auto: [0, 1, 2], cap: 8} (below)
    overrides: {train.epochs: 6}       # dotted overrides applied to every run, before the variant's
    axes:                              # axis -> variant name -> dotted overrides (applied in axis order)
      xy: {bce: {loss.xy: bce}, mse: {loss.xy: mse}}
      cls: {bce: {}, focal: {loss.cls: focal}}

``grid`` takes every combination of the axes' variants; ``one_at_a_time`` takes the baseline and, for each axis,
every other value of that axis with the rest at the baseline; ``include`` adds combinations of its own. A run is
named after all its axis values and its seed (``xy=bce,cls=focal/seed=1``) and lives in that folder below ``out``.
``reuse: {variant: {study: other.yaml, variant: its name}}`` lists another study's runs for a variant whose config
is the same (checked), so they are trained once and reported by both. Every run's config is built and checked when
the study is expanded, so a bad variant stops the study before anything trains, with the variant and key named.

``seeds: {auto: [0, 1, 2, 3, 4], cap: 10, metric: AP}`` (:class:`AutoSeeds`) trains the listed seeds, then adds
seeds in rounds: one more (the next integer) for every variant whose comparison with the baseline in ``metric``
is not yet decided by the verdict rule of :mod:`yolo_loss.studies.stats` (better, worse or equivalent within
``min_effect``, over the study's family, at least 5 seeds), with the baseline at that seed too, until each is decided
or has ``cap`` seeds. The seeds added are read back from
the run folders (a run that started has ``run.json``), so a stopped study resumes its round and plans the same
next one from the same finished results.

Run state is read from the folder alone, through :mod:`yolo_loss.train.run_folder`: ``metrics.json`` (written by
``train.py`` at the very end) means finished, ``failed.json`` (written by the runner) failed, ``last.pt`` without
either interrupted (resumed from it), an empty or missing folder new; ``train.py``'s ``status.json`` tells a run
stopped by a signal from one that failed. A launcher claims a run before it trains it (``<run folder>.claim``,
:mod:`yolo_loss.studies.run_locks`), so several launchers, here, on other machines or as cluster jobs
(:func:`submit_study`), share a study and train each run once.

``tune: {seeds: [100, 101], metric: AP, select: {data.val_sets: [BCCD/val]}, grid: {...}}`` (:class:`Tune`)
compares each variant at its own tuned setting. ``grid`` maps ``"*"`` (every variant) or a variant's name (its own
list, instead of ``"*"``'s; ``{}`` for none) to candidates, each a name and its dotted overrides. The search trains,
for each tuned variant, each candidate at each tuning seed (disjoint from the evaluation seeds) in
``<variant>/tune=<candidate>/seed=<s>``, with the study's, the variant's, ``select``'s (the selection split, never the
reporting one) and the candidate's overrides. The candidate with the best mean ``metric`` over the tuning seeds is
chosen (ties: the first listed; first or last of its list: a warning, the best may lie beyond the grid), and only
then are the variant's evaluation runs (``<variant>/seed=<s>``) planned, with the variant's and the chosen
candidate's overrides and never ``select``'s. The choice is a function of the finished search runs, so a stopped
study resumes to the same choice; ``study.json`` and each evaluation run's ``run.json`` record it. A variant
without candidates is evaluated at its own settings at once.

A run may be several processes: with ``nproc_per_run`` > 1 each run is ``torchrun`` (``python -m
torch.distributed.run --standalone``) of ``train.py``, data-parallel over that many processes (docs/distributed.md),
and ``--dry-run`` prints those commands for a cluster scheduler.
"""

from __future__ import annotations

import dataclasses
import itertools
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from yolo_loss.studies import run_locks
from yolo_loss.train import run_folder
from yolo_loss.config.load import ConfigError, config_to_dict, load_config
from yolo_loss.studies.stats import DEFAULT_MIN_EFFECT, METRICS, Difference, judge_family

STUDY_KEYS = {"base", "out", "combine", "baseline", "include", "seeds", "overrides", "axes", "reuse", "min_effect",
              "labels", "tune"}
TUNE_KEYS = ("seeds", "metric", "select", "grid")
COMBINE_MODES = ("grid", "one_at_a_time")
REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO / "train.py"

# Files of a run folder.
RUN_INFO = "run.json"  # the variant, seed and overrides, written when the run is first started
STUDY_INFO = "study.json"  # in the study folder: the expansion, so report.py needs nothing else
FAILED = "failed.json"
LOG = "train.log"


# train.py's status when Ctrl-C / SIGTERM stopped it after saving last.pt (130), or the process was killed by a
# signal outright (negative): the run is interrupted, not failed. torchrun passes a signal on to its processes but
# exits 1 itself, whatever they did: the run's status.json tells an interrupted torchrun run from a failed one.
INTERRUPTED_STATUSES = {130, -2, -9, -15}


class StudyError(ValueError):
    """A study file that cannot be expanded; the message names the file, the variant and the key."""


@dataclass(frozen=True)
class AutoSeeds:
    """``seeds: {auto: [...], cap: N, metric: M}``: add seeds to unresolved variants up to ``cap`` seeds each."""

    cap: int
    metric: str = "AP"


@dataclass(frozen=True)
class Tune:
    """``tune:``: each variant's candidates, trained at ``seeds`` with the ``select`` overrides (the selection
    split), the best mean ``metric`` chosen. ``grid`` holds the variants that have candidates, in the study file's
    order of candidates: variant name -> candidate name -> its overrides."""

    seeds: tuple[int, ...]
    metric: str
    select: dict[str, Any]
    grid: dict[str, dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class Choice:
    """A tuned variant's search: ``values[candidate][k]`` is the ``metric`` of the candidate's run at the k-th
    tuning seed (None until it finished); ``chosen`` the best mean, ties to the first listed, "" until every search
    run of the variant finished."""

    variant: str
    metric: str
    seeds: tuple[int, ...]
    values: dict[str, list[float | None]]
    chosen: str

    def mean(self, candidate: str) -> float | None:
        values = self.values[candidate]
        return None if None in values else sum(values) / len(values)

    @property
    def on_edge(self) -> bool:
        """Whether the choice is the first or the last of two or more candidates: the best may lie beyond them."""
        names = list(self.values)
        return bool(self.chosen) and len(names) >= 2 and self.chosen in (names[0], names[-1])

    def describe(self) -> str:
        means = ", ".join(f"{name} {mean:.4f}" if (mean := self.mean(name)) is not None else f"{name} -"
                          for name in self.values)
        edge = (f"; warning: {self.chosen} is on the edge of the grid, the best may lie beyond it"
                if self.on_edge else "")
        return f"{self.variant}: chose {self.chosen} (mean {self.metric} over seeds {list(self.seeds)}: {means}){edge}"


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
    """One training run: a variant and a seed, in its folder, from its study's base config and overrides.

    A run a study reuses from another (``reuse``) is the other study's run: its variant, folder, base and study
    file are the owner's, and ``listed_as`` is the variant name it stands for in the reusing study.
    """

    variant: Variant
    seed: int
    folder: Path
    overrides: tuple[str, ...]  # the study's, the variant's, then train.seed
    base: Path
    study_file: Path
    listed_as: str = ""
    varied: tuple[str, ...] = ()  # the dotted keys the owner study's variants set (shown in TensorBoard's HParams)
    # tune: a search run's candidate (``search``), or an evaluation run's chosen candidate, and its overrides
    candidate: str = ""
    candidate_overrides: tuple[str, ...] = ()
    search: bool = False

    @property
    def label(self) -> str:
        """``variant/seed=N``, or a search run's ``variant/tune=candidate/seed=N``: its folder below the study's."""
        tune = f"tune={self.candidate}/" if self.search else ""
        return f"{self.variant.name}/{tune}seed={self.seed}"

    @property
    def name(self) -> str:
        shared = f" (shared with {self.study_file.stem})" if self.listed_as else ""
        return f"{self.label}{shared}"

    def state(self) -> str:
        """``finished``, ``failed``, ``interrupted`` (a checkpoint to resume) or ``new``."""
        if run_folder.finished(self.folder):
            return "finished"
        if (self.folder / FAILED).is_file():
            return "failed"
        if (self.folder / run_folder.CHECKPOINT).is_file():
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
    # variant name -> (the study that owns identical runs, its variant's name): those runs are not trained again
    reuse: dict[str, tuple["Study", str]] = field(default_factory=dict)
    auto: AutoSeeds | None = None  # seeds: {auto: ..., cap: ...}; ``seeds`` is then the first round's
    min_effect: float = DEFAULT_MIN_EFFECT  # the smallest difference of interest: the equivalence margin
    labels: dict[str, str] = field(default_factory=dict)  # variant name -> how the papers name it (the plots)
    tune: Tune | None = None  # tune: each variant evaluated at the candidate its search chose

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

    def _selected(self, only: list[str] | None) -> list[Variant]:
        variants = self.variants()
        if only:
            unknown = sorted(set(only) - {variant.name for variant in variants})
            if unknown:
                raise ValueError(f"no variant {', '.join(unknown)} in {self.path.name}; its variants: "
                                 + ", ".join(variant.name for variant in variants))
            variants = [variant for variant in variants if variant.name in only]
        return variants

    def runs(self, only: list[str] | None = None) -> list[Run]:
        """Every variant x its seeds (:meth:`variant_seeds`), or those of the variants named in ``only``; with
        ``tune``, only the evaluation runs that can be planned: a tuned variant's once its search has chosen
        (:meth:`waiting` names the others, :meth:`search_runs` lists the search).

        Raises:
            ValueError: ``only`` names a variant the study does not have.
        """
        variants = self._selected(only)
        seeds = self.variant_seeds()
        waiting = set(self.waiting())
        return [self.run(variant, seed) for variant in variants if variant.name not in waiting
                for seed in seeds[variant.name]]

    def run(self, variant: Variant, seed: int) -> Run:
        """The run of ``variant`` at ``seed``: in this study's folder, or the owner's run for a reused variant;
        a tuned variant's with its chosen candidate's overrides.

        Raises:
            ValueError: a tuned variant whose search has not chosen yet.
        """
        if variant.name in self.reuse:
            owner, owner_variant = self.reuse[variant.name]
            (theirs,) = [other for other in owner.variants() if other.name == owner_variant]
            return dataclasses.replace(owner.run(theirs, seed), listed_as=variant.name)
        candidate, chosen = "", ()
        choice = self.choice(variant)
        if choice is not None:
            if not choice.chosen:
                raise ValueError(f"{self.path.name}: {variant.name}'s search has not chosen a candidate yet")
            candidate, chosen = choice.chosen, tuple(dotted(self.tune.grid[variant.name][choice.chosen]))
        return Run(variant, seed, self.out / variant.name / f"seed={seed}",
                   tuple(dotted(self.overrides)) + variant.overrides + chosen + (f"train.seed={seed}",), self.base,
                   self.path, varied=self.varied_keys(), candidate=candidate, candidate_overrides=chosen)

    def search_runs(self, only: list[str] | None = None) -> list[Run]:
        """``tune``'s search: each tuned variant's candidates at each tuning seed, tuning seed by tuning seed
        (then variants and candidates in study order), in ``<variant>/tune=<candidate>/seed=<s>``, with the study's,
        the variant's, ``select``'s and the candidate's overrides. Empty without ``tune``."""
        if self.tune is None:
            return []
        runs = []
        for seed in self.tune.seeds:
            for variant in self._selected(only):
                for candidate, overrides in self.tune.grid.get(variant.name, {}).items():
                    own = tuple(dotted(overrides))
                    runs.append(Run(variant, seed, self.out / variant.name / f"tune={candidate}" / f"seed={seed}",
                                    tuple(dotted(self.overrides)) + variant.overrides + tuple(dotted(self.tune.select))
                                    + own + (f"train.seed={seed}",), self.base, self.path, varied=self.varied_keys(),
                                    candidate=candidate, candidate_overrides=own, search=True))
        return runs

    def choice(self, variant: Variant) -> Choice | None:
        """The state of ``variant``'s search, read from its runs' ``metrics.json``; None for an untuned variant."""
        if self.tune is None or variant.name not in self.tune.grid:
            return None
        by_candidate: dict[str, list[float | None]] = {}
        for run in self.search_runs([variant.name]):
            by_candidate.setdefault(run.candidate, [None] * len(self.tune.seeds))[
                self.tune.seeds.index(run.seed)] = _finished_metric(run, self.tune.metric)
        choice = Choice(variant.name, self.tune.metric, self.tune.seeds, by_candidate, "")
        best, best_mean = "", None
        for candidate in by_candidate:
            mean = choice.mean(candidate)
            if mean is None:
                return choice
            if best_mean is None or mean > best_mean:  # strictly better: a tie keeps the first listed
                best, best_mean = candidate, mean
        return dataclasses.replace(choice, chosen=best)

    def choices(self) -> list[Choice]:
        """The search of every tuned variant, in study order."""
        return [choice for variant in self.variants() if (choice := self.choice(variant)) is not None]

    def waiting(self) -> list[str]:
        """The tuned variants whose evaluation runs wait for their search to choose."""
        return [choice.variant for choice in self.choices() if not choice.chosen]

    def seed_pool(self) -> list[int]:
        """The seeds a run may have, in training order: the listed ones, then (auto seeds) the next integers after
        the largest up to the cap."""
        if self.auto is None:
            return list(self.seeds)
        extra = range(max(self.seeds) + 1, max(self.seeds) + 1 + self.auto.cap - len(self.seeds))
        return [*self.seeds, *extra]

    def variant_seeds(self) -> dict[str, list[int]]:
        """Each variant's seeds: the listed ones and, with auto seeds, those added so far (the run started: its
        folder has ``run.json``); the baseline's are all that any variant has, as each is the other half of a
        pair."""
        variants = self.variants()
        seeds = {variant.name: list(self.seeds) for variant in variants}
        if self.auto is None:
            return seeds
        pool = self.seed_pool()
        for variant in variants:
            if variant.name != self.baseline_name:
                seeds[variant.name] += [seed for seed in pool[len(self.seeds):]
                                        if (self.run(variant, seed).folder / RUN_INFO).is_file()]
        seeds[self.baseline_name] = [seed for seed in pool if any(seed in own for own in seeds.values())]
        return seeds

    def varied_keys(self) -> tuple[str, ...]:
        """The dotted keys that some variant of the study (or a ``tune`` candidate) sets, in order of first
        appearance."""
        keys = [override.split("=", 1)[0] for variant in self.variants() for override in variant.overrides]
        if self.tune is not None:  # and the keys its candidates set
            keys += [key for candidates in self.tune.grid.values() for overrides in candidates.values()
                     for key in overrides]
        return tuple(dict.fromkeys(keys))

    def folders(self) -> dict[str, str]:
        """The folder of each reused variant relative to :attr:`out` (the others are ``out/<variant>``)."""
        return {listed: os.path.relpath(owner.out / name, self.out) for listed, (owner, name) in self.reuse.items()}


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
    seeds, auto = _seeds(path, raw["seeds"])
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
    min_effect = raw.get("min_effect", DEFAULT_MIN_EFFECT)
    if not isinstance(min_effect, (int, float)) or isinstance(min_effect, bool) or not 0 < min_effect < 1:
        raise StudyError(f"{path}: min_effect: expected the smallest difference of interest in the metric's units, "
                         f"a number between 0 and 1 (e.g. 0.01 AP), got {min_effect!r}")
    study = Study(path=path, base=(path.parent / raw["base"]).resolve(), out=(path.parent / raw["out"]).resolve(),
                  combine=combine, seeds=seeds, axes=axes, baseline=baseline, include=include,
                  overrides=overrides, auto=auto, min_effect=float(min_effect))
    study.labels = _labels(study, raw.get("labels") or {})
    if auto is not None and set(baseline) != set(axes):
        raise StudyError(f"{path}: seeds: auto adds seeds while a variant's difference from the baseline is "
                         f"unresolved: the study needs a baseline with a value for every axis ({', '.join(axes)})")
    if not study.base.is_file():
        raise StudyError(f"{path}: base: {study.base} does not exist")
    if check_configs:
        _check_configs(study)
    study.reuse = _reused_runs(study, raw.get("reuse") or {}, check_configs)
    if "tune" in raw:
        study.tune = _tune(study, raw["tune"], check_configs)
    return study


def _check_configs(study: Study) -> None:
    """Build the config of the study's ``overrides``, then of every variant: a bad key or value is a
    :class:`StudyError` naming the study file, the variant, the key and where in the study file it is set
    (``overrides`` or ``axes.<axis>.<value>``), not ``--set``, which is how the runs receive them."""
    shared = tuple(dotted(study.overrides))
    try:
        load_config(study.base, shared, override_sources=["overrides"] * len(shared))
    except ConfigError as err:
        raise StudyError(f"{study.path}: {err}") from None
    for variant in study.variants():
        sources = ["overrides"] * len(shared) + [f"axes.{axis}.{value}" for axis, value in variant.fields
                                                 for _ in study.axes[axis][value]]
        try:
            load_config(study.base, shared + variant.overrides, override_sources=sources)
        except ConfigError as err:
            raise StudyError(f"{study.path}: variant {variant.name}: {err}") from None


def _labels(study: Study, raw: Any) -> dict[str, str]:
    """The ``labels`` key: ``{variant name: label}``, how the papers name each variant, for the report's plots
    (a variant without one is named by its axis values that differ from the baseline)."""
    if not isinstance(raw, dict) or not all(isinstance(label, str) for label in raw.values()):
        raise StudyError(f"{study.path}: labels: expected a mapping of variant name -> label")
    names = [variant.name for variant in study.variants()]
    unknown = sorted(set(map(str, raw)) - set(names))
    if unknown:
        raise StudyError(f"{study.path}: labels.{unknown[0]}: not a variant of this study ({', '.join(names)})")
    return {str(name): label for name, label in raw.items()}


def _seeds(path: Path, raw: Any) -> tuple[list[int], AutoSeeds | None]:
    """The ``seeds`` key: a list of distinct integers, or ``{auto: [...], cap: N, metric: M}``."""
    auto = None
    if isinstance(raw, dict):
        unknown = set(raw) - {"auto", "cap", "metric"}
        if unknown or "auto" not in raw or "cap" not in raw:
            raise StudyError(f"{path}: seeds: expected a list of seeds or {{auto: [first seeds], cap: most seeds "
                             f"per variant, metric: {'|'.join(METRICS)} (default AP)}}, got {raw!r}")
        metric = raw.get("metric", "AP")
        if metric not in METRICS:
            raise StudyError(f"{path}: seeds.metric: {metric!r} is not one of {', '.join(METRICS)}")
        auto, raw = raw, raw["auto"]
    if (not isinstance(raw, list) or not raw or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw)
            or len(set(raw)) != len(raw)):
        where = "seeds.auto" if auto is not None else "seeds"
        raise StudyError(f"{path}: {where}: expected a list of distinct integers, got {raw!r}")
    if auto is None:
        return list(raw), None
    cap = auto["cap"]
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < max(len(raw), 2):
        raise StudyError(f"{path}: seeds.cap: expected an integer of at least the {len(raw)} first seeds (and 2), "
                         f"got {cap!r}")
    return list(raw), AutoSeeds(cap, auto.get("metric", "AP"))


def _reused_runs(study: Study, raw: Any, check_configs: bool) -> dict[str, tuple[Study, str]]:
    """The ``reuse`` key: ``{variant: {study: other.yaml, variant: its variant}}``, each checked to name a variant
    of both studies and, with ``check_configs``, the same resolved config for every seed (so the runs are the same
    runs). A seed the other study does not list is trained in its folder all the same, as its variant at that seed
    (its own report lists only its seeds)."""
    path = study.path
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: reuse: expected a mapping of variant -> {{study: file, variant: name}}")
    names = {variant.name: variant for variant in study.variants()}
    reuse = {}
    for listed, target in raw.items():
        where = f"{path}: reuse.{listed}"
        if listed not in names:
            raise StudyError(f"{where}: not a variant of this study ({', '.join(names)})")
        if not isinstance(target, dict) or set(target) != {"study", "variant"}:
            raise StudyError(f"{where}: expected {{study: <study file>, variant: <its variant>}}")
        owner = load_study(path.parent / str(target["study"]), check_configs=False)
        owned = {variant.name: variant for variant in owner.variants()}
        if str(target["variant"]) not in owned:
            raise StudyError(f"{where}: {owner.path.name} has no variant {target['variant']!r}")
        if owner.tune is not None and str(target["variant"]) in owner.tune.grid:
            raise StudyError(f"{where}: {owner.path.name} tunes {target['variant']} (its tune.grid): its runs are "
                             "at the setting its search chooses, not this study's")
        if check_configs:
            for seed in study.seeds:
                mine = config_to_dict(load_config(study.base, tuple(dotted(study.overrides))
                                                  + names[listed].overrides + (f"train.seed={seed}",)))
                (theirs,) = [variant for variant in owner.variants() if variant.name == str(target["variant"])]
                theirs_run = owner.run(theirs, seed)
                theirs = config_to_dict(load_config(theirs_run.base, theirs_run.overrides))
                if mine != theirs:
                    differ = sorted(key for key in _flatten(mine) if _flatten(mine)[key] != _flatten(theirs).get(key))
                    raise StudyError(f"{where}: its config differs from {owner.path.name}'s {target['variant']} "
                                     f"at {', '.join(differ[:5])}: the runs would not be the same")
        reuse[listed] = (owner, str(target["variant"]))
    return reuse


def _tune(study: Study, raw: Any, check_configs: bool) -> Tune:
    """The ``tune`` key (:class:`Tune`), checked: its keys, tuning seeds disjoint from the evaluation seeds, a known
    metric, ``select`` overrides that change the runs' config, a grid of candidates for variants of this study (not
    reused from another: those runs are the other study's), no candidate setting a ``select`` key; with
    ``check_configs``, every search run's and every candidate's evaluation config, errors named where the study
    file sets the key."""
    path = study.path
    if not isinstance(raw, dict) or set(raw) - set(TUNE_KEYS) or not {"seeds", "select", "grid"} <= set(raw):
        raise StudyError(f"{path}: tune: expected {{seeds: [tuning seeds], metric: {'|'.join(METRICS)} (default AP), "
                         "select: {dotted.key: value}, grid: {'*' or variant: {candidate: {dotted.key: value}}}}"
                         + (f"; unknown key(s) {', '.join(sorted(map(str, set(raw) - set(TUNE_KEYS))))}"
                            if isinstance(raw, dict) and set(raw) - set(TUNE_KEYS) else ""))
    if study.auto is not None:
        raise StudyError(f"{path}: tune: not with seeds: {{auto: ...}} (this version): list the evaluation seeds")
    seeds = raw["seeds"]
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise StudyError(f"{path}: tune.seeds: expected a list of distinct integers, got {seeds!r}")
    shared = sorted(set(seeds) & set(study.seed_pool()))
    if shared:
        raise StudyError(f"{path}: tune.seeds: seed(s) {', '.join(map(str, shared))} are evaluation seeds too: the "
                         "tuning seeds must be others, or the evaluation would reuse the selection's noise")
    metric = raw.get("metric", "AP")
    if metric not in METRICS:
        raise StudyError(f"{path}: tune.metric: {metric!r} is not one of {', '.join(METRICS)}")
    select = raw["select"]
    if not isinstance(select, dict) or not select:
        raise StudyError(f"{path}: tune.select: expected the dotted overrides that make the search runs evaluate on "
                         "the selection split (e.g. {data.val_sets: [BCCD/val]}), not the reporting one")
    grid = raw["grid"]
    names = [variant.name for variant in study.variants()]
    if not isinstance(grid, dict):
        raise StudyError(f"{path}: tune.grid: expected a mapping of '*' or variant -> {{candidate: overrides}}")
    listed: dict[str, dict[str, dict[str, Any]]] = {}  # grid key -> candidate -> overrides (None read as {})
    for key, candidates in grid.items():
        key = str(key)
        where = f"{path}: tune.grid.{key}"
        if key != "*" and key not in names:
            raise StudyError(f"{where}: not a variant of this study ('*' or one of {', '.join(names)})")
        if not isinstance(candidates, (dict, type(None))):
            raise StudyError(f"{where}: expected a mapping of candidate name -> dotted overrides")
        listed[key] = {str(candidate): overrides or {} for candidate, overrides in (candidates or {}).items()}
        for candidate, overrides in listed[key].items():
            if not isinstance(overrides, dict):
                raise StudyError(f"{where}.{candidate}: expected a mapping of dotted keys to values")
            if not str(candidate) or any(c in str(candidate) for c in "=,/ "):
                raise StudyError(f"{where}.{candidate}: candidate names may not contain '=', ',', '/' or spaces "
                                 "(they name the run folders)")
            clash = sorted(set(map(str, overrides)) & set(map(str, select)))
            if clash:
                raise StudyError(f"{where}.{candidate}: sets {', '.join(clash)}, a tune.select key: the search "
                                 "would not evaluate on the selection split")
    source_key = {name: name if name in listed else "*" for name in names}
    tuned = {name: listed[key] for name, key in source_key.items() if listed.get(key)}
    if not tuned:
        raise StudyError(f"{path}: tune.grid: no variant has a candidate")
    for name in tuned:
        if name in study.reuse:
            raise StudyError(f"{path}: tune.grid.{source_key[name]}: {name} is reused from "
                             f"{study.reuse[name][0].path.name} (reuse.{name}): a tuned variant's evaluation runs "
                             f"depend on its choice, so they cannot be another study's runs; give it {{}} in tune.grid")
    tune = Tune(tuple(seeds), metric, select, tuned)
    if check_configs:
        _check_tune_configs(study, tune, source_key)
    return tune


def _check_tune_configs(study: Study, tune: Tune, source_key: dict[str, str]) -> None:
    """Build each tuned variant's config with ``select`` alone (it must change something), then each candidate's
    search config and evaluation config."""
    shared = tuple(dotted(study.overrides))
    select = tuple(dotted(tune.select))
    for variant in study.variants():
        if variant.name not in tune.grid:
            continue
        own = ["overrides"] * len(shared) + [f"axes.{axis}.{value}" for axis, value in variant.fields
                                              for _ in study.axes[axis][value]]
        try:
            plain = load_config(study.base, shared + variant.overrides, override_sources=own)
            selecting = load_config(study.base, shared + variant.overrides + select,
                                    override_sources=own + ["tune.select"] * len(select))
        except ConfigError as err:
            raise StudyError(f"{study.path}: variant {variant.name}: {err}") from None
        if config_to_dict(plain) == config_to_dict(selecting):
            raise StudyError(f"{study.path}: tune.select: changes nothing in {variant.name}'s config: the search "
                             "would select on the split the study reports")
        for candidate, overrides in tune.grid[variant.name].items():
            mine = tuple(dotted(overrides))
            where = [f"tune.grid.{source_key[variant.name]}.{candidate}"] * len(mine)
            try:
                load_config(study.base, shared + variant.overrides + select + mine,
                            override_sources=own + ["tune.select"] * len(select) + where)
                load_config(study.base, shared + variant.overrides + mine, override_sources=own + where)
            except ConfigError as err:
                raise StudyError(f"{study.path}: variant {variant.name}, candidate {candidate}: {err}") from None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
        info["variant_seeds"] = seeds
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
                 if (value := _finished_metric(study.run(baseline, seed), study.auto.metric)) is not None}
    compared = [name for name in variants if name != baseline.name]
    family = judge_family([Difference.of([value - reference[seed] for seed in seeds[name] if seed in reference
                                          if (value := _finished_metric(study.run(variants[name], seed),
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


def _finished_metric(run: Run, metric: str) -> float | None:
    """The run's final ``metric`` from its ``metrics.json``; None when it has not finished."""
    if run.state() != "finished":
        return None
    value = run_folder.RunMetrics.read(run.folder).metrics.get(metric)
    return None if value is None else float(value)


def run_study(study: Study, *, jobs: int = 1, devices: list[str] | None = None, nproc_per_run: int = 1,
              only: list[str] | None = None, python: str = sys.executable, echo=print,
              claim_timeout: float = run_locks.CLAIM_TIMEOUT_SECONDS,
              heartbeat_seconds: float = run_locks.HEARTBEAT_SECONDS) -> list[Outcome]:
    """Run every unfinished run of ``study`` that no other live launcher holds (resuming interrupted ones,
    restarting failed ones after setting their folder aside), ``jobs`` at a time, each of ``nproc_per_run``
    processes (torchrun when more than one) with ``cpu_count // (jobs * nproc_per_run)`` threads each, or with
    ``nproc_per_run`` devices of ``devices`` per run. A failed run is recorded in its folder and does not stop the
    others. ``only``: run just these variants (by name). With ``tune``, the search runs first (with the untuned
    variants' evaluation runs), then the evaluation runs of each variant whose search has chosen. Returns what this
    call ran (``held`` for the runs other launchers had).

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
