"""The YOLOv3 paper's loss against darknet's: gradients, a numerical check, term magnitudes, small vs large boxes,
and (given a finished paper_vs_darknet study) the training comparison. Writes one markdown report with its figures.

    python scripts/compare_paper_darknet.py [--study runs/ablations/paper_vs_darknet] [--out docs]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from yolo_loss.config.load import load_config  # noqa: E402
from yolo_loss.data import build_dataset, collate  # noqa: E402
from yolo_loss.decode import STRIDES  # noqa: E402
from yolo_loss.losses.assign import assign_targets  # noqa: E402
from yolo_loss.losses.criterion import build_criterion  # noqa: E402
from yolo_loss.losses.components import bce_with_logits, xy_bce, xy_mse, xy_mse_t  # noqa: E402
from yolo_loss.head import HeadSpec, build_head  # noqa: E402
from yolo_loss.model import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PRESETS = {name: load_config(REPO / "configs" / "presets" / f"{name}.yaml").loss for name in ("darknet", "paper")}
IMG = 416


def logit_gradient(loss_fn, logits: torch.Tensor, target: float) -> torch.Tensor:
    logits = logits.clone().requires_grad_()
    loss_fn(logits, torch.full_like(logits, target)).sum().backward()
    return logits.grad


def xy_gradient_panel(out: Path) -> Path:
    """d loss / d tx against the prediction sig(tx), for a target offset of 0.3."""
    tx = torch.linspace(-8, 8, 401, dtype=torch.float64)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, fn in (("bce (darknet)", xy_bce), ("mse on sig(tx)", xy_mse), ("mse_t (paper)", xy_mse_t)):
        grad = logit_gradient(fn, tx, 0.3)
        axes[0].plot(torch.sigmoid(tx), grad, label=name)
        axes[1].plot(tx, grad.abs(), label=name)
    axes[0].axvline(0.3, color="grey", lw=0.5)
    axes[0].set(xlabel="prediction sig(tx)", ylabel="d loss / d tx", title="x gradient, target offset 0.3",
                ylim=(-3, 3))
    axes[1].set(xlabel="tx (logit)", ylabel="|d loss / d tx|", yscale="log",
                title="where each one vanishes or grows")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    path = out / "paper_vs_darknet_xy_gradient.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def single_truth_gradient(size: float, preset: str) -> float:
    """|d L / d tw| at the positive of one square truth of side ``size`` (fraction of the input)
    at the image centre, for head outputs of 0 except tw (predicting half the truth's width), batch 1."""
    anchors = [torch.tensor(a, dtype=torch.float32).view(3, 2) for a in
               ([10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326])]
    criterion = build_criterion(PRESETS[preset], HeadSpec.from_anchors(anchors, strides=STRIDES, num_classes=1))
    preds = [torch.zeros(1, 3 * 6, IMG // s, IMG // s, requires_grad=True) for s in STRIDES]
    targets = torch.tensor([[0, 0, 0.5 + 1e-3, 0.5 + 1e-3, size, size]])
    positives = assign_targets(targets, num_classes=1, anchors_per_level=anchors, strides=STRIDES,
                               grid_sizes=[(IMG // s, IMG // s) for s in STRIDES], img_size=(IMG, IMG),
                               rule="best_anchor")
    level = next(i for i, p in enumerate(positives) if p.num_positives)
    pos = positives[level]
    a, j, i = int(pos.anchor[0]), int(pos.cell_y[0]), int(pos.cell_x[0])
    with torch.no_grad():  # predict half the truth's width and height: tw = gw - ln 2
        preds[level][0, a * 6 + 2, j, i] = float(pos.target_wh[0, 0]) - math.log(2)
        preds[level][0, a * 6 + 3, j, i] = float(pos.target_wh[0, 1]) - math.log(2)
    criterion(preds, targets, IMG).total.backward()
    return abs(float(preds[level].grad[0, a * 6 + 2, j, i]))


def size_panel(out: Path) -> tuple[Path, list[tuple[float, float, float]]]:
    sizes = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
    rows = [(size, single_truth_gradient(size, "darknet"), single_truth_gradient(size, "paper")) for size in sizes]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, [r[1] for r in rows], "o-", label="|dL/dtw| darknet (2 - wh scale)")
    ax.plot(sizes, [r[2] for r in rows], "s--", label="|dL/dtw| paper (no scale)")
    ax.set(xlabel="truth side (fraction of the input)", ylabel="|d L / d tw| (prediction at half the size)",
           title="w gradient across box sizes")
    ax.legend()
    fig.tight_layout()
    path = out / "paper_vs_darknet_wh_scale.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path, rows


def delta_check() -> float:
    """max |darknet's delta - (-d BCE / d logit)| over random logits and targets (float64)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(10000, dtype=torch.float64, generator=gen) * 4
    targets = torch.rand(10000, dtype=torch.float64, generator=gen)
    logits.requires_grad_()
    bce_with_logits(logits, targets).sum().backward()
    delta = targets - torch.sigmoid(logits.detach())  # yolo_layer.c: delta = truth - sigmoid(output)
    return float((delta + logits.grad).abs().max())


def term_magnitudes() -> dict[str, dict[str, list[float]]]:
    """Every unweighted term per level of both presets on the same batch (16 shapes images, an untrained nano
    model with seed 0)."""
    cfg = load_config(REPO / "configs" / "shapes_nano.yaml")
    dataset = build_dataset(cfg.data, "val", train=False)
    images, targets, _ = collate([dataset[i] for i in range(16)])
    torch.manual_seed(0)
    model = build_model(cfg.model, dataset.num_classes).eval()
    with torch.no_grad():
        preds = model(images)
    head = build_head(cfg, dataset.num_classes)  # both presets score classes with sigmoids
    result = {}
    for name, loss in PRESETS.items():
        criterion = build_criterion(loss, head)
        out = criterion(preds, targets, images.shape[-2:])
        result[name] = {term: values.tolist() for term, values in out.terms.items()}
        result[name]["ignored negatives (count)"] = out.diagnostics["ignored"].tolist()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, help="a finished paper_vs_darknet study folder (its results.md)")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    figures = args.out / "figures"
    figures.mkdir(parents=True, exist_ok=True)

    xy_png = xy_gradient_panel(figures)
    wh_png, size_rows = size_panel(figures)
    delta_error = delta_check()
    magnitudes = term_magnitudes()

    lines = ["# The YOLOv3 paper's loss vs darknet's", "",
             "Written by `python scripts/compare_paper_darknet.py"
             + (f" --study {args.study}" if args.study else "") + "`.", "",
             "## The x, y gradient", "",
             f"![x gradient]({xy_png.relative_to(args.out)})", "",
             "darknet's BCE on the logit gives `sig(tx) - gx`: bounded by 1, zero only at the target. Squared error on "
             "the sigmoid multiplies that by `sig(tx) (1 - sig(tx))`, which vanishes when the logit saturates: a "
             "prediction stuck at the wrong side of its cell gets almost no gradient. The paper's squared error in "
             "t-space gives `tx - logit(gx)`, unbounded: it grows linearly with the logit and is large for targets "
             "near the cell border, where `logit(gx)` is large.", "",
             "## darknet's delta is the BCE gradient", "",
             f"Over 10 000 random logits and soft targets (float64), max |delta - (-dBCE/dlogit)| = {delta_error:.1e}, "
             "with `delta = truth - sigmoid(output)` as in `yolo_layer.c`.", "",
             "## Small vs large boxes", "",
             f"![w gradient]({wh_png.relative_to(args.out)})", "",
             "| truth side | darknet dL/dtw | paper dL/dtw | ratio |", "|---|---|---|---|"]
    lines += [f"| {s:.2f} | {dw:.3f} | {pw:.3f} | {dw / pw:.2f} |" for s, dw, pw in size_rows]
    lines += ["", "One square truth at the image centre, its w and h predicted at half their size (`tw = gw - ln 2`), "
              "batch 1, gradient at its positive. darknet's `2 - w*h` doubles the coordinate gradient of a small box and leaves "
              "that of a box covering the whole input unchanged (1.7x between the 0.02 and the 0.9 box here); the "
              "paper's loss weighs every box alike.", "",
              "## Term magnitudes on one batch", "",
              "16 validation images of the synthetic shapes, an untrained nano model (seed 0), unweighted terms per "
              "level P3 / P4 / P5 (per image):", "",
              "| term | darknet | paper |", "|---|---|---|"]
    for term in magnitudes["darknet"]:
        fmt = (lambda v: " / ".join(f"{x:.3f}" for x in v))
        lines.append(f"| {term} | {fmt(magnitudes['darknet'][term])} | {fmt(magnitudes['paper'][term])} |")
    if args.study and (args.study / "results.md").is_file():
        lines += ["", "## Training comparison", "",
                  f"`python scripts/ablate.py configs/ablations/paper_vs_darknet.yaml`, its results from `{args.study}"
                  "/results.md`: the CPU study protocol ([studies.md](studies.md#study-protocol)), each variant "
                  "against darknet's loss paired by seed. What it says about the papers' claims, and what a synthetic "
                  "CPU proxy cannot tell about full scale: [findings.md](findings.md).", "",
                  (args.study / "results.md").read_text().split("\n", 2)[2]]
    report = args.out / "paper_vs_darknet.md"
    report.write_text("\n".join(lines) + "\n")
    print(f"wrote {report}, {xy_png}, {wh_png}")


if __name__ == "__main__":
    main()
