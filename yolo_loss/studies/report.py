"""The results of a study, rebuilt from its folder alone: ``results.csv``, ``results.md`` and plots.

Per variant and metric: the mean and the sample standard deviation (``ddof=1``) over its finished seeds. Each
variant other than the baseline is one comparison with the baseline, paired by seed; the study's comparisons in one
metric are one family, judged together by the verdict rule of :mod:`yolo_loss.studies.stats` (its docstring defines
every column: n, d +- SE, raw p, Holm p, BH q, MDE, the equivalence test within the study's ``min_effect``, the
sign-flip p from 7 seeds on, the seeds for 80% power, and the verdict word: better, worse, equivalent, unresolved,
or preliminary below 5 seeds).

A variant with a seed missing (failed or not run yet) is shown with its ``n`` and the missing seeds named, never
averaged over fewer runs silently. Runs trained at different precisions (``metrics.json`` ``precision``; runs
written before it was recorded are float32) are never paired, except in a comparison whose variant sets
``train.amp`` itself (a study of the precision): the report refuses with the runs named (:class:`ReportError`).

Plots: ``forest.png``, each comparison's paired difference in AP with its 95% t-interval, coloured by verdict, the
variants named as the papers name them (the study file's ``labels``); ``metrics.png``, each variant's AP, AP50 and
AP75. Training-loss curves are not drawn: the totals of different loss definitions are not on one scale.

A tuned study (``tune``) adds its search (:func:`tuning_markdown`; ``tuning.png``, :func:`plot_tuning`) and, with
``untuned``, the same comparison at the variants' own settings from the runs of other studies beside the tuned
one (:func:`untuned_markdown`).

Runs evaluated more than once (``train.eval_points``; ``metrics.json`` keeps every evaluation) add a convergence
table (:func:`convergence_markdown`): each variant's mean AP at each evaluation and its rise over the last quarter of
the schedule as a share of its final AP, the study protocol's 10% rule; and ``ap_curves.png``.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolo_loss.studies.stats import (DEFAULT_MIN_EFFECT, METRICS, MIN_SEEDS, SIGN_FLIP_MIN_N, TABLE_METRICS, Difference,
                             Judged, format_p, judge_family, t_quantile)
from yolo_loss.studies.study import FAILED, RUN_INFO, STUDY_INFO, Choice, search_label
from yolo_loss.train import run_folder
from yolo_loss.train.run_folder import RunMetrics, recorded_processor



class ReportError(ValueError):
    """A study folder whose runs cannot be compared as asked; the message names the runs."""


@dataclass
class VariantSummary:
    name: str
    n: int
    missing: list[int]
    mean: dict[str, float]
    std: dict[str, float]
    diff: dict[str, Judged] | None  # None for the baseline itself or a study without one
    label: str = ""  # how the papers name it (the study's ``labels``), else its axis values that differ


def load_rows(study_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(study.json, one row per expected run)``: variant, its axis values, seed, status, metrics, final loss terms,
    training time and images per second (empty for runs that did not finish)."""
    study_dir = Path(study_dir)
    info = json.loads((study_dir / STUDY_INFO).read_text())
    return info, expected_rows(study_dir, info)


def expected_rows(study_dir: Path, info: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per run that ``info`` (a study.json) expects, read from its folder below ``study_dir``."""
    rows = []
    for variant in info["variants"]:
        for seed in seeds_of(info, variant):
            folder = study_dir / info.get("folders", {}).get(variant, variant) / f"seed={seed}"
            fields = dict(part.split("=", 1) for part in variant.split(","))
            row: dict[str, Any] = {"variant": variant, **fields, "seed": seed, "status": "missing", "folder": str(folder)}
            if (folder / RUN_INFO).is_file():
                row["status"] = "interrupted"
            if (folder / FAILED).is_file():
                row["status"] = "failed"
                row["error"] = json.loads((folder / FAILED).read_text())["error"]
            if run_folder.finished(folder):
                summary = RunMetrics.read(folder)
                row["status"] = "finished"
                row.update({key: summary.metrics.get(key, math.nan) for key in METRICS})
                row.update({f"loss_{name}": value for name, value in summary.final_terms.items()})
                row["train_seconds"] = summary.train_seconds
                row["images_per_sec"] = summary.images_per_sec
                row.update(run_start(folder, summary))
                row["precision"] = summary.precision
            rows.append(row)
    return rows


def run_start(folder: Path, summary: RunMetrics) -> dict[str, str]:
    """What a finished run started from and trained on: its pretrained backbone's fingerprint and its processor(s)
    (the two :func:`start_mismatches` compares)."""
    return {"backbone": summary.start.get("backbone", ""), "processor": recorded_processor(folder)}


def seeds_of(info: dict[str, Any], variant: str) -> list[int]:
    """A variant's seeds: the study's, or with auto seeds (``seeds: {auto: ...}``) those it was given."""
    return info.get("variant_seeds", {}).get(variant, info["seeds"])


def auto_seeds_markdown(info: dict[str, Any], summaries: list[VariantSummary]) -> str:
    """What ``seeds: auto`` did: the rule, and per variant its seeds and whether its comparison was decided."""
    auto = info["auto"]
    metric = auto["metric"]
    lines = [f"Seeds added automatically (`seeds: {{auto: {auto['first']}, cap: {auto['cap']}, metric: {metric}}}`): "
             f"after the first {len(auto['first'])} seeds, one more at a time for each variant whose d{metric} was "
             f"not yet decided by the verdict rule (better, worse or equivalent, at least {MIN_SEEDS} seeds), with "
             f"the baseline, up to {auto['cap']} seeds.", ""]
    for s in summaries:
        if s.diff is None:
            continue
        judged = s.diff.get(metric)
        state = (f"decided: {judged.verdict}" if judged is not None and judged.decided
                 else f"undecided at the cap of {auto['cap']}" if len(seeds_of(info, s.name)) >= auto["cap"]
                 else "undecided (still adding seeds)")
        lines.append(f"- {s.name}: {len(seeds_of(info, s.name))} seeds, {state}")
    return "\n".join(lines) + "\n"


def tuning_markdown(info: dict[str, Any], study_dir: Path) -> str:
    """What ``tune`` did (study.json's ``tune``): the selection overrides, each tuned variant's chosen candidate and
    its overrides, the search table (candidate x tuning seed, and the mean), a warning for each choice on the edge
    of its grid, and one for each variant whose candidates at a tuning seed were not all started alike
    (:func:`search_mismatches`)."""
    tune = info["tune"]
    metric, seeds = tune["metric"], tune["seeds"]
    lines = ["## Tuning", "",
             f"Each tuned variant is compared at the candidate with the best mean {metric} over the tuning seeds "
             f"{', '.join(map(str, seeds))} (ties: the first listed), evaluated with `{'`, `'.join(tune['select'])}` "
             f"(the selection split); the tables above are its evaluation runs, at the study's seeds and without "
             f"those overrides.", ""]
    edges = []
    for variant, search in tune["variants"].items():
        chosen = search["chosen"]
        setting = (f"**{chosen}** (`{'`, `'.join(search['candidates'][chosen]) or 'no overrides'}`)" if chosen
                   else "not chosen yet (its search has not finished)")
        lines += [f"### {variant}: {setting}", "",
                  "| candidate | " + " | ".join(f"seed {seed}" for seed in seeds) + f" | mean {metric} |",
                  "|---|" + "---|" * (len(seeds) + 1)]
        for candidate, values in search["values"].items():
            cells = ["-" if value is None else f"{value:.4f}" for value in values]
            mean = "-" if None in values else f"{statistics.fmean(values):.4f}"
            name = f"**{candidate}**" if candidate == chosen else candidate
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
        lines.append("")
        if search["on_edge"]:
            edges.append(f"- {variant}: {chosen} is the {'first' if chosen == next(iter(search['values'])) else 'last'}"
                         " candidate of its grid: the best setting may lie beyond it; widen the grid.")
    if edges:
        lines += ["Warning: choices on the edge of their grid:", *edges, ""]
    mismatched = search_mismatches(info, study_dir)
    if mismatched:
        lines += ["Not exactly comparable: at these tuning seeds a variant's candidates started from different "
                  "pretrained backbones or were trained on different processors, so the differences between those "
                  "candidates hold that noise too:", *mismatched, ""]
    return "\n".join(lines)


def search_mismatches(info: dict[str, Any], study_dir: Path) -> list[str]:
    """:func:`start_mismatches` within each tuned variant's search: one line per variant and tuning seed whose
    finished candidates (``<variant>/tune=<candidate>/seed=<s>``) were not all started alike."""
    lines = []
    for variant, search in searched_variants(info).items():
        rows = []
        for candidate in search["values"]:
            for seed in info["tune"]["seeds"]:
                folder = study_dir / search_label(variant, candidate, seed)
                if run_folder.finished(folder):
                    rows.append({"variant": candidate, "seed": seed, "status": "finished",
                                 **run_start(folder, RunMetrics.read(folder))})
        lines += [line.replace("- seed ", f"- {variant}, seed ", 1) for line in start_mismatches(rows)]
    return lines


def untuned_info(info: dict[str, Any]) -> dict[str, Any]:
    """The study.json of the ``untuned`` comparison: the variants that name runs at their own settings (the baseline
    among them), in those runs' folders, at this study's seeds."""
    untuned = info["untuned"]
    return {**info, "variants": [variant for variant in info["variants"] if variant in untuned],
            "folders": untuned, "variant_seeds": {}}


def untuned_markdown(info: dict[str, Any], untuned: list[VariantSummary], tuned: list[VariantSummary],
                     metric: str = "AP") -> str:
    """The tuned comparison beside the untuned one (``untuned``: another study's runs of each variant at its own
    settings), each judged as its own family by the verdict rule, and each variant's chosen candidate."""
    chosen = {variant: search["chosen"] or "not chosen yet"
              for variant, search in ((info.get("tune") or {}).get("variants") or {}).items()}
    at_default = {s.name: s for s in untuned}
    lines = ["## Tuned beside untuned", "",
             f"d{metric} against the baseline with every variant at the candidate its search chose (the tables above), "
             "and at its own settings before tuning: the runs other studies trained (`untuned` in the study file: "
             + ", ".join(f"{variant} from `{folder}`" for variant, folder in info["untuned"].items())
             + "), at this study's seeds. Each column is its own family of comparisons, judged by the verdict rule.",
             "",
             "| variant | chosen | n tuned | d tuned | verdict tuned | n untuned | d untuned | verdict untuned |",
             "|---|---|---|---|---|---|---|---|"]
    for s in tuned:
        label = f"**{s.name}** (baseline)" if s.name == info.get("baseline") else s.name
        cells = [label, chosen.get(s.name, "(no candidates)")]
        for summary in (s, at_default.get(s.name)):
            if summary is None:
                cells += ["-", "-", "not in untuned"]
                continue
            judged = summary.diff[metric] if summary.diff is not None else None
            cells += [str(summary.n)] + (["", ""] if judged is None
                                         else [_difference_cell(judged.difference, 4), judged.verdict])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def evaluation_curves(rows: list[dict[str, Any]], metric: str = "AP") -> dict[str, dict[int, list[tuple[float, float]]]]:
    """``{variant: {seed: [(epoch, metric), ...]}}`` of the finished runs evaluated at least twice, from their
    ``metrics.json`` ``evaluations`` (written since the validation curve was kept there)."""
    curves: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for row in rows:
        if row["status"] != "finished":
            continue
        evaluations = RunMetrics.read(Path(row["folder"])).evaluations
        points = [(e["epoch"], e[metric]) for e in evaluations if metric in e]
        if len(points) >= 2:
            curves.setdefault(row["variant"], {})[row["seed"]] = points
    return curves


def mean_curve(seeds: dict[int, list[tuple[float, float]]]) -> tuple[list[float], list[list[float]]]:
    """The epochs every seed of a variant was evaluated at (the first seed's, cut to the shortest curve) and, per
    epoch, the seeds' values."""
    length = min(len(points) for points in seeds.values())
    epochs = [epoch for epoch, _ in next(iter(seeds.values()))[:length]]
    return epochs, [[points[k][1] for points in seeds.values()] for k in range(length)]


CONVERGED_RISE = 0.10  # the study protocol's rule: AP rises by less than 10% of its final value over the last quarter


def convergence_markdown(curves: dict[str, dict[int, list[tuple[float, float]]]], baseline: str | None = None,
                         metric: str = "AP") -> str:
    """Per variant: the mean ``metric`` at each evaluation, its rise from the last evaluation at or before 3/4 of
    the schedule to the end as a share of the final value ("converged" when under :data:`CONVERGED_RISE`), and,
    with a ``baseline`` among the curves, the difference from it at each evaluation, paired by seed."""
    lines = ["## Convergence", "",
             f"Mean {metric} over the seeds at each evaluation (epoch), and its rise over the last quarter of the "
             f"schedule (from the last evaluation at or before 3/4 of it) as a share of the final {metric}: "
             f"converged when under {CONVERGED_RISE:.0%}."
             + (f" d{metric}: the difference from the baseline at each evaluation, paired by seed, +- SE."
                if baseline in curves else ""), "",
             f"| variant | n | {metric} by epoch | rise over the last quarter | converged |"
             + (f" d{metric} by epoch |" if baseline in curves else ""),
             "|---|---|---|---|---|" + ("---|" if baseline in curves else "")]
    for variant, seeds in curves.items():
        epochs, values = mean_curve(seeds)
        means = [statistics.fmean(v) for v in values]
        cells = [variant, str(len(seeds)), ", ".join(f"{e:g}: {m:.3f}" for e, m in zip(epochs, means))]
        quarter = [k for k, e in enumerate(epochs) if e <= 0.75 * epochs[-1] + 1e-9]
        if not quarter or means[-1] <= 0:
            cells += ["-", "-"]
        else:
            k = quarter[-1]
            rise = (means[-1] - means[k]) / means[-1]
            cells += [f"{means[-1] - means[k]:+.3f} since epoch {epochs[k]:g} ({rise:+.0%})",
                      "yes" if rise < CONVERGED_RISE else "no"]
        if baseline in curves:
            base = curves[baseline]
            paired = [seed for seed in seeds if seed in base]
            steps = min([len(seeds[seed]) for seed in paired] + [len(base[seed]) for seed in paired], default=0)
            diffs = [Difference.of([seeds[seed][k][1] - base[seed][k][1] for seed in paired]) for k in range(steps)]
            cells.append("" if variant == baseline else ", ".join(
                f"{epochs[k]:g}: {d.mean:+.3f}" + ("" if math.isnan(d.se) else f" +- {d.se:.3f}")
                for k, d in enumerate(diffs)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def variant_label(info: dict[str, Any], variant: str) -> str:
    """The study's label for ``variant`` (``labels`` in the study file), else its axis values that differ from
    the baseline's (all of them for the baseline itself or a grid without one)."""
    if variant in info.get("labels", {}):
        return info["labels"][variant]
    baseline = dict(part.split("=", 1) for part in (info.get("baseline") or "").split(",") if "=" in part)
    fields = [part for part in variant.split(",") if baseline.get(part.split("=", 1)[0]) != part.split("=", 1)[1]]
    return ",".join(fields) or variant


def _sets_precision(row: dict[str, Any]) -> bool:
    """Whether the run's own variant sets ``train.amp`` (its ``run.json`` overrides): a comparison of precisions."""
    path = Path(row["folder"]) / RUN_INFO
    overrides = json.loads(path.read_text()).get("overrides", []) if path.is_file() else []
    return any(override.startswith("train.amp=") for override in overrides)


def check_precisions(variant: str, runs: dict[int, dict[str, Any]], baseline: dict[int, dict[str, Any]]) -> None:
    """Refuse to pair runs of different precisions unless ``variant`` itself sets ``train.amp``.

    Raises:
        ReportError: naming the variant, the seeds and both precisions.
    """
    mixed = [seed for seed in runs if seed in baseline and runs[seed]["precision"] != baseline[seed]["precision"]]
    if mixed and not _sets_precision(runs[mixed[0]]):
        seed = mixed[0]
        raise ReportError(f"{variant}: seed(s) {', '.join(map(str, mixed))} trained in {runs[seed]['precision']} "
                          f"against a baseline in {baseline[seed]['precision']} ({baseline[seed]['folder']}): runs of "
                          "different precisions are not paired; train both at one precision (train.amp)")


def summarize(info: dict[str, Any], rows: list[dict[str, Any]],
              metrics: tuple[str, ...] = TABLE_METRICS) -> list[VariantSummary]:
    """Mean, std and, per metric, every variant's paired comparison with the baseline judged as one family by the
    verdict rule (see the module docstring).

    Raises:
        ReportError: a comparison would pair runs of different precisions (:func:`check_precisions`).
    """
    finished = [row for row in rows if row["status"] == "finished"]
    by_variant = {variant: {row["seed"]: row for row in finished if row["variant"] == variant}
                  for variant in info["variants"]}
    baseline = by_variant.get(info.get("baseline") or "")
    min_effect = info.get("min_effect", DEFAULT_MIN_EFFECT)
    compared = [variant for variant in by_variant if baseline is not None and variant != info.get("baseline")]
    judged: dict[str, dict[str, Judged]] = {variant: {} for variant in compared}
    for variant in compared:
        check_precisions(variant, by_variant[variant], baseline)
    for metric in metrics:
        family = judge_family([Difference.of([by_variant[variant][seed][metric] - baseline[seed][metric]
                                              for seed in by_variant[variant] if seed in baseline])
                               for variant in compared], min_effect)
        for variant, result in zip(compared, family):
            judged[variant][metric] = result
    summaries = []
    for variant, runs in by_variant.items():
        mean, std = {}, {}
        for metric in metrics:
            values = [run[metric] for run in runs.values()]
            mean[metric] = statistics.fmean(values) if values else math.nan
            std[metric] = statistics.stdev(values) if len(values) >= 2 else math.nan
        missing = [seed for seed in seeds_of(info, variant) if seed not in runs]
        summaries.append(VariantSummary(variant, len(runs), missing, mean, std, judged.get(variant),
                                        variant_label(info, variant)))
    return summaries


def _pm(mean: float, spread: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f}" if math.isnan(spread) else f"{mean:.3f} +- {spread:.3f}"


def _difference_cell(d: Difference, digits: int = 3) -> str:
    if math.isnan(d.mean):
        return "-"
    return f"{d.mean:+.{digits}f}" + ("" if math.isnan(d.se) else f" +- {d.se:.{digits}f}")


def markdown(info: dict[str, Any], summaries: list[VariantSummary], metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    """The means table (with each comparison's difference and verdict in AP), then the comparisons section."""
    baseline = info.get("baseline")
    head = ["variant", "n"] + [f"{m} (mean +- std)" for m in metrics]
    if baseline:
        head += [f"d{metrics[0]} vs baseline", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for s in summaries:
        label = f"**{s.name}** (baseline)" if s.name == baseline else s.name
        cells = [label, f"{s.n}/{s.n + len(s.missing)}"] + [_pm(s.mean[m], s.std[m]) for m in metrics]
        if baseline:
            judged = s.diff[metrics[0]] if s.diff is not None else None
            cells += ["", ""] if judged is None else [_difference_cell(judged.difference), judged.verdict]
        lines.append("| " + " | ".join(cells) + " |")
        search = ((info.get("tune") or {}).get("variants") or {}).get(s.name)
        if search and not search["chosen"] and not s.n:  # evaluation runs are planned once the search has chosen
            tune = info["tune"]
            choice = Choice(s.name, tune["metric"], tuple(tune["seeds"]), search["values"], "")
            notes.append(f"- {choice.describe_wait(s.missing)}.")
        elif s.missing:
            notes.append(f"- {s.name}: seed(s) {', '.join(map(str, s.missing))} missing (failed or not run): "
                         f"its row averages {s.n} of {s.n + len(s.missing)} seeds.")
    text = "\n".join(lines) + "\n"
    if baseline:
        text += (f"\nd: the difference from the baseline paired by seed, mean +- standard error over the seeds both "
                 f"finished. verdict (yolo_loss/studies/stats.py): better / worse when its Holm-adjusted p < 0.05 over "
                 f"the study's {len([s for s in summaries if s.diff is not None])} comparisons, equivalent when the "
                 f"Holm-adjusted equivalence test (TOST) within +-{info.get('min_effect', DEFAULT_MIN_EFFECT):g} passes, "
                 f"unresolved otherwise, preliminary below {MIN_SEEDS} paired seeds.\n")
    if notes:
        text += "\nIncomplete:\n" + "\n".join(notes) + "\n"
    if baseline:
        text += "\n" + comparisons_markdown(info, summaries, metrics)
    return text


def comparisons_markdown(info: dict[str, Any], summaries: list[VariantSummary],
                         metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    """Per metric, one table of the study's family of comparisons: n, d +- SE, raw p, Holm p, BH q, MDE, the
    Holm-adjusted TOST p, the sign-flip p (from 7 seeds on), the seeds for 80% power and the verdict; then the
    median MDE."""
    compared = [s for s in summaries if s.diff is not None]
    if not compared:
        return ""
    min_effect = info.get("min_effect", DEFAULT_MIN_EFFECT)
    lines = ["## Comparisons", "",
             f"Each metric's comparisons with the baseline are one family of {len(compared)}. p: the two-sided paired "
             f"t-test; Holm p: Holm-adjusted over the family (the verdict's test); BH q: the Benjamini-Hochberg "
             f"q-value (shown, not used); MDE: the smallest difference the 95% t-interval tells from 0 with these "
             f"seeds; TOST p: the Holm-adjusted equivalence test within +-{min_effect:g}; p (sign flip): the exact "
             f"permutation test, shown from {SIGN_FLIP_MIN_N} seeds on (its floor 2 / 2^n); seeds for 80% power: "
             f"with the observed mean and sd taken as the truth (\"-\": no difference observed, or over 1000).", ""]
    for m in metrics:
        lines += [f"| d{m}: variant | n | d +- SE | p | Holm p | BH q | MDE (95%) | TOST p | p (sign flip) | "
                  "seeds for 80% power | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in compared:
            j = s.diff[m]
            d = j.difference
            mde = "-" if math.isnan(d.mde) else f"{d.mde:.4f}"
            lines.append(f"| {s.name} | {d.n} | {_difference_cell(d, 4)} | {format_p(j.p)} | {format_p(j.p_holm)} | "
                         f"{format_p(j.q_bh)} | {mde} | {format_p(j.p_tost_holm)} | {format_p(d.p_sign_flip)} | "
                         f"{d.seeds_for_power or '-'} | {j.verdict} |")
        mdes = [s.diff[m].difference.mde for s in compared if not math.isnan(s.diff[m].difference.mde)]
        lines.append(f"\nMedian MDE of d{m} over the {len(mdes)} variants: {statistics.median(mdes):.4f}.\n"
                     if mdes else "")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red", "equivalent": "tab:blue", "unresolved": "tab:gray",
                   "preliminary": "tab:orange"}


def plot(info: dict[str, Any], summaries: list[VariantSummary], out: Path) -> list[Path]:
    """``metrics.png`` (AP, AP50, AP75 per variant, mean with std error bars) and, with a baseline, ``forest.png``
    (:func:`plot_forest`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [s.label if s.name != info.get("baseline") else f"{s.label} (baseline)" for s in summaries]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.5))
    width = 0.8 / len(TABLE_METRICS)
    for k, metric in enumerate(TABLE_METRICS):
        means = [s.mean[metric] for s in summaries]
        errors = [0.0 if math.isnan(s.std[metric]) else s.std[metric] for s in summaries]
        ax.bar(np.arange(len(names)) + (k - 1) * width, means, width, yerr=errors, capsize=3, label=metric)
    ax.set_xticks(np.arange(len(names)), [n.replace(",", "\n") for n in names], fontsize=8, rotation=30, ha="right")
    ax.set_ylabel("validation AP (mean +- std over seeds)")
    ax.set_title(f"{Path(info['study_file']).stem}: n seeds per variant in results.md")
    ax.legend()
    fig.tight_layout()
    metrics_png = out / "metrics.png"
    fig.savefig(metrics_png, dpi=100)
    plt.close(fig)
    written = [metrics_png]
    if any(s.diff is not None for s in summaries):
        written.append(plot_forest(info, summaries, out))
    return written


def plot_forest(info: dict[str, Any], summaries: list[VariantSummary], out: Path, metric: str = "AP") -> Path:
    """``forest.png``: each comparison's paired difference from the baseline in ``metric``, its 95% t-interval
    (mean +- t(0.975, n-1) SE), coloured by its verdict, the band +-min_effect shaded; the reference named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    compared = [s for s in summaries if s.diff is not None]
    reference = next((s for s in summaries if s.name == info.get("baseline")), None)
    min_effect = info.get("min_effect", DEFAULT_MIN_EFFECT)
    fig, ax = plt.subplots(figsize=(9.5, 1.6 + 0.42 * len(compared)))
    ax.axvspan(-min_effect, min_effect, color="tab:blue", alpha=0.08)
    ax.axvline(0.0, color="black", linewidth=0.8)
    for row, s in enumerate(reversed(compared)):
        j = s.diff[metric]
        d = j.difference
        if math.isnan(d.mean):
            continue
        half = 0.0 if math.isnan(d.se) else t_quantile(d.n - 1) * d.se
        colour = VERDICT_COLOURS[j.verdict]
        ax.errorbar(d.mean, row, xerr=half, fmt="o", color=colour, capsize=3,
                    markerfacecolor="white" if j.verdict == "preliminary" else colour)
    ax.set_yticks(range(len(compared)), [f"{s.label} (n={s.diff[metric].difference.n})" for s in reversed(compared)],
                  fontsize=8)
    reference_name = reference.label if reference is not None else info.get("baseline")
    ax.set_xlabel(f"d{metric} = variant - {reference_name}, paired by seed\nmean and 95% t-interval (uncorrected; "
                  "the colour is the Holm-corrected verdict)", fontsize=9)
    ax.set_title(f"{Path(info['study_file']).stem}: each variant against {reference_name}", fontsize=10)
    handles = [Line2D([], [], marker="o", linestyle="", color=colour, label=word,
                      markerfacecolor="white" if word == "preliminary" else colour)
               for word, colour in VERDICT_COLOURS.items()]
    handles.append(plt.Rectangle((0, 0), 1, 1, color="tab:blue", alpha=0.15, label=f"+-{min_effect:g} (min_effect)"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = out / "forest.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ap_curves(curves: dict[str, dict[int, list[tuple[float, float]]]], out: Path, metric: str = "AP") -> Path:
    """``ap_curves.png``: each variant's validation ``metric`` against the epoch, mean over its seeds with a min-max
    band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for variant, seeds in curves.items():
        epochs, values = mean_curve(seeds)
        values = np.array(values)
        line, = ax.plot(epochs, values.mean(1), marker="o", label=f"{variant} (n={len(seeds)})")
        ax.fill_between(epochs, values.min(1), values.max(1), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}")
    ax.set_ylim(bottom=0)
    ax.set_title(f"validation {metric}: mean over seeds, band min-max")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "ap_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def searched_variants(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The tuned variants of study.json with at least one finished search run, and their searches."""
    return {variant: search for variant, search in (info.get("tune") or {}).get("variants", {}).items()
            if any(value is not None for values in search["values"].values() for value in values)}


def plot_tuning(info: dict[str, Any], out: Path) -> Path:
    """``tuning.png``: the search of each variant in :func:`searched_variants`, one panel a variant on one y scale:
    the selection metric of every finished search run against its candidate (in the grid's order), the mean over the
    tuning seeds where all have finished, the chosen candidate starred."""
    searches = searched_variants(info)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, seeds = info["tune"]["metric"], info["tune"]["seeds"]
    columns = min(3, len(searches))
    rows = math.ceil(len(searches) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), sharey=True, squeeze=False)
    for ax, (variant, search) in zip(axes.flat, searches.items()):
        names = list(search["values"])
        for k, seed in enumerate(seeds):
            points = [(x, values[k]) for x, values in enumerate(search["values"].values()) if values[k] is not None]
            ax.plot(*zip(*points), linestyle="none", marker="o", markersize=4, alpha=0.6, label=f"seed {seed}")
        means = [(x, statistics.fmean(values)) for x, values in enumerate(search["values"].values())
                 if None not in values]
        if means:
            ax.plot(*zip(*means), color="black", label="mean")
        if search["chosen"]:
            x = names.index(search["chosen"])
            ax.plot([x], [statistics.fmean(search["values"][search["chosen"]])], marker="*", markersize=14,
                    color="tab:red", linestyle="none", label="chosen")
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"{variant_label(info, variant)}: {search['chosen'] or 'not chosen yet'}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(searches):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{metric}, selection split")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{Path(info['study_file']).stem}: the search, candidate x tuning seed", fontsize=10)
    fig.tight_layout()
    path = out / "tuning.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def start_mismatches(rows: list[dict[str, Any]]) -> list[str]:
    """One line per seed whose finished runs were not all made alike: from different pretrained backbones (their
    fingerprints, :func:`yolo_loss.train.pretrain.fingerprint`; the cache is keyed by its parameters, but another
    machine trains other weights from them), or on different processors (as ``command.txt`` records them; two
    machines can train one command to different weights). Either way the runs of that seed are not exactly
    paired. Runs whose processor was not recorded (older runs, CUDA runs) are left out of the processor check."""
    lines = []
    for seed in sorted({row["seed"] for row in rows}):
        finished = [row for row in rows if row["seed"] == seed and row["status"] == "finished"]
        parts = []
        for key in ("backbone", "processor"):
            groups: dict[str, list[str]] = {}
            for row in finished:
                if key in row and (row[key] or key == "backbone"):  # an unrecorded processor is no evidence
                    groups.setdefault(row[key] or "not recorded", []).append(row["variant"])
            if len(groups) > 1:
                parts += [f"{key} {value}: {', '.join(variants)}" for value, variants in sorted(groups.items())]
        if parts:
            lines.append(f"- seed {seed}: " + "; ".join(parts))
    return lines


def write_report(study_dir: str | Path) -> list[Path]:
    """Rebuild ``results.csv``, ``results.md``, ``metrics.png``, ``forest.png`` and (for runs evaluated more than
    once) ``ap_curves.png`` in ``study_dir``.

    Raises:
        ReportError: a comparison would pair runs of different precisions."""
    study_dir = Path(study_dir)
    info, rows = load_rows(study_dir)
    summaries = summarize(info, rows)
    write_csv(rows, study_dir / "results.csv")
    failed = [row for row in rows if row["status"] == "failed"]
    text = f"# {Path(info['study_file']).stem}\n\n" + markdown(info, summaries)
    if info.get("tune"):
        text += "\n" + tuning_markdown(info, study_dir)
    if info.get("untuned"):
        plain = untuned_info(info)
        text += "\n" + untuned_markdown(info, summarize(plain, expected_rows(study_dir, plain)), summaries)
    if info.get("auto"):
        text += "\n" + auto_seeds_markdown(info, summarize(info, rows, metrics=(info["auto"]["metric"],)))
    curves, searched = evaluation_curves(rows), searched_variants(info)
    if curves:
        text += "\n" + convergence_markdown(curves, info.get("baseline"))
    mismatched = start_mismatches(rows)
    if mismatched:
        text += ("\nNot exactly paired: these seeds' runs started from different pretrained backbones (the same "
                 "parameters trained on different machines give different weights) or were trained on different "
                 "processors (which round differently), so their paired differences hold that noise too:\n"
                 + "\n".join(mismatched) + "\n")
    if failed:
        text += "\nFailed runs:\n" + "".join(f"- {r['variant']}/seed={r['seed']}: {r['error']}\n" for r in failed)
    text += ("\nPlots: `forest.png` (each comparison's dAP with its 95% t-interval, coloured by verdict) and "
             "`metrics.png` (each variant's AP, AP50, AP75, every finished run of it, reused ones included)"
             + (", `ap_curves.png` (validation AP by epoch)" if curves else "")
             + (", `tuning.png` (each variant's search: the selection metric by candidate and tuning seed)"
                if searched else "")
             + ". Training-loss curves are not drawn: the totals of different loss definitions are not on one scale; "
             "each run's terms are in its TensorBoard events where it was trained.\n")
    (study_dir / "results.md").write_text(text)
    written = [study_dir / "results.csv", study_dir / "results.md"]
    (study_dir / "loss_curves.png").unlink(missing_ok=True)  # drawn before: totals of different losses on one axis
    if any(row["status"] == "finished" for row in rows):
        written += plot(info, summaries, study_dir)
    if curves:
        written.append(plot_ap_curves(curves, study_dir))
    if searched:
        written.append(plot_tuning(info, study_dir))
    return written
