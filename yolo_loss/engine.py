"""Training and evaluation loops. ``train.py`` and ``eval.py`` only wire these to the command line.

The training step reads top to bottom: learning rate, forward, loss, non-finite check, backward, clip, step, EMA,
log; then per epoch evaluation and checkpoints. Under ``torchrun`` the same loop runs in every process
(:mod:`yolo_loss.distributed`: each its slice of the batch, gradients averaged, rank 0 alone writes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from yolo_loss import distributed as dist
from yolo_loss.checkpoint import load_checkpoint, save_checkpoint, state_has_nonfinite
from yolo_loss.config import config_hash, config_to_dict
from yolo_loss.darknet_weights import load_darknet_weights
from yolo_loss.data import build_dataset, build_loader
from yolo_loss.data.transforms import unletterbox_boxes
from yolo_loss.evaluation import Evaluator, postprocess
from yolo_loss.losses.criterion import LossResult, YoloCriterion, build_criterion
from yolo_loss.model import anchors_per_level, build_model
from yolo_loss.optim import ModelEMA, build_optimizer, grad_norm_and_clip, lr_at, set_lr
from yolo_loss.runtime import rng_state, seed_everything, set_rng_state
from yolo_loss.schema import Config
from yolo_loss.tensorboard_log import LEVEL_NAMES, RunLogger, loss_scalars

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "VOC07_AP50", "VOC_AP50")


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or inf; the message names the term and the level."""


class ResumeError(ValueError):
    """A checkpoint cannot be resumed with this config; the message says why and how to force it."""


@dataclass
class EpochProgress:
    """How far an unfinished epoch got, as a mid-epoch checkpoint stores it: batches consumed, the summed weighted
    terms and the optimiser steps behind them, and the seconds spent."""

    batches: int = 0
    terms: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, float]
    steps: int
    stopped: bool = False  # by SIGINT/SIGTERM, with last.pt saved to resume from


def first_nonfinite(result: LossResult) -> str | None:
    """``'<term> at <level>'`` of the first non-finite loss term, or None."""
    if bool(torch.isfinite(torch.stack([*result.terms.values(), result.total.detach().expand(3)])).all()):
        return None  # the common case, with one device sync
    for name, per_level in result.terms.items():
        for level, value in zip(LEVEL_NAMES, per_level.detach().tolist()):
            if not math.isfinite(value):
                return f"loss term '{name}' at level {level} is {value}"
    if not torch.isfinite(result.total):
        return f"the weighted total is {float(result.total)}"
    return None


def memory_format(cfg: Config) -> torch.memory_format:
    """The layout of the model's weights and input images (``train.channels_last``)."""
    return torch.channels_last if cfg.train.channels_last else torch.contiguous_format


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """``train.batchnorm=frozen``: every BatchNorm in eval mode, normalising with its running statistics and not
    updating them (its scale and shift still learn); call after ``model.train()``."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, criterion: YoloCriterion | None, cfg: Config, device: torch.device,
             ) -> tuple[dict[str, float], dict[str, float], Evaluator]:
    """Run the model over a loader: COCO and VOC metrics, and (when a criterion is given) the mean loss terms under
    the training tags (:func:`~yolo_loss.tensorboard_log.loss_scalars`).

    Under ``torchrun`` every process runs its share of the batches (a loader built with its rank, see
    :func:`~yolo_loss.data.dataset.build_loader`) and gets every process's results, in single-process order, before
    the metrics: every process returns the metrics and losses of one process evaluating the whole set."""
    model.eval()
    dataset = loader.dataset
    evaluator = Evaluator(dataset.ground_truth_coco, dataset.category_ids)
    anchors = [a.to(device) for a in anchors_per_level(cfg.model, cfg.data.img_size)]
    per_batch = []  # (image ids, detections in original-image pixels, loss scalars) of each batch
    for images, targets, metas in loader:
        images = images.to(device, memory_format=memory_format(cfg), non_blocking=True)
        preds = [p.float() for p in model(images)]
        losses = {}
        if criterion is not None:
            losses = loss_scalars(criterion(preds, targets.to(device), images.shape[-2:]), images.shape[0])
        detections = postprocess(preds, anchors, model.strides, conf_thresh=cfg.eval.conf_thresh,
                                 nms_iou=cfg.eval.nms_iou, max_det=cfg.eval.max_det,
                                 max_candidates=cfg.eval.max_candidates)
        for det, meta in zip(detections, metas):
            det.boxes_xyxy = unletterbox_boxes(det.boxes_xyxy.cpu(), meta["scale"], meta["pad"], meta["orig_size"])
            det.scores, det.labels = det.scores.cpu(), det.labels.cpu()
        per_batch.append(([m["image_id"] for m in metas], detections, losses))
    loss_sums: dict[str, float] = {}
    batches = 0
    for image_ids, detections, losses in dist.gather_batches(per_batch):
        evaluator.update(image_ids, detections)
        for tag, value in losses.items():
            loss_sums[tag] = loss_sums.get(tag, 0.0) + value
        batches += criterion is not None
    metrics = evaluator.compute()
    return metrics, {k: v / max(batches, 1) for k, v in loss_sums.items()}, evaluator


class _StopRequest:
    """SIGINT/SIGTERM: finish the current step, save a checkpoint, exit cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(f"signal {signum}: stopping after this step and saving a checkpoint")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(cfg: Config, run_dir: Path, *, resume: Path | None = None, force_resume: bool = False) -> TrainResult:
    """Train ``cfg`` in ``run_dir`` (created by the caller); resume from a checkpoint when given.

    Under ``torchrun`` every process calls this with the same arguments (:mod:`yolo_loss.distributed`);
    ``train.batch_size`` is then the batch of each process, and a step trains on ``batch_size`` x processes images.
    """
    device = dist.setup(cfg.train.device)
    seed_everything(cfg.train.seed, cfg.train.deterministic)  # the same in every process: the same data order
    write = dist.on_main(tqdm.write)  # console lines from rank 0 only
    total_batch = cfg.train.batch_size * dist.world_size()  # images per optimiser step, over all processes
    train_set = build_dataset(cfg.data, "train", train=True)
    val_set = build_dataset(cfg.data, "val", train=False)
    if train_set.bad_input.total and dist.is_main():
        write(train_set.bad_input.summary())
        train_set.bad_input.write(run_dir / "bad_inputs.txt")
    train_loader = build_loader(train_set, cfg.train.batch_size, shuffle=True, workers=cfg.data.workers,
                                seed=cfg.train.seed, rank=dist.rank(), world_size=dist.world_size())
    val_loader = build_loader(val_set, cfg.eval.batch_size, shuffle=False, workers=cfg.data.workers,
                              seed=cfg.train.seed, rank=dist.rank(), world_size=dist.world_size())
    num_classes = train_set.num_classes
    model = build_model(cfg.model, num_classes).to(device, memory_format=memory_format(cfg))
    if cfg.model.pretrained and resume is None:
        write(str(load_darknet_weights(model, Path(cfg.model.pretrained),
                                       max_layers=cfg.model.pretrained_layers or None)))
    if cfg.train.batchnorm == "sync":
        model = dist.sync_batchnorm(model, device)
    criterion = build_criterion(cfg.loss, num_classes=num_classes,
                                anchors_per_level=anchors_per_level(cfg.model, cfg.data.img_size),
                                strides=model.strides)
    optimizer = build_optimizer(model, cfg.train)
    ema = ModelEMA(model, decay=cfg.train.ema_decay) if cfg.train.ema else None
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    steps_per_epoch = len(train_loader)
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)

    step, start_epoch, best_ap, nonfinite_skipped = 0, 0, -1.0, 0
    train_seconds, images_seen = 0.0, 0  # the training steps only (no evaluation), summed over resumes
    # Where a checkpoint written mid-epoch left its epoch: batches consumed, summed terms, steps and seconds.
    progress = EpochProgress()
    if resume is not None:
        state = load_checkpoint(resume, map_location="cpu")  # load_state_dict copies onto the model's device
        if state["config_hash"] != config_hash(cfg) and not force_resume:
            raise ResumeError(f"{resume} was written with a different config (hash {state['config_hash']} vs "
                              f"{config_hash(cfg)}); pass --force-resume to continue anyway")
        saved_world = state.get("world_size", 1)
        if saved_world != dist.world_size() and not force_resume:
            raise ResumeError(f"{resume} was written by {saved_world} process(es), a batch of "
                              f"{cfg.train.batch_size * saved_world} images per step; this run has "
                              f"{dist.world_size()} ({total_batch} images), which changes the data order and the "
                              f"steps: resume with {saved_world} process(es), or pass --force-resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        scaler.load_state_dict(state["scaler"])
        step, start_epoch, best_ap = state["step"], state["epoch"], state["best_ap"]
        nonfinite_skipped = state.get("nonfinite_skipped", 0)
        train_seconds, images_seen = state.get("train_seconds", 0.0), state.get("images_seen", 0)
        set_rng_state(state["rng"])
        train_loader.generator.set_state(state["loader_generator"])  # as it was at the start of the epoch
        progress = EpochProgress(**state.get("epoch_progress", {}))
        # skip the images the epoch's batches so far took, from all processes
        train_loader.sampler.start = progress.batches * cfg.train.batch_size * saved_world
        write(f"resumed from {resume} at epoch {start_epoch + 1}, batch {progress.batches}, step {step}")

    def checkpoint_state(epoch: int, in_epoch: EpochProgress | None) -> dict:
        # Mid-epoch, the loader's generator as it was when the epoch began, and how far the epoch got: resuming
        # draws the same epoch again and skips what was trained (see EpochSampler).
        loader_state = epoch_loader_state if in_epoch else train_loader.generator.get_state()
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "scaler": scaler.state_dict(),
                "epoch": epoch, "step": step, "best_ap": best_ap, "nonfinite_skipped": nonfinite_skipped,
                "train_seconds": train_seconds, "images_seen": images_seen, "world_size": dist.world_size(),
                "rng": rng_state(), "loader_generator": loader_state,
                "epoch_progress": dataclasses.asdict(in_epoch or EpochProgress()),
                "config": config_to_dict(cfg), "config_hash": config_hash(cfg),
                "class_names": list(train_set.class_names), "category_ids": list(train_set.category_ids)}

    def save(name: str, epoch: int, in_epoch: EpochProgress | None = None) -> None:
        if not dist.is_main():  # every process holds the same weights and states: rank 0 writes them
            return
        state = checkpoint_state(epoch, in_epoch)
        bad = state_has_nonfinite(state["model"])
        if bad:  # never replace a good checkpoint with NaN weights
            write(f"not saving {name}: non-finite weights in {', '.join(bad[:3])}")
            return
        save_checkpoint(state, run_dir / name)

    # Forward and backward go through the DDP wrapper (the model itself in one process), which averages the
    # gradients over the processes; the model is what is saved, averaged (EMA) and evaluated.
    net = dist.data_parallel(model, device)
    tb = dist.on_main(RunLogger)(run_dir, cfg, criterion, train_set.class_names, val_set, device,
                                 resume_step=step if resume is not None else None)
    metrics: dict[str, float] = {}
    final_terms: dict[str, float] = {}  # mean weighted terms of the last epoch trained
    multiscale = cfg.data.augment.multiscale
    stopping = False
    with _StopRequest() as stop:
        for epoch in range(start_epoch, cfg.train.epochs):
            net.train()
            if cfg.train.batchnorm == "frozen":
                freeze_batchnorm(model)
            epoch_loader_state = train_loader.generator.get_state()
            # The bar only on a terminal (a log file would get a line per step); the epoch line below always.
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False, dynamic_ncols=True,
                       disable=None if dist.is_main() else True, initial=progress.batches, total=steps_per_epoch)
            epoch_start = time.perf_counter() - progress.seconds
            tb.start_epoch()
            epoch_terms, epoch_steps, epoch_batches = progress.terms, progress.steps, progress.batches
            progress = EpochProgress()  # a resumed epoch's progress is used once
            for images, targets, metas in bar:
                stopping = dist.any_rank(stop.requested)  # all processes stop at the same step
                if step >= total_steps or stopping:
                    break
                epoch_batches += 1
                lr = lr_at(step, total_steps, cfg.train)
                set_lr(optimizer, lr)
                images = images.to(device, memory_format=memory_format(cfg), non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                if multiscale:  # darknet's 'random': one size per batch; targets are normalised, so unchanged
                    size = random.Random(f"{cfg.train.seed}/{step}").choice(multiscale)  # stateless: resumes exactly
                    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                                             align_corners=False)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    preds = net(images)
                preds = [p.float() for p in preds]
                result = criterion(preds, targets, images.shape[-2:])

                problem = first_nonfinite(result)
                if dist.any_rank(problem is not None):  # all processes skip (or stop at) this step
                    problem = problem or "a loss term is not finite in another process"
                    # each process saves its own part of the batch
                    dump = run_dir / "nonfinite" / (f"step{step}.pt" if dist.world_size() == 1
                                                    else f"step{step}.rank{dist.rank()}.pt")
                    save_checkpoint({"images": images.cpu(), "targets": targets.cpu(), "step": step,
                                     "image_ids": [m["image_id"] for m in metas], "model": model.state_dict()},
                                    dump)
                    message = f"step {step}: {problem}; batch and weights saved to {dump}"
                    nonfinite_skipped += 1
                    if cfg.train.on_nonfinite == "stop" or nonfinite_skipped > cfg.train.max_nonfinite:
                        tb.close()
                        raise NonFiniteLoss(message)
                    write(f"skipping {message}")
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    continue

                tb.before_backward(step + 1, result, preds, images, targets)  # first batch, per-term gradients
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(result.total).backward()
                scaler.unscale_(optimizer)
                grad_norm = grad_norm_and_clip(model.parameters(), cfg.train.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update(model)
                step += 1

                tb.after_step(step, result, preds, targets, lr=lr, grad_norm=grad_norm)
                # One device sync per step; averaged over the processes: the terms of the whole batch.
                weighted = dict(zip(result.weighted, dist.mean_over_ranks(
                    torch.stack([v.detach().sum() for v in result.weighted.values()])).tolist()))
                for name, value in weighted.items():
                    epoch_terms[name] = epoch_terms.get(name, 0.0) + value
                epoch_steps += 1
                bar.set_postfix({name: f"{value:.3f}" for name, value in weighted.items()} | {"lr": f"{lr:.4f}"})
                if cfg.train.checkpoint_interval and step % cfg.train.checkpoint_interval == 0:
                    save("last.pt", epoch, EpochProgress(epoch_batches, epoch_terms, epoch_steps,
                                                        time.perf_counter() - epoch_start))

            if stopping and epoch_batches < steps_per_epoch:  # mid-epoch: resume trains the rest of it
                save("last.pt", epoch, EpochProgress(epoch_batches, epoch_terms, epoch_steps,
                                                    time.perf_counter() - epoch_start))
                tb.close()
                write(f"stopped at step {step}; resume with --resume {run_dir / 'last.pt'}")
                return TrainResult(run_dir, metrics, step, stopped=True)
            if epoch_steps:
                seconds = time.perf_counter() - epoch_start
                train_seconds += seconds
                images_seen += epoch_steps * total_batch
                final_terms = {name: value / epoch_steps for name, value in epoch_terms.items()}
                final_terms["total"] = sum(final_terms.values())
                write(f"epoch {epoch + 1}/{cfg.train.epochs}: loss {sum(epoch_terms.values()) / epoch_steps:.3f} ("
                      + ", ".join(f"{k} {v / epoch_steps:.3f}" for k, v in epoch_terms.items())
                      + f"), {epoch_steps * total_batch / seconds:.1f} img/s, {seconds:.0f} s")

            finished = step >= total_steps or epoch + 1 == cfg.train.epochs
            interval = cfg.train.eval_interval
            if finished or (interval and (epoch + 1) % interval == 0):
                eval_model = ema.module if ema is not None else model
                metrics, val_losses, evaluator = evaluate(eval_model, val_loader, criterion, cfg, device)
                tb.evaluation(step, eval_model, metrics, val_losses, evaluator)
                write(f"epoch {epoch + 1}: " + "  ".join(f"{k} {metrics[k]:.3f}" for k in METRIC_KEYS
                                                           if k in metrics))
                if metrics.get("AP", 0.0) > best_ap:
                    best_ap = metrics["AP"]
                    save("best.pt", epoch + 1)
            save("last.pt", epoch + 1)
            if finished:
                break
    if not metrics:  # resumed from the checkpoint after the last epoch (killed before this point): evaluate it
        metrics, _, _ = evaluate(ema.module if ema is not None else model, val_loader, criterion, cfg, device)
    tb.hparams()  # the run's settings beside its final metrics, for the HParams table
    tb.close()
    summary = {"metrics": metrics, "steps": step, "final_terms": final_terms, "train_seconds": train_seconds,
               "images_per_sec": images_seen / train_seconds if train_seconds else 0.0,
               "nonfinite_skipped": nonfinite_skipped, "world_size": dist.world_size()}
    if dist.is_main():
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(run_dir, metrics, step)


def format_metrics(metrics: dict[str, float]) -> str:
    """A small markdown table of the metrics."""
    keys = [k for k in METRIC_KEYS if k in metrics]
    return ("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n| "
            + " | ".join(f"{metrics[k]:.3f}" for k in keys) + " |")
