"""Evaluate a checkpoint: COCO AP (pycocotools) and VOC AP on the validation split of its config.

    python eval.py --checkpoint runs/shapes_nano/best.pt [--set eval.conf_thresh=0.01] [--out DIR]
"""

from __future__ import annotations

from yolo_loss.allocator import reexec_with_allocator_settings

if __name__ == "__main__":
    reexec_with_allocator_settings()  # before torch is imported: glibc reads its settings at start-up

import argparse
import json
from pathlib import Path

from yolo_loss.checkpoint import CheckpointError, load_checkpoint
from yolo_loss.config import apply_overrides, config_from_dict, exit_on_config_error
from yolo_loss.data import DataError, build_dataset, build_loader
from yolo_loss.engine import evaluate, format_metrics, memory_format
from yolo_loss.evaluation import write_results_json
from yolo_loss.model import build_model
from yolo_loss.runtime import select_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override the checkpoint's config (eval.*, data.* keys)")
    parser.add_argument("--out", type=Path, help="where to write metrics.json and detections.json "
                                                  "(default: next to the checkpoint)")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                        help="evaluate the EMA weights when the checkpoint has them")
    args = parser.parse_args()
    with exit_on_config_error(CheckpointError, DataError):
        state = load_checkpoint(args.checkpoint)
        cfg = apply_overrides(config_from_dict(state["config"], source=str(args.checkpoint)), args.set)
        dataset = build_dataset(cfg.data, "val", train=False)
    device = select_device(cfg.train.device)
    loader = build_loader(dataset, cfg.eval.batch_size, shuffle=False, workers=cfg.data.workers, seed=0)
    model = build_model(cfg.model, dataset.num_classes).to(device, memory_format=memory_format(cfg))
    weights = state["ema"]["module"] if args.ema and state.get("ema") else state["model"]
    model.load_state_dict(weights)
    metrics, _, evaluator = evaluate(model, loader, None, cfg, device)
    out = args.out or args.checkpoint.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_metrics.json").write_text(json.dumps(metrics, indent=2))
    write_results_json(evaluator.results(), out / "detections.json")
    print(format_metrics(metrics))
    print(f"wrote {out / 'eval_metrics.json'} and {out / 'detections.json'}")


if __name__ == "__main__":
    main()
