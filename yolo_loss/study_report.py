"""The results of a study, rebuilt from its folder alone: ``results.csv``, ``results.md`` and plots.

Statistics (:func:`summarize`):

- per variant and metric: the mean and the sample standard deviation (``ddof=1``) over its finished seeds;
- the difference from the baseline, *paired by seed* (a seed fixes the initial weights and the data order, so the
  seed-to-seed variation common to both variants cancels): ``d_s = variant_s - baseline_s`` over the seeds both
  finished, reported as ``mean(d) +- SE`` with ``SE = std(d) / sqrt(n)``;
- "within noise" when ``|mean(d)| < t * SE``, ``t`` the two-sided 95% quantile of Student's t with ``n - 1``
  degrees of freedom: the 95% confidence interval of the difference contains 0. With one paired seed there is no
  error estimate and the table says so.

A variant with a seed missing (failed or not run yet) is shown with its ``n`` and the missing seeds named, never
averaged over fewer runs silently.
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

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "VOC07_AP50", "VOC_AP50")
TABLE_METRICS = ("AP", "AP50", "AP75")
# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; 1.96 beyond.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(dof: int) -> float:
    return T_975[dof - 1] if dof <= len(T_975) else 1.96


@dataclass
class Difference:
    mean: float
    se: float  # nan with fewer than two paired seeds
    n: int

    @property
    def within_noise(self) -> bool | None:
        if self.n < 2 or math.isnan(self.se):
            return None
        return abs(self.mean) < t_quantile(self.n - 1) * self.se


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
        for seed in info["seeds"]:
            folder = study_dir / variant / f"seed={seed}"
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
            rows.append(row)
    return info, rows


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
                paired = [runs[seed][metric] - baseline[seed][metric] for seed in runs if seed in baseline]
                se = statistics.stdev(paired) / math.sqrt(len(paired)) if len(paired) >= 2 else math.nan
                diff[metric] = Difference(statistics.fmean(paired) if paired else math.nan, se, len(paired))
        missing = [seed for seed in info["seeds"] if seed not in runs]
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
    return text


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


def write_report(study_dir: str | Path) -> list[Path]:
    """Rebuild ``results.csv``, ``results.md``, ``metrics.png`` and ``loss_curves.png`` in ``study_dir``."""
    study_dir = Path(study_dir)
    info, rows = load_rows(study_dir)
    summaries = summarize(info, rows)
    write_csv(rows, study_dir / "results.csv")
    failed = [row for row in rows if row["status"] == "failed"]
    text = f"# {Path(info['study_file']).stem}\n\n" + markdown(info, summaries)
    if failed:
        text += "\nFailed runs:\n" + "".join(f"- {r['variant']}/seed={r['seed']}: {r['error']}\n" for r in failed)
    (study_dir / "results.md").write_text(text)
    written = [study_dir / "results.csv", study_dir / "results.md"]
    if any(row["status"] == "finished" for row in rows):
        written += plot(info, rows, summaries, study_dir)
    return written
