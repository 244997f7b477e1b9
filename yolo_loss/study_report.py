"""The results of a study, rebuilt from its folder alone: ``results.csv``, ``results.md`` and plots.

Statistics (:func:`summarize`; the functions in :mod:`yolo_loss.stats`):

- per variant and metric: the mean and the sample standard deviation (``ddof=1``) over its finished seeds;
- the difference from the baseline, *paired by seed* (a seed fixes the initial weights and the data order, so the
  seed-to-seed variation common to both variants cancels): ``d_s = variant_s - baseline_s`` over the seeds both
  finished, reported as ``mean(d) +- SE`` with ``SE = std(d) / sqrt(n)``;
- "within noise" when ``|mean(d)| < t * SE``, ``t`` the two-sided 95% quantile of Student's t with ``n - 1``
  degrees of freedom: the 95% confidence interval of the difference contains 0. This Student-t rule alone marks
  "(noise)". With one paired seed there is no error estimate and the table says so.
- the **minimum detectable effect** at 95% with the study's own n, ``MDE = t(0.975, n - 1) * sd(d) / sqrt(n)``
  (the half-width of that interval: a difference smaller than this cannot be told from 0 with these seeds);
- the **seeds for 80% power**: the smallest n with ``(t(0.975, n - 1) + t(0.80, n - 1)) * sd(d) / sqrt(n) <=
  |mean(d)|``, the usual approximation of a paired t-test's sample size with the observed mean and spread
  taken as the truth (a large observed difference needs few seeds, one near 0 needs many);
- a **sign-flip permutation p-value**, exact over all ``2^n`` sign patterns of the paired differences (under "no
  effect" each difference is as likely to have either sign): the share of patterns whose ``|mean|`` is at least the
  observed. Its smallest possible value is ``2 / 2^n``, 0.0625 for 5 seeds: it can reach 0.05 only from 6 seeds
  on, and is reported beside the t-rule, not instead of it.

A variant with a seed missing (failed or not run yet) is shown with its ``n`` and the missing seeds named, never
averaged over fewer runs silently.

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

from yolo_loss.ablation import FAILED, FINISHED, RUN_INFO, STUDY_INFO
from yolo_loss.stats import METRICS, TABLE_METRICS, Difference


@dataclass
class VariantSummary:
    name: str
    n: int
    missing: list[int]
    mean: dict[str, float]
    std: dict[str, float]
    diff: dict[str, Difference] | None  # None for the baseline itself or a study without one


def load_rows(study_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(study.json, one row per expected run)``: variant, its axis values, seed, status, metrics, final loss terms,
    training time and images per second (empty for runs that did not finish)."""
    study_dir = Path(study_dir)
    info = json.loads((study_dir / STUDY_INFO).read_text())
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
            if (folder / FINISHED).is_file():
                summary = json.loads((folder / FINISHED).read_text())
                row["status"] = "finished"
                row.update({key: summary["metrics"].get(key, math.nan) for key in METRICS})
                row.update({f"loss_{name}": value for name, value in summary.get("final_terms", {}).items()})
                row["train_seconds"] = summary.get("train_seconds", math.nan)
                row["images_per_sec"] = summary.get("images_per_sec", math.nan)
                row["backbone"] = summary.get("start", {}).get("backbone", "")
            rows.append(row)
    return info, rows


def seeds_of(info: dict[str, Any], variant: str) -> list[int]:
    """A variant's seeds: the study's, or with auto seeds (``seeds: {auto: ...}``) those it was given."""
    return info.get("variant_seeds", {}).get(variant, info["seeds"])


def auto_seeds_markdown(info: dict[str, Any], summaries: list[VariantSummary]) -> str:
    """What ``seeds: auto`` did: the rule, and per variant its seeds and whether its difference was resolved."""
    auto = info["auto"]
    metric = auto["metric"]
    lines = [f"Seeds added automatically (`seeds: {{auto: {auto['first']}, cap: {auto['cap']}, metric: {metric}}}`): "
             f"after the first {len(auto['first'])} seeds, one more at a time for each variant whose d{metric} was "
             f"unresolved by the t-rule, with the baseline, up to {auto['cap']} seeds.", ""]
    for s in summaries:
        if s.diff is None:
            continue
        d = s.diff.get(metric)
        state = ("resolved" if d is not None and d.within_noise is False
                 else f"unresolved at the cap of {auto['cap']}" if len(seeds_of(info, s.name)) >= auto["cap"]
                 else "unresolved (still adding seeds)")
        lines.append(f"- {s.name}: {len(seeds_of(info, s.name))} seeds, {state}")
    return "\n".join(lines) + "\n"


def evaluation_curves(rows: list[dict[str, Any]], metric: str = "AP") -> dict[str, dict[int, list[tuple[float, float]]]]:
    """``{variant: {seed: [(epoch, metric), ...]}}`` of the finished runs evaluated at least twice, from their
    ``metrics.json`` ``evaluations`` (written since the validation curve was kept there)."""
    curves: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for row in rows:
        if row["status"] != "finished":
            continue
        evaluations = json.loads((Path(row["folder"]) / FINISHED).read_text()).get("evaluations", [])
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


def summarize(info: dict[str, Any], rows: list[dict[str, Any]],
              metrics: tuple[str, ...] = TABLE_METRICS) -> list[VariantSummary]:
    """Mean, std and the paired difference from the baseline, per variant (see the module docstring)."""
    finished = [row for row in rows if row["status"] == "finished"]
    by_variant = {variant: {row["seed"]: row for row in finished if row["variant"] == variant}
                  for variant in info["variants"]}
    baseline = by_variant.get(info.get("baseline") or "")
    summaries = []
    for variant, runs in by_variant.items():
        mean, std, diff = {}, {}, None
        for metric in metrics:
            values = [run[metric] for run in runs.values()]
            mean[metric] = statistics.fmean(values) if values else math.nan
            std[metric] = statistics.stdev(values) if len(values) >= 2 else math.nan
        if baseline is not None and variant != info.get("baseline"):
            diff = {}
            for metric in metrics:
                diff[metric] = Difference.of([runs[seed][metric] - baseline[seed][metric]
                                              for seed in runs if seed in baseline])
        missing = [seed for seed in seeds_of(info, variant) if seed not in runs]
        summaries.append(VariantSummary(variant, len(runs), missing, mean, std, diff))
    return summaries


def _pm(mean: float, spread: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f}" if math.isnan(spread) else f"{mean:.3f} +- {spread:.3f}"


def markdown(info: dict[str, Any], summaries: list[VariantSummary], metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    baseline = info.get("baseline")
    head = ["variant", "n"] + [f"{m} (mean +- std)" for m in metrics]
    if baseline:
        head += [f"d{m} vs baseline" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for s in summaries:
        label = f"**{s.name}** (baseline)" if s.name == baseline else s.name
        cells = [label, f"{s.n}/{s.n + len(s.missing)}"] + [_pm(s.mean[m], s.std[m]) for m in metrics]
        if baseline:
            for m in metrics:
                if s.diff is None:
                    cells.append("")
                    continue
                d = s.diff[m]
                mark = {True: " (noise)", False: "", None: " (no error estimate)"}[d.within_noise]
                cells.append(f"{'-' if math.isnan(d.mean) else f'{d.mean:+.3f}'}"
                             f"{'' if math.isnan(d.se) else f' +- {d.se:.3f}'}{mark}")
        lines.append("| " + " | ".join(cells) + " |")
        if s.missing:
            notes.append(f"- {s.name}: seed(s) {', '.join(map(str, s.missing))} missing (failed or not run): "
                         f"its row averages {s.n} of {s.n + len(s.missing)} seeds.")
    text = "\n".join(lines) + "\n"
    if baseline:
        text += ("\nd: the difference from the baseline paired by seed, mean +- standard error over the seeds both "
                 "finished; (noise): its 95% t-interval contains 0.\n")
    if notes:
        text += "\nIncomplete:\n" + "\n".join(notes) + "\n"
    if baseline:
        text += "\n" + power_markdown(summaries, metrics)
    return text


def power_markdown(summaries: list[VariantSummary], metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    """Per metric, each variant's paired difference with its MDE at 95%, the sign-flip permutation p-value and the
    seeds that would resolve the observed difference at 80% power; then the median MDE over the variants."""
    compared = [s for s in summaries if s.diff is not None]
    if not compared:
        return ""
    lines = ["## Power", "",
             "MDE: the smallest paired difference the 95% t-interval tells from 0 with this study's seeds, "
             "t(0.975, n-1) sd(d) / sqrt(n). p (sign flip): exact paired permutation test, two-sided (its "
             "smallest value is 2 / 2^n). Seeds for 80% power: with the observed mean and sd of d taken as the truth "
             "(\"-\": no difference observed, or more than 1000). The t-rule alone marks \"(noise)\" above.", ""]
    for m in metrics:
        lines += [f"| d{m}: variant | n | d +- SE | MDE (95%) | p (sign flip) | seeds for 80% power |",
                  "|---|---|---|---|---|---|"]
        for s in compared:
            d = s.diff[m]
            mean = "-" if math.isnan(d.mean) else f"{d.mean:+.4f}"
            se = "" if math.isnan(d.se) else f" +- {d.se:.4f}"
            mde = "-" if math.isnan(d.mde) else f"{d.mde:.4f}"
            p = "-" if math.isnan(d.p_permutation) else f"{d.p_permutation:.3f}"
            lines.append(f"| {s.name} | {d.n} | {mean}{se} | {mde} | {p} | {d.seeds_for_power or '-'} |")
        mdes = [s.diff[m].mde for s in compared if not math.isnan(s.diff[m].mde)]
        if mdes:
            lines.append(f"\nMedian MDE of d{m} over the {len(mdes)} variants: {statistics.median(mdes):.4f}.\n")
        else:
            lines.append("")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def loss_curve(run_folder: Path) -> tuple[list[int], list[float]]:
    """The training loss (``loss/total``) of a run from its TensorBoard events: steps and values."""
    from yolo_loss.tensorboard_log import read_scalars

    return read_scalars(run_folder, "train", "loss/total")


def plot(info: dict[str, Any], rows: list[dict[str, Any]], summaries: list[VariantSummary], out: Path) -> list[Path]:
    """``metrics.png`` (AP, AP50, AP75 per variant, mean with std error bars) and ``loss_curves.png`` (the training
    loss of each variant, mean over its seeds with a min-max band; left out when no run has training events)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [s.name for s in summaries]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.5))
    width = 0.8 / len(TABLE_METRICS)
    for k, metric in enumerate(TABLE_METRICS):
        means = [s.mean[metric] for s in summaries]
        errors = [0.0 if math.isnan(s.std[metric]) else s.std[metric] for s in summaries]
        ax.bar(np.arange(len(names)) + (k - 1) * width, means, width, yerr=errors, capsize=3, label=metric)
    ax.set_xticks(np.arange(len(names)), [n.replace(",", "\n") for n in names], fontsize=8)
    ax.set_ylabel("validation AP (mean +- std over seeds)")
    ax.set_title(Path(info["study_file"]).stem)
    ax.legend()
    fig.tight_layout()
    metrics_png = out / "metrics.png"
    fig.savefig(metrics_png, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = 0
    for variant in names:
        curves = [curve for row in rows if row["variant"] == variant and row["status"] == "finished"
                  if (curve := loss_curve(Path(row["folder"])))[0]]
        if not curves:
            continue
        length = min(len(values) for _, values in curves)
        steps = np.array(curves[0][0][:length])
        values = np.array([v[:length] for _, v in curves])
        line, = ax.plot(steps, values.mean(0), label=f"{variant} (n={len(curves)})")
        ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
        drawn += 1
    if not drawn:  # no run has training events (a study folder assembled by hand)
        plt.close(fig)
        return [metrics_png]
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (weighted total)")
    ax.set_title("training loss: mean over seeds, band min-max")
    ax.legend(fontsize=7)
    fig.tight_layout()
    curves_png = out / "loss_curves.png"
    fig.savefig(curves_png, dpi=100)
    plt.close(fig)
    return [metrics_png, curves_png]


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


def start_mismatches(rows: list[dict[str, Any]]) -> list[str]:
    """One line per seed whose finished runs did not all start from the same pretrained backbone (its
    fingerprint, :func:`yolo_loss.pretrain.fingerprint`): the cache is keyed by its parameters, but another machine
    trains other weights from them, so runs of one seed made on two machines are not exactly paired."""
    lines = []
    for seed in sorted({row["seed"] for row in rows}):
        starts: dict[str, list[str]] = {}
        for row in rows:
            if row["seed"] == seed and row["status"] == "finished" and "backbone" in row:
                starts.setdefault(row["backbone"] or "not recorded", []).append(row["variant"])
        if len(starts) > 1:
            lines.append(f"- seed {seed}: " + "; ".join(f"backbone {fp}: {', '.join(variants)}"
                                                       for fp, variants in sorted(starts.items())))
    return lines


def write_report(study_dir: str | Path) -> list[Path]:
    """Rebuild ``results.csv``, ``results.md``, ``metrics.png``, ``loss_curves.png`` and (for runs evaluated more
    than once) ``ap_curves.png`` in ``study_dir``."""
    study_dir = Path(study_dir)
    info, rows = load_rows(study_dir)
    summaries = summarize(info, rows)
    write_csv(rows, study_dir / "results.csv")
    failed = [row for row in rows if row["status"] == "failed"]
    text = f"# {Path(info['study_file']).stem}\n\n" + markdown(info, summaries)
    if info.get("auto"):
        text += "\n" + auto_seeds_markdown(info, summarize(info, rows, metrics=(info["auto"]["metric"],)))
    curves = evaluation_curves(rows)
    if curves:
        text += "\n" + convergence_markdown(curves, info.get("baseline"))
    mismatched = start_mismatches(rows)
    if mismatched:
        text += ("\nNot exactly paired: these seeds' runs started from different pretrained backbones (the same "
                 "parameters trained on different machines give different weights), so their paired differences "
                 "hold that noise too:\n" + "\n".join(mismatched) + "\n")
    if failed:
        text += "\nFailed runs:\n" + "".join(f"- {r['variant']}/seed={r['seed']}: {r['error']}\n" for r in failed)
    (study_dir / "results.md").write_text(text)
    written = [study_dir / "results.csv", study_dir / "results.md"]
    if any(row["status"] == "finished" for row in rows):
        written += plot(info, rows, summaries, study_dir)
    if curves:
        written.append(plot_ap_curves(curves, study_dir))
    return written
