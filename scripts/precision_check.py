"""Does bfloat16 on the CPU change the answers? The verdict of the precision_check study, by a rule fixed before it ran.

    python scripts/precision_check.py        # docs/ablations/precision_check + aa_family -> .../precision_check/verdict.md

Reads the two studies' results.csv (scripts/report.py writes them) and judges, paired by seed over 5 seeds:

1. the precision's own effect on the baseline, d = AP(darknet, bfloat16) - AP(darknet, float32): it passes when the
   paired t-test does not resolve it (p >= 0.05) and |mean(d)| is below the A/A noise floor, the median MDE of the
   aa_family comparisons with at least 5 paired seeds (the half-width of a 95% interval of a difference that is
   noise by construction); while aa_family has none, the MDE of paper_vs_darknet's A/A comparison (the same
   protocol and 5 seeds, on an earlier machine at 2 threads a run), and the verdict names which;
2. for each variant (GIoU, label smoothing), the interaction i = (variant - darknet in bfloat16) - (variant - darknet
   in float32): it passes when the paired t-test does not resolve it (p >= 0.05) and |mean(i)| is below the MDE of
   the variant's float32 effect, i.e. bfloat16 measures the same effect within what the study can resolve.

bfloat16 is adopted for new studies only if every check passes. These are tests of no difference, so they are not
corrected for multiplicity (a correction would make passing easier). Each metric in METRICS is shown; AP decides.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from yolo_loss.studies.findings import study_rows
from yolo_loss.studies.stats import Difference, format_p

REPO = Path(__file__).resolve().parents[1]
METRICS = ("AP", "AP50", "AP75")
BASELINE, VARIANTS = "darknet", ("giou", "label_smoothing")


def _values(rows: dict, loss: str, precision: str, metric: str) -> dict[int, float]:
    return {seed: float(row[metric]) for (variant, seed), row in rows.items()
            if variant == f"loss={loss},precision={precision}"}


def _paired(*series: tuple[float, dict[int, float]]) -> Difference:
    """sum(sign * values) per seed over the seeds every series has."""
    seeds = sorted(set.intersection(*(set(values) for _, values in series)))
    return Difference.of([sum(sign * values[seed] for sign, values in series) for seed in seeds])


MIN_SEEDS = 5
PAPER_AA = ("xy=bce,scale=two_minus_wh,ignore=prediction,nuisance=augment_seed_1",
            "xy=bce,scale=two_minus_wh,ignore=prediction,nuisance=none")


def aa_noise_floor(aa_rows: dict, metric: str = "AP", fallback_rows: dict | None = None) -> tuple[float, str]:
    """The A/A noise floor and where it comes from: the median MDE of aa_family's comparisons (each stream against
    stream 0) with at least 5 paired seeds, else the MDE of paper_vs_darknet's A/A comparison (``fallback_rows``)."""
    base = {seed: float(row[metric]) for (variant, seed), row in aa_rows.items()
            if variant == "stream=augment_seed_0"}
    streams = sorted({variant for variant, _ in aa_rows} - {"stream=augment_seed_0"})
    differences = [_paired((1.0, {seed: float(row[metric]) for (v, seed), row in aa_rows.items() if v == stream}),
                           (-1.0, base)) for stream in streams]
    mdes = [d.mde for d in differences if d.n >= MIN_SEEDS]
    if mdes:
        return statistics.median(mdes), f"the median MDE of aa_family's {len(mdes)} A/A comparisons"
    if fallback_rows:
        variant, reference = PAPER_AA
        d = _paired(*((sign, {seed: float(row[metric]) for (v, seed), row in fallback_rows.items() if v == name})
                      for sign, name in ((1.0, variant), (-1.0, reference))))
        if d.n >= MIN_SEEDS:
            return d.mde, "the MDE of paper_vs_darknet's A/A comparison (aa_family has no comparison at 5 seeds yet)"
    return math.nan, "no A/A comparison at 5 seeds"


def checks(rows: dict, floor: float, metric: str = "AP") -> list[tuple[str, Difference, float, bool]]:
    """``(name, difference, threshold, passed)`` of every check of the module docstring, in ``metric``."""
    base32, base16 = _values(rows, BASELINE, "float32", metric), _values(rows, BASELINE, "bfloat16", metric)
    precision = _paired((1.0, base16), (-1.0, base32))
    result = [("bfloat16 - float32, darknet's loss", precision, floor,
               precision.n >= 2 and precision.p_value >= 0.05 and abs(precision.mean) < floor)]
    for variant in VARIANTS:
        v32, v16 = _values(rows, variant, "float32", metric), _values(rows, variant, "bfloat16", metric)
        effect32 = _paired((1.0, v32), (-1.0, base32))
        interaction = _paired((1.0, v16), (-1.0, base16), (-1.0, v32), (1.0, base32))
        result.append((f"{variant}: its effect in bfloat16 - in float32", interaction, effect32.mde,
                       interaction.n >= 2 and interaction.p_value >= 0.05 and abs(interaction.mean) < effect32.mde))
    return result


def effects_table(rows: dict, metric: str) -> list[str]:
    lines = [f"| {metric}: comparison | float32: d +- SE (n) | bfloat16: d +- SE (n) |", "|---|---|---|"]
    for variant in VARIANTS:
        cells = []
        for precision in ("float32", "bfloat16"):
            d = _paired((1.0, _values(rows, variant, precision, metric)),
                        (-1.0, _values(rows, BASELINE, precision, metric)))
            cells.append("-" if d.n == 0 else f"{d.mean:+.4f} +- {d.se:.4f} ({d.n})")
        lines.append(f"| {variant} - darknet | {cells[0]} | {cells[1]} |")
    return lines


def verdict_markdown(rows: dict, aa_rows: dict, fallback_rows: dict | None = None) -> str:
    lines = ["# precision_check: does bfloat16 on the CPU change the answers?", "",
             "The rule, fixed before the runs (scripts/precision_check.py): the precision's own effect on darknet's "
             "loss unresolved (paired t p >= 0.05) and below the A/A noise floor (the median MDE of aa_family at 5 "
             "seeds, or paper_vs_darknet's A/A until then); each "
             "variant's effect the same in both precisions (their interaction unresolved and below the MDE of the "
             "float32 effect). AP decides; AP50 and AP75 are shown.", ""]
    decided = None
    for metric in METRICS:
        floor, source = aa_noise_floor(aa_rows, metric, fallback_rows)
        results = checks(rows, floor, metric)
        lines += [f"## {metric}", "", f"A/A noise floor in {metric}: {floor:.4f}, {source}.", "",
                  "| check | d +- SE (n) | p | threshold | passes |", "|---|---|---|---|---|"]
        for name, d, threshold, passed in results:
            measured = "-" if d.n == 0 else f"{d.mean:+.4f} +- {d.se:.4f} ({d.n})"
            lines.append(f"| {name} | {measured} | {format_p(d.p_value)} | {threshold:.4f} | "
                         f"{'yes' if passed else 'no'} |")
        lines += [""] + effects_table(rows, metric) + [""]
        if metric == "AP":
            decided = all(passed for *_, passed in results) and all(d.n >= 5 for _, d, _, _ in results)
    lines += ["## Verdict", "",
              ("bfloat16 passes every check at 5 seeds: new studies may train in it (train.amp: true on the CPU); "
               "runs of one comparison still share one precision (the report refuses to pair two)." if decided else
               "bfloat16 does not pass every check with 5 seeds (or the study is incomplete): studies stay in "
               "float32."), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=REPO / "docs" / "ablations" / "precision_check")
    parser.add_argument("--aa", type=Path, default=REPO / "docs" / "ablations" / "aa_family")
    parser.add_argument("--fallback-aa", type=Path, default=REPO / "docs" / "ablations" / "paper_vs_darknet",
                        help="the study whose A/A comparison is the floor while aa_family has none at 5 seeds")
    args = parser.parse_args()
    fallback = args.fallback_aa / "results.csv"
    text = verdict_markdown(study_rows(args.study / "results.csv"), study_rows(args.aa / "results.csv"),
                            study_rows(fallback) if fallback.is_file() else None)
    (args.study / "verdict.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
