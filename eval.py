"""Evaluate a checkpoint, or darknet weights, on the validation split: COCO AP (pycocotools) and VOC AP.

    python eval.py --checkpoint runs/shapes_nano/best.pt [--set eval.conf_thresh=0.01] [--out DIR]
    python eval.py --config configs/recipes/coco_darknet.yaml --set model.pretrained=weights/yolov3.weights

Bad input (a broken image, a bad box) stops the evaluation with the file named: a metric must not silently
leave images out. ``--set data.on_bad=skip`` drops and counts them instead.
"""

from __future__ import annotations

from yolo_loss.allocator import reexec_with_allocator_settings

if __name__ == "__main__":
    reexec_with_allocator_settings()  # before torch is imported: glibc reads its settings at start-up

import argparse
import json
from pathlib import Path

from yolo_loss.checkpoint import CheckpointError, load_checkpoint
from yolo_loss.config.load import apply_overrides, config_from_dict, exit_on_config_error, load_config
from yolo_loss.darknet.weights import DarknetWeightsError, load_darknet_weights
from yolo_loss.data import DataError, build_dataset, build_loader
from yolo_loss.train.engine import evaluate, format_metrics, memory_format
from yolo_loss.eval.metrics import write_results_json
from yolo_loss.head import build_head
from yolo_loss.model import YOLOv3, build_model
from yolo_loss.train.runtime import select_device
from yolo_loss.config.schema import Config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a checkpoint of train.py (its config comes with it)")
    source.add_argument("--config", type=Path, help="a config whose model.pretrained is a complete darknet "
                                                     ".weights file (yolov3.weights), to evaluate that file")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override the config (eval.*, data.*, model.pretrained keys)")
    parser.add_argument("--out", type=Path, help="where to write eval_metrics.json and detections.json "
                                                  "(default: next to the checkpoint or the weights)")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                        help="evaluate the EMA weights when the checkpoint has them")
    args = parser.parse_args()
    with exit_on_config_error(CheckpointError, DataError, DarknetWeightsError):
        if args.checkpoint:
            state = load_checkpoint(args.checkpoint)
            cfg = config_from_dict(state["config"], source=str(args.checkpoint))
        else:
            cfg = load_config(args.config)
        cfg = apply_overrides(cfg, ["data.on_bad=error", *args.set])  # the user's --set comes last and wins
        dataset = build_dataset(cfg.data, "val", train=False)
        if args.checkpoint:
            check_class_names(state.get("class_names"), dataset.class_names, args.checkpoint)
        device = select_device(cfg.train.device)
        model = build_model(cfg.model, dataset.num_classes).to(device, memory_format=memory_format(cfg))
        if args.checkpoint:
            model.load_state_dict(state["ema"]["module"] if args.ema and state.get("ema") else state["model"])
            out = args.out or args.checkpoint.parent
        else:
            out = args.out or Path(cfg.model.pretrained).with_suffix(".eval")
            load_complete_darknet_weights(model, cfg)
    head = build_head(cfg, dataset.num_classes)  # what evaluate scores with: the head the model was trained for
    print(f"scoring: objectness x {head.class_activation} of the class logits (loss.cls={cfg.loss.cls})")
    loader = build_loader(dataset, cfg.eval.batch_size, shuffle=False, workers=cfg.data.workers, seed=0)
    metrics, _, evaluator = evaluate(model, loader, head, None, cfg, device)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_metrics.json").write_text(json.dumps(metrics, indent=2))
    write_results_json(evaluator.results(), out / "detections.json")
    print(format_metrics(metrics))
    print(format_per_class(evaluator.per_class_ap50(), dataset))
    print(f"wrote {out / 'eval_metrics.json'} and {out / 'detections.json'}")


def check_class_names(trained: list[str] | None, evaluated: list[str], checkpoint: Path) -> None:
    """Refuse to score a model on classes other than those it was trained on (same count, other names or order:
    the class outputs would be read as the wrong classes)."""
    if trained is not None and list(trained) != list(evaluated):
        raise DataError(f"{checkpoint} was trained on the classes {', '.join(trained)}; the evaluation set is read "
                        f"with {', '.join(evaluated)}: evaluate on data with the training's classes (data.classes)")


def format_per_class(per_class: dict[str | int, float], dataset) -> str:
    """VOC AP50 of each class that has boxes in the evaluation set, by name, and the number of its boxes."""
    boxes = [0] * dataset.num_classes
    for record in dataset.records:
        for label in record.labels[~record.difficult].tolist():
            boxes[label] += 1
    rows = []
    for name, category_id, count in zip(dataset.class_names, dataset.category_ids, boxes):
        ap = per_class.get(name, per_class.get(category_id))  # keyed by id where names repeat
        rows.append(f"| {name} | {'-' if ap is None else f'{ap:.3f}'} | {count} |")
    return "| class | VOC_AP50 | boxes |\n|---|---|---|\n" + "\n".join(rows)


def load_complete_darknet_weights(model: YOLOv3, cfg: Config) -> None:
    """Load ``cfg.model.pretrained`` into ``model``, refusing a partial file (a backbone has no detector head)."""
    if not cfg.model.pretrained:
        raise DarknetWeightsError("--config evaluates the darknet weights of model.pretrained, which is not set; "
                                  "add --set model.pretrained=PATH")
    report = load_darknet_weights(model, Path(cfg.model.pretrained))
    if report.layers_loaded < report.layers_total:
        raise DarknetWeightsError(f"{cfg.model.pretrained} holds {report.layers_loaded} of the model's "
                                  f"{report.layers_total} convolutions: a backbone, not a detector to evaluate")
    print(report)


if __name__ == "__main__":
    main()
