"""Write a checkpoint's weights as a darknet .weights file (the EMA weights when it has them).

    python scripts/export_darknet_weights.py runs/voc0712_darknet/best.pt yolov3-voc.weights
    python scripts/export_darknet_weights.py runs/x/last.pt backbone.conv.74 --layers 52   # the backbone only

darknet reads the file with the matching .cfg (yolov3.cfg layout, the classes of the run). darknet's [yolo] layer
scores classes with independent sigmoids, so a model trained with a softmax over its classes (loss.cls=ce, poly1)
is refused, unless only its backbone is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from yolo_loss.checkpoint import CheckpointError, load_checkpoint
from yolo_loss.config.load import config_from_dict
from yolo_loss.darknet.weights import save_darknet_weights
from yolo_loss.head import build_head
from yolo_loss.model import build_model


BACKBONE_CONVOLUTIONS = 52  # Darknet-53 without its classifier: darknet53.conv.74


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("weights", type=Path, help="the .weights file to write")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                        help="export the EMA weights when the checkpoint has them")
    parser.add_argument("--layers", type=int, help="write only the first N convolutions (52: Darknet-53)")
    args = parser.parse_args()
    try:
        state = load_checkpoint(args.checkpoint)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    cfg = config_from_dict(state["config"], source=str(args.checkpoint))
    head = build_head(cfg, len(state["class_names"]))
    if head.class_activation != "sigmoid" and (args.layers is None or args.layers > BACKBONE_CONVOLUTIONS):
        print(f"error: {args.checkpoint} was trained with loss.cls={cfg.loss.cls}, a softmax over the classes, "
              "but darknet's [yolo] layer scores each class with its own sigmoid: darknet would score these "
              f"weights differently. Export the backbone only (--layers {BACKBONE_CONVOLUTIONS}), or train with "
              "loss.cls=bce or focal", file=sys.stderr)
        raise SystemExit(2)
    if (head.decode != "darknet" or set(head.scale_x_y) != {1.0}) and (args.layers is None
                                                                         or args.layers > BACKBONE_CONVOLUTIONS):
        print(f"error: {args.checkpoint} decodes its boxes by model.decode={head.decode} with scale_x_y "
              f"{list(head.scale_x_y)}, but pjreddie's darknet decodes x = i + sig(tx), w = a exp(tw): darknet would "
              f"read these weights as other boxes. Export the backbone only (--layers {BACKBONE_CONVOLUTIONS})",
              file=sys.stderr)
        raise SystemExit(2)
    model = build_model(cfg.model, head.num_classes)
    model.load_state_dict(state["ema"]["module"] if args.ema and state.get("ema") else state["model"])
    written = save_darknet_weights(model, args.weights, images_seen=state.get("images_seen", 0),
                                   max_layers=args.layers)
    print(f"wrote {written} convolutions to {args.weights}")


if __name__ == "__main__":
    main()
