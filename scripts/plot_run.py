"""PNG plots of a run's TensorBoard scalars, for reading without a browser.

    python scripts/plot_run.py runs/shapes_nano [--out DIR]

Reads ``<run>/train`` and ``<run>/val`` and writes, by default into ``plots/<run folder name>/`` below the current
folder (never into the run folder), one figure per group of tags:

- ``losses.png``: ``loss/total`` and every unweighted term, one panel each, per level and summed;
- ``weighted.png``: the weighted terms (what the total is made of), when some weight is not 1;
- ``diagnostics.png``: the criterion's diagnostics per level (``diag/*``);
- ``gradients.png``: per-term gradient norms on the head outputs (``grad/*``), when logged;
- ``metrics.png``: the validation AP metrics (``metrics/*``), and ``per_class.png`` the AP50 of each class;
- ``training.png``: learning rate, gradient norm, images per second, memory.

Each figure's title says what it draws (training, validation or both); each panel's y axis says its scale (a panel
is drawn on a log scale when its values span more than a factor 10, all positive); the legend sits outside the
data, to the right. Figures are 1500 px wide (and more with many panels).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

SPLITS = ("train", "val")
SERIES_COLORS = {"P3": "tab:blue", "P4": "tab:orange", "P5": "tab:green", "sum": "black", "all": "black",
                 "total": "black"}
SETTINGS = ("optim", "speed", "memory")  # one panel per tag
FIGURES = (  # file, title, which panels (by the panel's name: the tag without its last part), log scale allowed
    ("losses.png", "loss terms, unweighted, per level and summed", lambda p: p.startswith("loss"), True),
    ("weighted.png", "weighted loss terms (what the total is made of)", lambda p: p.startswith("weighted/"), True),
    ("diagnostics.png", "criterion diagnostics per level", lambda p: p.startswith("diag/"), False),
    ("gradients.png", "gradient norm each weighted term sends into the head outputs", lambda p: p.startswith("grad/"),
     True),
    ("metrics.png", "validation metrics", lambda p: p == "metrics", False),
    ("per_class.png", "validation AP50 of each class (VOC all-point)", lambda p: p == "metrics/AP50", False),
    ("training.png", "optimisation, speed and memory", lambda p: p.split("/")[0] in SETTINGS, False),
)
DPI = 100
PANEL_INCHES = (5.0, 3.4)
MIN_WIDTH_INCHES = 15.0  # 1500 px at DPI


def read_run(run_dir: Path) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """``{split: {tag: (steps, values)}}`` of every scalar under ``run_dir/<split>``."""
    scalars: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for split in SPLITS:
        folder = run_dir / split
        if not folder.is_dir():
            continue
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        scalars[split] = {tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
                          for tag in events.Tags()["scalars"]}
    return scalars


def panels(scalars: dict[str, dict[str, tuple[list[int], list[float]]]]) -> dict[str, dict[str, dict]]:
    """``{panel: {series: {split: (steps, values)}}}``: a tag ``a/b/c`` is series ``c`` of panel ``a/b``; the
    metrics (``metrics/AP``, ...) and the training settings are one series per tag in one panel."""
    grouped: dict[str, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    for split, tags in scalars.items():
        for tag, series in tags.items():
            panel, _, name = tag.rpartition("/")
            if panel.split("/")[0] in SETTINGS:
                panel = tag
            grouped[panel][name][split] = series
    return grouped


def draw(figure_panels: dict[str, dict[str, dict]], title: str, log_scale: bool, path: Path) -> None:
    names = sorted(figure_panels, key=lambda p: (p != "loss", p))
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    width = max(MIN_WIDTH_INCHES, PANEL_INCHES[0] * columns + 1.5 * columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width, PANEL_INCHES[1] * rows + 0.8), squeeze=False)
    splits_drawn: set[str] = set()
    for ax, panel in zip(axes.flat, names):
        for index, (name, splits) in enumerate(sorted(figure_panels[panel].items())):
            color = SERIES_COLORS.get(name, f"C{index % 10}")
            for split, (steps, values) in splits.items():
                splits_drawn.add(split)
                style = {"linewidth": 1.2} if split == "train" else {"linestyle": "--", "marker": "o", "markersize": 3}
                ax.plot(steps, values, color=color, label=f"{name} ({split})", **style)
        values = [v for splits in figure_panels[panel].values() for _, series in splits.values() for v in series]
        logarithmic = log_scale and values and min(values) > 0 and max(values) > 10 * min(values)
        if logarithmic:
            ax.set_yscale("log")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("value (log scale)" if logarithmic else "value (linear scale)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    drawn = " and ".join(("training (lines)" if s == "train" else "validation (dashed, markers)")
                         for s in SPLITS if s in splits_drawn)
    fig.suptitle(f"{title}: {drawn}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_run(run_dir: Path, out: Path | None = None) -> list[Path]:
    """Write the PNGs of one run; returns their paths (a figure without any data is not written)."""
    out = out or Path("plots") / run_dir.resolve().name
    scalars = read_run(run_dir)
    if not scalars:
        raise FileNotFoundError(f"no TensorBoard events under {run_dir}/{{train,val}}")
    grouped = panels(scalars)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, title, wanted, log_scale in FIGURES:
        chosen = {panel: series for panel, series in grouped.items() if wanted(panel)}
        if chosen:
            draw(chosen, title, log_scale, out / file_name)
            written.append(out / file_name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder (the one holding train/ and val/)")
    parser.add_argument("--out", type=Path, help="where to write the PNGs (default: plots/<run folder name> below "
                                                 "the current folder, not the run folder)")
    args = parser.parse_args()
    try:
        written = plot_run(args.run, args.out)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
