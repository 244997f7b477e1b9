"""Pretrain the backbone of a config on crops of the synthetic shapes (``model.pretrain``) and cache it.

    python scripts/pretrain_backbone.py --config configs/protocol.yaml
    python scripts/pretrain_backbone.py --config configs/shapes_nano.yaml --set model.pretrain.epochs=8

Prints the cache file, the time it took and the held-out accuracy. Training a run with the same config reads the
cached file; a config whose model.pretrain, backbone size or shapes set differ trains (and caches) another.
"""

from __future__ import annotations

import argparse
import sys

from yolo_loss.config.load import add_config_arguments, config_from_args, exit_on_config_error
from yolo_loss.train.pretrain import cache_path, pretrained_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    args = parser.parse_args()
    with exit_on_config_error():
        cfg = config_from_args(args)
    if not cfg.model.pretrain.epochs:
        print("error: model.pretrain.epochs is 0 in this config: nothing to pretrain", file=sys.stderr)
        raise SystemExit(2)
    cached = cache_path(cfg).is_file()
    _, info, path = pretrained_backbone(cfg)
    print(f"{'read' if cached else 'wrote'} {path}: {info['steps']} steps on {info['train_objects']} objects in "
          f"{info['seconds']:.0f} s, validation accuracy {info['val_accuracy']:.3f} ({info['val_objects']} objects)")


if __name__ == "__main__":
    main()
