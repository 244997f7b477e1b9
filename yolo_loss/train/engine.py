"""Training and evaluation loops. ``train.py`` and ``eval.py`` only wire these to the command line.

The training step reads top to bottom: learning rate, forward, loss, non-finite check, backward, clip, step, EMA,
log, evaluation when due (``train.eval_points`` spread over the run, and before the first step); a checkpoint per
epoch. With ``train.amp`` the forward alone runs under autocast (:func:`amp_dtype`: float16 on CUDA, bfloat16 on
the CPU); the loss, the logged statistics and the evaluation stay in float32. Under ``torchrun`` the same loop runs
in every process (:mod:`yolo_loss.train.distributed`: each its slice of the batch, gradients averaged, rank 0 alone
writes).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from yolo_loss.checkpoint import load_checkpoint, save_checkpoint, state_has_nonfinite
from yolo_loss.config.load import config_changes, config_hash, config_to_dict
from yolo_loss.config.schema import Config
from yolo_loss.darknet.weights import load_darknet_weights
from yolo_loss.data import DetectionDataset, build_dataset, build_loader
from yolo_loss.data.transforms import unletterbox_boxes
from yolo_loss.eval.metrics import Evaluator
from yolo_loss.eval.postprocess import postprocess
from yolo_loss.head import HeadSpec, build_head
from yolo_loss.losses.criterion import LossResult, YoloCriterion, build_criterion
from yolo_loss.model import build_model
from yolo_loss.tensorboard.log import LEVEL_NAMES, RunLogger, loss_scalars
from yolo_loss.train import distributed as dist
from yolo_loss.train.optim import BATCH_NORMS, ModelEMA, build_optimizer, grad_norm_and_clip, lr_at, set_lr
from yolo_loss.train.pretrain import backbone_start, load_pretrained_backbone
from yolo_loss.train.run_folder import FINISHED, RUNNING, STOPPED, RunMetrics, RunStatus
from yolo_loss.train.runtime import native_bfloat16, rng_state, seed_everything, set_rng_state

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
        if isinstance(module, BATCH_NORMS):
            module.eval()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, head: HeadSpec, criterion: YoloCriterion | None, cfg: Config,
             device: torch.device) -> tuple[dict[str, float], dict[str, float], Evaluator]:
    """Run the model over a loader: COCO and VOC metrics, and (when a criterion is given) the mean loss terms under
    the training tags (:func:`~yolo_loss.tensorboard.log.loss_scalars`).

    The detections are scored with ``head``, the head description the model was trained with (the trainer's, or
    :func:`~yolo_loss.head.build_head` of the run's config and the data set's classes). Under ``torchrun`` every
    process runs its share of the batches (a loader built with its rank, see :func:`~yolo_loss.data.build_loader`)
    and gets every process's results, in single-process order, before the metrics: every process returns the
    metrics and losses of one process evaluating the whole set.

    The evaluation is in float32 whatever ``train.amp`` trained the model in: autocast is off around the model."""
    model.eval()
    dataset = loader.dataset
    evaluator = Evaluator(dataset.ground_truth_coco, dataset.category_ids)
    per_batch = []  # (image ids, detections in original-image pixels, loss scalars) of each batch
    with torch.autocast(device.type, enabled=False):  # float32, also when called inside an autocast region
        for images, targets, metas in loader:
            images = images.to(device, memory_format=memory_format(cfg), non_blocking=True)
            preds = [p.float() for p in model(images)]
            losses = {}
            if criterion is not None:
                losses = loss_scalars(criterion(preds, targets.to(device), images.shape[-2:], update_state=False),
                                      images.shape[0])
            detections = postprocess(preds, head, conf_thresh=cfg.eval.conf_thresh, nms_iou=cfg.eval.nms_iou,
                                     max_det=cfg.eval.max_det, max_candidates=cfg.eval.max_candidates)
            for det, meta in zip(detections, metas):
                det.boxes_xyxy = unletterbox_boxes(det.boxes_xyxy.cpu(), meta["scale"], meta["pad"],
                                                   meta["orig_size"])
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


@dataclass
class TrainState:
    """Where training is: what a checkpoint holds besides the weights, optimiser, EMA, scaler and random states.

    Attributes:
        epoch: the epoch being trained (0-based); after an epoch ends, the number of epochs finished.
        step: optimiser steps taken (a skipped non-finite step counts).
        best_ap: the best COCO AP evaluated so far (-1 before any).
        nonfinite_skipped: steps skipped for a non-finite loss.
        train_seconds, images_seen: training time (no evaluation) and images, summed over resumes.
        progress: how far the unfinished epoch got (restored from a mid-epoch checkpoint, used once).
        metrics: the last evaluation's metrics; final_terms: the mean weighted terms of the last epoch trained.
        evaluations: every evaluation after a step, ``{"step", "epoch" (fractional), AP, AP50, ...}``: the
            validation curve that ``metrics.json`` keeps (the study report's convergence check reads it).
    """

    epoch: int = 0
    step: int = 0
    best_ap: float = -1.0
    nonfinite_skipped: int = 0
    train_seconds: float = 0.0
    images_seen: int = 0
    progress: EpochProgress = field(default_factory=EpochProgress)
    metrics: dict[str, float] = field(default_factory=dict)
    final_terms: dict[str, float] = field(default_factory=dict)
    evaluations: list[dict[str, float]] = field(default_factory=list)

    # the checkpoint's name of a field where it is not the field's own (checkpoints written before keep loading)
    _CHECKPOINT_KEYS = {"progress": "epoch_progress"}

    def checkpoint_fields(self) -> dict[str, Any]:
        """Every field, by name, for a checkpoint (:func:`save`): what a resumed run needs, what it has measured
        included (a run resumed after its last epoch writes the same ``metrics.json`` as one never stopped)."""
        return {self._CHECKPOINT_KEYS.get(f.name, f.name): copy.deepcopy(dataclasses.asdict(self)[f.name])
                for f in dataclasses.fields(self)}

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> TrainState:
        """The state :meth:`checkpoint_fields` saved; a field a checkpoint lacks (written before it was saved)
        gets its default."""
        values = {f.name: saved[key] for f in dataclasses.fields(cls)
                  if (key := cls._CHECKPOINT_KEYS.get(f.name, f.name)) in saved}
        if "progress" in values:
            values["progress"] = EpochProgress(**values["progress"])
        return cls(**values)


@dataclass
class Trainer:
    """What a run trains with, built once by :func:`build_trainer`; ``net`` is the DDP wrapper in a distributed
    run (the model itself in one process): forward and backward go through it, the model is saved, averaged and
    evaluated."""

    cfg: Config
    run_dir: Path
    device: torch.device
    train_set: DetectionDataset
    val_set: DetectionDataset
    train_loader: DataLoader
    val_loader: DataLoader
    head: HeadSpec
    model: torch.nn.Module
    criterion: YoloCriterion
    optimizer: torch.optim.Optimizer
    ema: ModelEMA | None
    scaler: torch.amp.GradScaler
    total_steps: int
    eval_steps: frozenset[int] = frozenset()
    net: torch.nn.Module | None = None
    logger: RunLogger | dist.Muted | None = None
    start: dict = field(default_factory=dict)  # the pretrained backbone's fingerprint (pretrain.backbone_start)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model


def build_trainer(cfg: Config, run_dir: Path, *, resume: Path | None) -> Trainer:
    """Seed, then build the data, the model (from its pretrained start unless resuming), the head description,
    the criterion and the optimiser, in an order that does not change: the seeds make a run reproducible."""
    device = dist.setup(cfg.train.device)
    seed_everything(cfg.train.seed, cfg.train.deterministic)  # the same in every process: the same data order
    write = dist.on_main(tqdm.write)  # console lines from rank 0 only
    train_set = build_dataset(cfg.data, "train", train=True)
    val_set = build_dataset(cfg.data, "val", train=False)
    if train_set.bad_input.total and dist.is_main():
        write(train_set.bad_input.summary())
        train_set.bad_input.write(run_dir / "bad_inputs.txt")
    train_loader = build_loader(train_set, cfg.train.batch_size, shuffle=True, workers=cfg.data.workers,
                                seed=cfg.train.seed, rank=dist.rank(), world_size=dist.world_size(),
                                augment_seed=cfg.train.augment_seed)
    val_loader = build_loader(val_set, cfg.eval.batch_size, shuffle=False, workers=cfg.data.workers,
                              seed=cfg.train.seed, rank=dist.rank(), world_size=dist.world_size())
    model = build_model(cfg.model, train_set.num_classes).to(device, memory_format=memory_format(cfg))
    if cfg.model.pretrained and resume is None:
        write(str(load_darknet_weights(model, Path(cfg.model.pretrained),
                                       max_layers=cfg.model.pretrained_layers or None)))
    if cfg.model.pretrain.epochs and resume is None:
        write(load_pretrained_backbone(model, cfg, echo=write))
    if cfg.train.batchnorm == "sync":
        model = dist.sync_batchnorm(model, device)
    head = build_head(cfg, train_set.num_classes)
    total_steps = cfg.train.epochs * len(train_loader)
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    return Trainer(cfg, run_dir, device, train_set, val_set, train_loader, val_loader, head, model,
                   build_criterion(cfg.loss, head, img_size=cfg.data.img_size), build_optimizer(model, cfg.train),
                   ModelEMA(model, decay=cfg.train.ema_decay) if cfg.train.ema else None,
                   torch.amp.GradScaler("cuda", enabled=amp_dtype(cfg, device) == torch.float16), total_steps,
                   evaluation_steps(total_steps, cfg.train.eval_points), start=backbone_start(cfg, echo=write))


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The dtype of the model's forward under ``train.amp``: float16 on CUDA (with loss scaling, the trainer's
    ``GradScaler``), bfloat16 on the CPU (float32's exponent range: no loss scaling); None when ``train.amp`` is off
    (float32 throughout). Autocast wraps the model alone: the loss (assignment, ignore rule, terms), the decode of
    the logged statistics and the evaluation run in float32 whatever this is."""
    if not cfg.train.amp:
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    """``'float32'`` (no autocast), ``'bfloat16'`` or ``'float16'``: the ``precision`` of ``metrics.json``."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def precision_line(cfg: Config, device: torch.device, *, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The console line that says in what precision a run trains; bfloat16 on a CPU without bfloat16 instructions
    (:func:`~yolo_loss.train.runtime.native_bfloat16` of ``cpuinfo``) adds a warning line: it trains, but slower
    than float32 would."""
    dtype = amp_dtype(cfg, device)
    if dtype is None:
        return "precision: float32 (train.amp off)"
    where = "CUDA, with loss scaling" if dtype == torch.float16 else device.type.upper()
    line = (f"precision: {precision_name(dtype)} autocast around the model ({where}); "
            "loss and evaluation in float32")
    if dtype == torch.bfloat16 and native_bfloat16(cpuinfo) is False:
        line += ("\nwarning: train.amp=true on a CPU without bfloat16 instructions (avx512_bf16, amx_bf16): "
                 "bfloat16 is emulated here, about ten times slower than float32 on a 2-core AVX2 AMD EPYC "
                 "(docs/speed.md); train.amp=false trains in float32")
    return line


def restore(trainer: Trainer, path: Path, *, force: bool) -> TrainState:
    """Load a checkpoint into the trainer's model, optimiser, EMA and scaler, the random states and the training
    loader's position; returns the training state it holds.

    A checkpoint whose config lacks keys added to the schema since, held here at their defaults, resumes
    (:func:`~yolo_loss.config.load.config_changes`): a new key's default keeps the behaviour from before it.

    Raises:
        ResumeError: the checkpoint was written with another config (the differing keys named) or process count
            (unless ``force``).
    """
    cfg = trainer.cfg
    saved = load_checkpoint(path, map_location="cpu")  # load_state_dict copies onto the model's device
    if saved["config_hash"] != config_hash(cfg):
        changed = config_changes(saved["config"], cfg) if "config" in saved else ["(the checkpoint has no config)"]
        if changed and not force:
            raise ResumeError(f"{path} was written with a different config (hash {saved['config_hash']} vs "
                              f"{config_hash(cfg)}; differing: {', '.join(changed[:8])}"
                              f"{f' and {len(changed) - 8} more' if len(changed) > 8 else ''}); pass "
                              "--force-resume to continue anyway")
        if not changed:
            dist.on_main(tqdm.write)(f"{path}: its config predates keys this version added; they are at their "
                                     "defaults here, so it resumes")
    saved_world = saved.get("world_size", 1)
    if saved_world != dist.world_size() and not force:
        raise ResumeError(f"{path} was written by {saved_world} process(es), a batch of "
                          f"{cfg.train.batch_size * saved_world} images per step; this run has "
                          f"{dist.world_size()} ({cfg.train.batch_size * dist.world_size()} images), which changes "
                          f"the data order and the steps: resume with {saved_world} process(es), or pass "
                          "--force-resume")
    trainer.model.load_state_dict(saved["model"])
    trainer.optimizer.load_state_dict(saved["optimizer"])
    if trainer.ema is not None and saved.get("ema"):
        trainer.ema.load_state_dict(saved["ema"])
    trainer.scaler.load_state_dict(saved["scaler"])
    trainer.criterion.load_state_dict(saved.get("criterion", {}))
    set_rng_state(saved["rng"])
    trainer.train_loader.generator.set_state(saved["loader_generator"])  # as it was at the start of the epoch
    state = TrainState.from_checkpoint(saved)
    # skip the images the epoch's batches so far took, from all processes
    trainer.train_loader.sampler.start = state.progress.batches * cfg.train.batch_size * saved_world
    dist.on_main(tqdm.write)(f"resumed from {path} at epoch {state.epoch + 1}, batch {state.progress.batches}, "
                             f"step {state.step}")
    return state


def save(trainer: Trainer, state: TrainState, name: str, loader_state: torch.Tensor) -> None:
    """Write ``run_dir/name`` (rank 0 only: every process holds the same states) with ``state`` and the training
    loader's generator state ``loader_state``; never over a checkpoint with non-finite weights. Mid-epoch (a
    ``state.progress`` with batches) that is the generator as the epoch began: resuming draws the epoch again and
    skips what was trained (see :class:`~yolo_loss.data.EpochSampler`)."""
    if not dist.is_main():
        return
    bad = state_has_nonfinite(trainer.model.state_dict())
    if bad:
        tqdm.write(f"not saving {name}: non-finite weights in {', '.join(bad[:3])}")
        return
    cfg, ema = trainer.cfg, trainer.ema
    save_checkpoint({"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                     "ema": ema.state_dict() if ema is not None else None, "scaler": trainer.scaler.state_dict(),
                     "criterion": trainer.criterion.state_dict(), **state.checkpoint_fields(),
                     "world_size": dist.world_size(), "rng": rng_state(), "loader_generator": loader_state,
                     "config": config_to_dict(cfg), "config_hash": config_hash(cfg),
                     "class_names": list(trainer.train_set.class_names),
                     "category_ids": list(trainer.train_set.category_ids)}, trainer.run_dir / name)
    if name == "last.pt":
        RunStatus(RUNNING, state.step).write(trainer.run_dir)  # how far a run that fails later got


def train_step(trainer: Trainer, state: TrainState, images: torch.Tensor, targets: torch.Tensor,
               metas: list[dict]) -> dict[str, float] | None:
    """One optimiser step: learning rate, forward, loss, non-finite check, backward, clip, step, EMA, log.
    Returns the batch's weighted terms (averaged over the processes), or None for a skipped non-finite step."""
    cfg, device = trainer.cfg, trainer.device
    lr = lr_at(state.step, trainer.total_steps, cfg.train)
    set_lr(trainer.optimizer, lr)
    images = images.to(device, memory_format=memory_format(cfg), non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    if cfg.data.augment.multiscale:  # darknet's 'random': one size per batch; targets are normalised, so unchanged
        size = random.Random(f"{cfg.train.seed}/{state.step}").choice(cfg.data.augment.multiscale)  # stateless
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    dtype = amp_dtype(cfg, device)  # autocast around the model only; off (float32), the context does nothing
    with torch.autocast(device.type, dtype=dtype or torch.float16, enabled=dtype is not None):
        preds = trainer.net(images)
    preds = [p.float() for p in preds]  # the loss and everything after it in float32, outside autocast
    result = trainer.criterion(preds, targets, images.shape[-2:])

    problem = first_nonfinite(result)
    if dist.any_rank(problem is not None):  # all processes skip (or stop at) this step
        skip_nonfinite(trainer, state, problem or "a loss term is not finite in another process", images,
                       targets, metas)
        return None

    trainer.logger.before_backward(state.step + 1, result, preds, images, targets)  # first batch, term gradients
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(result.total).backward()
    trainer.scaler.unscale_(trainer.optimizer)
    grad_norm = grad_norm_and_clip(trainer.model.parameters(), cfg.train.grad_clip)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    if trainer.ema is not None:
        trainer.ema.update(trainer.model)
    state.step += 1
    trainer.logger.after_step(state.step, result, preds, targets, lr=lr, grad_norm=grad_norm)
    # One device sync per step; averaged over the processes: the terms of the whole batch.
    return dict(zip(result.weighted, dist.mean_over_ranks(
        torch.stack([v.detach().sum() for v in result.weighted.values()])).tolist()))


def skip_nonfinite(trainer: Trainer, state: TrainState, problem: str, images: torch.Tensor, targets: torch.Tensor,
                   metas: list[dict]) -> None:
    """A non-finite loss: save the batch and the weights, then skip the step, or stop (:class:`NonFiniteLoss`)."""
    # each process saves its own part of the batch
    dump = trainer.run_dir / "nonfinite" / (f"step{state.step}.pt" if dist.world_size() == 1
                                            else f"step{state.step}.rank{dist.rank()}.pt")
    save_checkpoint({"images": images.cpu(), "targets": targets.cpu(), "step": state.step,
                     "image_ids": [m["image_id"] for m in metas], "model": trainer.model.state_dict()}, dump)
    message = f"step {state.step}: {problem}; batch and weights saved to {dump}"
    state.nonfinite_skipped += 1
    if trainer.cfg.train.on_nonfinite == "stop" or state.nonfinite_skipped > trainer.cfg.train.max_nonfinite:
        trainer.logger.close()
        raise NonFiniteLoss(message)
    dist.on_main(tqdm.write)(f"skipping {message}")
    trainer.optimizer.zero_grad(set_to_none=True)
    state.step += 1


def train_one_epoch(trainer: Trainer, state: TrainState, stop: _StopRequest) -> bool:
    """Train (the rest of) epoch ``state.epoch``; True when a signal stopped it mid-epoch (``last.pt`` saved)."""
    cfg = trainer.cfg
    trainer.net.train()
    if cfg.train.batchnorm == "frozen":
        freeze_batchnorm(trainer.model)
    epoch_loader_state = trainer.train_loader.generator.get_state()
    progress, state.progress = state.progress, EpochProgress()  # a resumed epoch's progress is used once
    # The bar only on a terminal (a log file would get a line per step); the epoch line below always.
    bar = tqdm(trainer.train_loader, desc=f"epoch {state.epoch + 1}/{cfg.train.epochs}", leave=False,
               dynamic_ncols=True, disable=None if dist.is_main() else True, initial=progress.batches,
               total=trainer.steps_per_epoch)
    epoch_start = time.perf_counter() - progress.seconds
    trainer.logger.start_epoch()
    stopping = False
    for images, targets, metas in bar:
        stopping = dist.any_rank(stop.requested)  # all processes stop at the same step
        if state.step >= trainer.total_steps or stopping:
            break
        progress.batches += 1
        weighted = train_step(trainer, state, images, targets, metas)
        if weighted is None:
            continue
        for name, value in weighted.items():
            progress.terms[name] = progress.terms.get(name, 0.0) + value
        progress.steps += 1
        bar.set_postfix({name: f"{value:.3f}" for name, value in weighted.items()}
                        | {"lr": f"{trainer.optimizer.param_groups[0]['lr']:.4f}"})
        if state.step in trainer.eval_steps:
            epoch_start += evaluate_now(trainer, state)  # evaluation is not training time
        if cfg.train.checkpoint_interval and state.step % cfg.train.checkpoint_interval == 0:
            save_mid_epoch(trainer, state, progress, epoch_start, epoch_loader_state)

    if stopping and progress.batches < trainer.steps_per_epoch:  # mid-epoch: resume trains the rest of it
        save_mid_epoch(trainer, state, progress, epoch_start, epoch_loader_state)
        return True
    if progress.steps:
        seconds = time.perf_counter() - epoch_start
        state.train_seconds += seconds
        state.images_seen += progress.steps * cfg.train.batch_size * dist.world_size()
        state.final_terms = {name: value / progress.steps for name, value in progress.terms.items()}
        state.final_terms["total"] = sum(state.final_terms.values())
        dist.on_main(tqdm.write)(
            f"epoch {state.epoch + 1}/{cfg.train.epochs}: loss {sum(progress.terms.values()) / progress.steps:.3f} ("
            + ", ".join(f"{k} {v / progress.steps:.3f}" for k, v in progress.terms.items())
            + f"), {progress.steps * cfg.train.batch_size * dist.world_size() / seconds:.1f} img/s, {seconds:.0f} s")
    state.epoch += 1
    return False


def save_mid_epoch(trainer: Trainer, state: TrainState, progress: EpochProgress, epoch_start: float,
                   epoch_loader_state: torch.Tensor) -> None:
    state.progress = EpochProgress(progress.batches, dict(progress.terms), progress.steps,
                                   time.perf_counter() - epoch_start)
    save(trainer, state, "last.pt", epoch_loader_state)
    state.progress = EpochProgress()


def evaluation_steps(total_steps: int, points: int) -> frozenset[int]:
    """The steps after which to evaluate: ``train.eval_points`` of them spread evenly, the last at the end
    (``round(k * total_steps / points)`` for k = 1 .. points)."""
    return frozenset(max(1, round(k * total_steps / points)) for k in range(1, points + 1))


def evaluate_now(trainer: Trainer, state: TrainState) -> float:
    """Evaluate the EMA (or raw) weights, log, and save ``best.pt`` at a new best AP (not for the untrained model at
    step 0); then back to training mode. Returns the seconds it took (not training time)."""
    tick = time.perf_counter()
    metrics, val_losses, evaluator = evaluate(trainer.eval_model, trainer.val_loader, trainer.head,
                                              trainer.criterion, trainer.cfg, trainer.device)
    trainer.logger.evaluation(state.step, metrics, val_losses, evaluator)
    dist.on_main(tqdm.write)(f"step {state.step} (epoch {state.epoch + 1}): "
                             + "  ".join(f"{k} {metrics[k]:.3f}" for k in METRIC_KEYS if k in metrics))
    if state.step:
        state.metrics = metrics
        state.evaluations.append({"step": state.step, "epoch": round(state.step / trainer.steps_per_epoch, 4),
                                  **{k: metrics[k] for k in METRIC_KEYS if k in metrics}})
        if metrics.get("AP", 0.0) > state.best_ap:
            state.best_ap = metrics["AP"]
            save(trainer, state, "best.pt", trainer.train_loader.generator.get_state())
    trainer.net.train()
    if trainer.cfg.train.batchnorm == "frozen":
        freeze_batchnorm(trainer.model)
    trainer.logger.start_epoch()  # the images-per-second clock restarts after the evaluation
    return time.perf_counter() - tick


def train(cfg: Config, run_dir: Path, *, resume: Path | None = None, force_resume: bool = False, label: str = "",
          varied: tuple[str, ...] = ()) -> TrainResult:
    """Train ``cfg`` in ``run_dir`` (created by the caller); resume from a checkpoint when given. ``label`` and
    ``varied`` name the run and the settings its study varies in the HParams table (see :class:`RunLogger`).

    Under ``torchrun`` every process calls this with the same arguments (:mod:`yolo_loss.train.distributed`);
    ``train.batch_size`` is then the batch of each process, and a step trains on ``batch_size`` x processes images.
    """
    trainer = build_trainer(cfg, run_dir, resume=resume)
    dist.on_main(tqdm.write)(precision_line(cfg, trainer.device))
    state = restore(trainer, resume, force=force_resume) if resume is not None else TrainState()
    trainer.net = dist.data_parallel(trainer.model, trainer.device)
    trainer.logger = dist.on_main(RunLogger)(run_dir, cfg, trainer.head, trainer.train_set.class_names,
                                             trainer.val_set, trainer.device, terms=trainer.criterion.terms,
                                             label=label, varied=varied,
                                             resume_step=state.step if resume is not None else None)
    if resume is None and cfg.train.eval_at_start:
        evaluate_now(trainer, state)  # step 0: the untrained model, the start of every validation curve
    dist.on_main(RunStatus(RUNNING, state.step).write)(run_dir)
    with _StopRequest() as stop:
        while state.epoch < cfg.train.epochs and state.step < trainer.total_steps:
            if train_one_epoch(trainer, state, stop):
                trainer.logger.close()
                stopped = RunStatus(STOPPED, state.step)
                dist.on_main(stopped.write)(run_dir)
                dist.on_main(tqdm.write)(stopped.describe(run_dir))
                return TrainResult(run_dir, state.metrics, state.step, stopped=True)
            save(trainer, state, "last.pt", trainer.train_loader.generator.get_state())
    if not state.metrics:  # nothing evaluated (eval_points 0, or resumed from a checkpoint that kept no metrics)
        state.metrics, _, _ = evaluate(trainer.eval_model, trainer.val_loader, trainer.head, trainer.criterion, cfg,
                                       trainer.device)
    trainer.logger.hparams()  # the run's settings beside its final metrics, for the HParams table
    trainer.logger.close()
    summary = RunMetrics(metrics=state.metrics, steps=state.step, final_terms=state.final_terms,
                         train_seconds=state.train_seconds,
                         images_per_sec=state.images_seen / state.train_seconds if state.train_seconds else 0.0,
                         nonfinite_skipped=state.nonfinite_skipped, world_size=dist.world_size(), start=trainer.start,
                         precision=precision_name(amp_dtype(cfg, trainer.device)),
                         threads=torch.get_num_threads(), evaluations=state.evaluations)
    if dist.is_main():
        summary.write(run_dir)
        RunStatus(FINISHED, state.step).write(run_dir)
    return TrainResult(run_dir, state.metrics, state.step)


def format_metrics(metrics: dict[str, float]) -> str:
    """A small markdown table of the metrics."""
    keys = [k for k in METRIC_KEYS if k in metrics]
    return ("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n| "
            + " | ".join(f"{metrics[k]:.3f}" for k in keys) + " |")
