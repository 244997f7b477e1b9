"""How far AlexeyAB's hand-written CIoU deltas (``loss.box: ciou_darknet``) are from CIoU's true gradient.

On random positives of a 416-px darknet head (raw tx, ty ~ N(0, 1), tw, th ~ N(0, 0.5), YOLOv3's anchors, truths
near the prediction), per positive: the cosine between AB's step ``delta`` and the true descent direction
``-dL/dt`` of ``1 - CIoU`` through the decode, and the ratio of their lengths, overall and for the centre (tx, ty)
and size (tw, th) channels apart. Prints the quantiles (and ``--json`` the medians for a test).

    python scripts/compare_ciou_darknet.py [--num 20000] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json

import torch

from yolo_loss.boxes import box_cxcywh_to_xyxy, ciou_loss
from yolo_loss.decode import STRIDES, decode_cxcywh
from yolo_loss.losses.ciou_darknet import darknet_ciou_delta
from yolo_loss.config.schema import YOLOV3_ANCHORS

IMG = 416


def compare(num: int = 20000, seed: int = 0) -> dict[str, float]:
    """Medians (and 10 / 90 % quantiles) of the cosine and the length ratio |AB delta| / |true gradient|."""
    gen = torch.Generator().manual_seed(seed)
    level = torch.randint(0, 3, (num,), generator=gen)
    anchor = torch.tensor(YOLOV3_ANCHORS, dtype=torch.float32)[level * 3 + torch.randint(0, 3, (num,), generator=gen)]
    stride = torch.tensor(STRIDES, dtype=torch.float32)[level]
    grid = IMG / stride
    cell = (torch.rand(num, 2, generator=gen) * grid[:, None]).floor()
    raw = torch.cat((torch.randn(num, 2, generator=gen), 0.5 * torch.randn(num, 2, generator=gen)), 1)
    raw.requires_grad_()
    pred = decode_cxcywh(raw, cell, anchor, stride[:, None])
    truth = torch.cat((pred[:, :2].detach() + torch.randn(num, 2, generator=gen) * 0.3 * anchor,
                       anchor * torch.exp(0.4 * torch.randn(num, 2, generator=gen))), 1)
    (true_grad,) = torch.autograd.grad(ciou_loss(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(truth)).sum(), raw)
    delta = darknet_ciou_delta(pred.detach() / IMG, truth / IMG)
    delta[:, 2:] *= raw.detach()[:, 2:].exp()
    descent = -true_grad
    stats = {}
    for name, cols in (("", slice(0, 4)), ("xy_", slice(0, 2)), ("wh_", slice(2, 4))):
        a, b = delta[:, cols], descent[:, cols]
        keep = (a.norm(dim=1) > 0) & (b.norm(dim=1) > 0)
        cosine = torch.nn.functional.cosine_similarity(a[keep], b[keep], dim=1)
        ratio = a[keep].norm(dim=1) / b[keep].norm(dim=1)
        for stat, values in (("cosine", cosine), ("norm_ratio", ratio)):
            for q, label in ((0.1, "q10"), (0.5, "median"), (0.9, "q90")):
                stats[f"{name}{stat}_{label}"] = float(values.quantile(q))
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")
    args = parser.parse_args()
    stats = compare(args.num, args.seed)
    if args.json:
        print(json.dumps(stats))
        return
    print(f"AB darknet CIoU deltas vs the true CIoU descent direction, {args.num} positives at {IMG} px")
    print(f"{'channels':<10}{'cosine q10 / median / q90':>30}{'|AB| / |true| q10 / median / q90':>38}")
    for name, label in (("", "all four"), ("xy_", "tx, ty"), ("wh_", "tw, th")):
        cos = " / ".join(f"{stats[f'{name}cosine_{q}']:.3f}" for q in ("q10", "median", "q90"))
        ratio = " / ".join(f"{stats[f'{name}norm_ratio_{q}']:.1f}" for q in ("q10", "median", "q90"))
        print(f"{label:<10}{cos:>30}{ratio:>38}")


if __name__ == "__main__":
    main()
