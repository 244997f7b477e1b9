"""Translate a darknet YOLOv3 .cfg (its [net] and [yolo] sections) into a config of this project.

    python scripts/import_darknet_cfg.py yolov3-voc.cfg --train-images 16551 > configs/my_voc.yaml

The YAML goes to standard output (or --output); what is not translated is listed at its top and on standard
error. Add the data section (format, root) and, to start from darknet's backbone, model.pretrained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from yolo_loss.darknet.cfg import DarknetCfgError, import_cfg_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cfg", type=Path, help="a darknet .cfg of YOLOv3 (yolov3.cfg, yolov3-voc.cfg)")
    parser.add_argument("--train-images", type=int, metavar="N",
                        help="images in the training set, to turn max_batches into epochs "
                             "(VOC07+12 trainval: 16551; COCO train2017 with annotations: 117266)")
    parser.add_argument("--output", "-o", type=Path, help="write the YAML here instead of standard output")
    args = parser.parse_args()
    try:
        imported = import_cfg_file(args.cfg, train_images=args.train_images)
    except DarknetCfgError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    text = imported.to_yaml(args.cfg.name)
    for note in imported.notes:
        print(f"not imported: {note}", file=sys.stderr)
    if args.output:
        args.output.write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
