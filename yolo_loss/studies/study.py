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
    extra_seeds: {"xy=mse,cls=bce": [3]}  # optional: a variant's seeds beyond ``seeds`` (below)
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

``untuned: {variant: {study: other.yaml, variant: its name}}`` (with ``tune``) names another study's runs of a
variant at its own settings, before tuning (checked as ``reuse`` is, the baseline among them): the report sets the
comparison at those settings beside the tuned one, at this study's seeds. They are never trained here.

``extra_seeds: {variant: [seeds]}`` gives a variant seeds of its own beyond the study's, with the baseline at each of
them too (a seed of the baseline pairs with every variant that has it): the way to a fifth finished pair when a run
diverged. The failed run is not replaced in the report: it stays named there as missing beside the added seed, so a
loss that diverges is seen to. Not with ``seeds: auto``, which adds its own seeds.

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

Launching the runs, resuming them and sharing a study between launchers: :mod:`yolo_loss.studies.runner`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from yolo_loss.config.load import ConfigError, config_to_dict, flatten_config, load_config
from yolo_loss.studies.stats import DEFAULT_MIN_EFFECT, METRICS
from yolo_loss.train import run_folder

STUDY_KEYS = {"base", "out", "combine", "baseline", "include", "seeds", "extra_seeds", "overrides", "axes", "reuse",
              "min_effect", "labels", "tune", "untuned"}
TUNE_KEYS = ("seeds", "metric", "select", "grid")
COMBINE_MODES = ("grid", "one_at_a_time")

# Files of a run folder.
RUN_INFO = "run.json"  # the variant, seed and overrides, written when the run is first started
STUDY_INFO = "study.json"  # in the study folder: the expansion, so report.py needs nothing else
FAILED = "failed.json"
LOG = "train.log"


def search_label(variant: str, candidate: str, seed: int) -> str:
    """A search run's folder below its study's: ``<variant>/tune=<candidate>/seed=<seed>``."""
    return f"{variant}/tune={candidate}/seed={seed}"


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

    def describe_wait(self, evaluation_seeds: list[int]) -> str:
        """What an unchosen search holds back, and how far it got."""
        done = sum(value is not None for values in self.values.values() for value in values)
        total = sum(len(values) for values in self.values.values())
        return (f"{self.variant}: its evaluation runs (seeds {', '.join(map(str, evaluation_seeds))}) wait for the "
                f"choice of its tuning ({done} of {total} search runs finished)")


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
        if self.search:
            return search_label(self.variant.name, self.candidate, self.seed)
        return f"{self.variant.name}/seed={self.seed}"

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
    extra_seeds: dict[str, list[int]] = field(default_factory=dict)  # variant name -> its seeds beyond ``seeds``
    min_effect: float = DEFAULT_MIN_EFFECT  # the smallest difference of interest: the equivalence margin
    labels: dict[str, str] = field(default_factory=dict)  # variant name -> how the papers name it (the plots)
    tune: Tune | None = None  # tune: each variant evaluated at the candidate its search chose
    # variant name -> (the study that trained it at its own settings, its variant's name): the untuned comparison
    untuned: dict[str, tuple["Study", str]] = field(default_factory=dict)

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
                    runs.append(Run(variant, seed, self.out / search_label(variant.name, candidate, seed),
                                    tuple(dotted(self.overrides)) + variant.overrides + tuple(dotted(self.tune.select))
                                    + own + (f"train.seed={seed}",), self.base, self.path, varied=self.varied_keys(),
                                    candidate=candidate, candidate_overrides=own, search=True))
        return runs

    def choice(self, variant: Variant) -> Choice | None:
        """The state of ``variant``'s search, read from its runs' ``metrics.json``; None for a variant without
        candidates."""
        if self.tune is None or variant.name not in self.tune.grid:
            return None
        by_candidate: dict[str, list[float | None]] = {}
        for run in self.search_runs([variant.name]):
            by_candidate.setdefault(run.candidate, [None] * len(self.tune.seeds))[
                self.tune.seeds.index(run.seed)] = finished_metric(run, self.tune.metric)
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
        """The seeds a run may have, in training order: the listed ones, then those of ``extra_seeds`` or (auto
        seeds) the next integers after the largest up to the cap."""
        if self.auto is None:
            extra = sorted({seed for own in self.extra_seeds.values() for seed in own})
            return [*self.seeds, *extra]
        extra = range(max(self.seeds) + 1, max(self.seeds) + 1 + self.auto.cap - len(self.seeds))
        return [*self.seeds, *extra]

    def variant_seeds(self) -> dict[str, list[int]]:
        """Each variant's seeds: the listed ones, its ``extra_seeds`` and, with auto seeds, those added so far (the
        run started: its folder has ``run.json``); the baseline's are all that any variant has, as each is the other
        half of a pair."""
        variants = self.variants()
        seeds = {variant.name: [*self.seeds, *sorted(self.extra_seeds.get(variant.name, ()))] for variant in variants}
        pool = self.seed_pool()
        if self.auto is not None:
            for variant in variants:
                if variant.name != self.baseline_name:
                    seeds[variant.name] += [seed for seed in pool[len(self.seeds):]
                                            if (self.run(variant, seed).folder / RUN_INFO).is_file()]
        if (self.auto is not None or self.extra_seeds) and self.baseline_name is not None:
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

    def untuned_folders(self) -> dict[str, str]:
        """The folder of each ``untuned`` variant's runs relative to :attr:`out`: where its owner keeps them (the
        owner's own reuse followed)."""
        folders = {}
        for listed, (owner, name) in self.untuned.items():
            (variant,) = [variant for variant in owner.variants() if variant.name == name]
            folders[listed] = os.path.relpath(owner.run(variant, self.seeds[0]).folder.parent, self.out)
        return folders


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
    study.extra_seeds = _extra_seeds(study, raw.get("extra_seeds") or {})
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
    study.untuned = _untuned_runs(study, raw.get("untuned") or {}, check_configs)
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


def _extra_seeds(study: Study, raw: Any) -> dict[str, list[int]]:
    """The ``extra_seeds`` key: ``{variant name: [seeds]}``, integers none of which the study already lists."""
    where = f"{study.path}: extra_seeds"
    if not isinstance(raw, dict):
        raise StudyError(f"{where}: expected a mapping of variant name -> [seeds]")
    if raw and study.auto is not None:
        raise StudyError(f"{where}: not with seeds: auto, which adds seeds of its own")
    names = [variant.name for variant in study.variants()]
    extra = {}
    for name, seeds in raw.items():
        if str(name) not in names:
            raise StudyError(f"{where}.{name}: not a variant of this study ({', '.join(names)})")
        if str(name) == study.baseline_name:
            raise StudyError(f"{where}.{name}: the baseline has every seed any variant has; give the seed to the "
                             "variant that needs it")
        if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
            raise StudyError(f"{where}.{name}: expected a list of distinct integers, got {seeds!r}")
        listed = sorted(set(seeds) & set(study.seeds))
        if listed:
            raise StudyError(f"{where}.{name}: seed(s) {', '.join(map(str, listed))} already in seeds "
                             f"{study.seeds}")
        extra[str(name)] = list(seeds)
    return extra


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
    return _same_runs(study, "reuse", raw, check_configs)


def _untuned_runs(study: Study, raw: Any, check_configs: bool) -> dict[str, tuple[Study, str]]:
    """The ``untuned`` key (with ``tune`` only): ``{variant: {study: other.yaml, variant: its variant}}``, another
    study's runs of the variant at its own settings (no candidate's overrides), checked as ``reuse`` is; the baseline
    needs one too, as the untuned comparisons are against it. Never trained by this study: the report sets the
    comparison at those settings beside the tuned one, at this study's seeds."""
    if raw and study.tune is None:
        raise StudyError(f"{study.path}: untuned: only with tune (the runs it names are the variants' settings "
                         "before tuning)")
    untuned = _same_runs(study, "untuned", raw, check_configs)
    if untuned and study.baseline_name is not None and study.baseline_name not in untuned:
        raise StudyError(f"{study.path}: untuned: name the baseline's runs too ({study.baseline_name}): every "
                         "untuned comparison is against them")
    return untuned


def _same_runs(study: Study, key: str, raw: Any, check_configs: bool) -> dict[str, tuple[Study, str]]:
    """``{variant: (the other study, its variant)}`` from ``key``'s mapping, each checked to name a variant of both
    studies that the other does not tune and, with ``check_configs``, the same resolved config as this study's
    variant at its own settings for each of this study's seeds."""
    path = study.path
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: {key}: expected a mapping of variant -> {{study: file, variant: name}}")
    names = {variant.name: variant for variant in study.variants()}
    found = {}
    for listed, target in raw.items():
        where = f"{path}: {key}.{listed}"
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
                theirs_run = owner.run(owned[str(target["variant"])], seed)
                theirs = config_to_dict(load_config(theirs_run.base, theirs_run.overrides))
                if mine != theirs:
                    mine, theirs = flatten_config(mine), flatten_config(theirs)
                    differ = sorted(key for key in mine if mine[key] != theirs.get(key))
                    raise StudyError(f"{where}: its config differs from {owner.path.name}'s {target['variant']} "
                                     f"at {', '.join(differ[:5])}: the runs would not be the same")
        found[listed] = (owner, str(target["variant"]))
    return found


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


def finished_metric(run: Run, metric: str) -> float | None:
    """The run's final ``metric`` from its ``metrics.json``; None when it has not finished."""
    if run.state() != "finished":
        return None
    value = run_folder.RunMetrics.read(run.folder).metrics.get(metric)
    return None if value is None else float(value)
