"""Distributed data-parallel training under torchrun (docs/distributed.md), with gloo on the CPU.

Two processes with batch b each take the steps one process takes with batch 2b (the same weights, EMA and loss
terms to float tolerance, BatchNorm frozen); a two-process run stopped by a signal and resumed under torchrun ends
exactly where the uninterrupted one does; distributed evaluation gives exactly the single-process detections,
metrics and losses. Real ``torchrun`` launches (``python -m torch.distributed.run --standalone``).

Run as a script, this file is the worker of the evaluation test: ``torchrun ... test_distributed.py evaluate
CHECKPOINT OUT.json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from yolo_loss.checkpoint import load_checkpoint
from yolo_loss.config.load import config_from_dict, load_config
from yolo_loss.data import build_dataset, build_loader
from yolo_loss.data.loader import EpochSampler, RankBatchSampler
from yolo_loss.head import build_head
from yolo_loss.losses.criterion import build_criterion
from yolo_loss.model import build_model
from yolo_loss.train import distributed as dist
from yolo_loss.train.engine import evaluate, train

REPO = Path(__file__).resolve().parents[2]

STEPS_PER_EPOCH, EPOCHS = 4, 2  # 32 training images, 8 per step


def write_config(folder: Path, shapes_root: Path, batch_size: int) -> Path:
    """32 training images of 64 px with augmentation and multi-scale, EMA, BatchNorm frozen; a step every call."""
    path = folder / f"batch{batch_size}.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"width": 0.25, "depth": 0.33},
        "data": {"format": "shapes", "root": str(shapes_root), "img_size": 64, "cache": True, "workers": 0,
                 "shapes": {"num_train": 8 * STEPS_PER_EPOCH, "num_val": 8, "image_size": 64, "max_objects": 3},
                 "augment": {"jitter": 0.3, "multiscale": [64, 96]}},
        "train": {"epochs": EPOCHS, "batch_size": batch_size, "burn_in": 2, "ema": True, "batchnorm": "frozen",
                  "eval_points": 1, "eval_at_start": False, "log_interval": 1, "log_images": 0,
                  "checkpoint_interval": 1, "device": "cpu",
                  "out_dir": str(folder / "runs")},
        "eval": {"batch_size": 3},  # 8 images: batches of 3, 3 and 2; under two processes, two for rank 0
        "name": "ddp"}))
    return path


def torchrun_command(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def torchrun_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # PYTHONPATH: for this file as worker


def torchrun(*args: str) -> str:
    done = subprocess.run(torchrun_command(*args), cwd=REPO, env=torchrun_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One process with batch 8 (in this process) and two processes with batch 4 (torchrun, train.py)."""
    folder = tmp_path_factory.mktemp("ddp")
    single = folder / "single"
    single.mkdir()
    train(load_config(write_config(folder, folder / "data", 8)), single)
    output = torchrun("train.py", "--config", str(write_config(folder, folder / "data", 4)))
    assert output.count("run folder:") == 1 and output.count("finished 8 steps") == 1  # rank 0 alone prints
    return {"single": single, "pair": folder / "runs" / "ddp", "config": folder / "batch4.yaml"}


def assert_close_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if a[name].is_floating_point():
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{what} {name}: {m}")
        else:
            assert torch.equal(a[name], b[name]), f"{what} {name}"


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_with_twice_the_batch(runs: dict[str, Path]) -> None:
    single, pair = load_checkpoint(runs["single"] / "last.pt"), load_checkpoint(runs["pair"] / "last.pt")
    assert single["step"] == pair["step"] == STEPS_PER_EPOCH * EPOCHS
    assert single["world_size"] == 1 and pair["world_size"] == 2
    assert pair["images_seen"] == single["images_seen"] == 8 * STEPS_PER_EPOCH * EPOCHS
    assert_close_states(pair["model"], single["model"], "model")
    assert_close_states(pair["ema"]["module"], single["ema"]["module"], "ema")

    # The epoch's loss terms are averaged over the processes: the terms of the whole batch.
    terms = {name: json.loads((runs[name] / "metrics.json").read_text()) for name in ("single", "pair")}
    assert terms["pair"]["final_terms"] == pytest.approx(terms["single"]["final_terms"], rel=1e-5)
    assert (terms["pair"]["world_size"], terms["single"]["world_size"]) == (2, 1)
    assert terms["pair"]["metrics"] == pytest.approx(terms["single"]["metrics"], abs=1e-4)
    # rank 0 alone made the run folder and wrote the run: one events file per split
    assert sorted(path.name for path in runs["pair"].parent.iterdir()) == ["ddp"]
    assert len(list((runs["pair"] / "train").glob("events.*"))) == 1


@pytest.mark.slow
def test_a_two_process_run_stopped_by_a_signal_resumes_exactly(runs: dict[str, Path], tmp_path: Path) -> None:
    """SIGINT to torchrun: it passes the signal on; both processes stop at the same step, rank 0 saves last.pt,
    and ``--resume`` under torchrun ends bitwise where the uninterrupted two-process run ends."""
    run = tmp_path / "run"
    process = subprocess.Popen(torchrun_command("train.py", "--config", str(runs["config"]), "--run-dir", str(run)),
                               cwd=REPO, env=torchrun_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    last, deadline = run / "last.pt", time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the first step's checkpoint (train.checkpoint_interval 1)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=300)
    assert last.exists(), output
    stopped = load_checkpoint(last)
    assert f"stopped at step {stopped['step']}" in output, output
    assert 0 < stopped["step"] < STEPS_PER_EPOCH * EPOCHS and not (run / "metrics.json").exists()

    output = torchrun("train.py", "--config", str(runs["config"]), "--resume", str(last))
    assert f"batch {stopped['epoch_progress']['batches']}, step {stopped['step']}" in output
    final, expected = load_checkpoint(last), load_checkpoint(runs["pair"] / "last.pt")
    for key in ("model", "ema"):
        a, b = (final[key], expected[key]) if key == "model" else (final[key]["module"], expected[key]["module"])
        assert all(torch.equal(a[name], b[name]) for name in b), key


def evaluate_checkpoint(checkpoint: Path) -> dict:
    """The metrics, mean validation losses, detections and image ids of ``checkpoint`` on its validation set, in
    this process or, under torchrun, over all processes (each its share of the batches)."""
    state = load_checkpoint(checkpoint)
    cfg = config_from_dict(state["config"])
    cfg.eval.conf_thresh = 1e-6  # an 8-step model scores about 1e-4 (objectness x class): keep its detections
    device = dist.setup(cfg.train.device)
    dataset = build_dataset(cfg.data, "val", train=False)
    model = build_model(cfg.model, dataset.num_classes).to(device)
    model.load_state_dict(state["model"])
    loader = build_loader(dataset, cfg.eval.batch_size, shuffle=False, workers=0, seed=0, rank=dist.rank(),
                          world_size=dist.world_size())
    head = build_head(cfg, dataset.num_classes)
    criterion = build_criterion(cfg.loss, head, img_size=cfg.data.img_size)
    metrics, losses, evaluator = evaluate(model, loader, head, criterion, cfg, device)
    return {"metrics": metrics, "losses": losses, "results": evaluator.results(),
            "images": [int(i) for i in evaluator.coco_eval.params.imgIds], "local_batches": len(loader)}


@pytest.mark.slow
def test_distributed_evaluation_gives_the_single_process_metrics(runs: dict[str, Path], tmp_path: Path) -> None:
    checkpoint = runs["single"] / "last.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each torchrun process (OMP_NUM_THREADS=1): the same kernels, the same bits
    try:
        single = evaluate_checkpoint(checkpoint)
    finally:
        torch.set_num_threads(threads)
    torchrun(__file__, "evaluate", str(checkpoint), str(tmp_path / "pair.json"))
    pair = json.loads((tmp_path / "pair.json").read_text())
    assert pair["local_batches"] == [2, 1] and single["local_batches"] == 3  # batches 0, 2 | 1
    assert pair["images"] == single["images"] and len(single["images"]) == 8  # each image once
    assert pair["results"] == single["results"] and len(single["results"]) > 0  # the same detections, in order
    assert pair["metrics"] == single["metrics"] and pair["losses"] == single["losses"]
    assert any(value > 0 for value in single["metrics"].values())


def test_each_process_takes_its_slice_of_every_global_batch() -> None:
    """Training: the order and seeds of one process, cut into global batches of 2 x 3, rank r taking the r-th
    3 of each, the rest of the epoch left out, and a resume skipping whole global batches; evaluation: every
    other batch, every image once."""
    size, seed = 14, 5
    one = list(EpochSampler(size, torch.Generator().manual_seed(seed)))
    ranks = [list(EpochSampler(size, torch.Generator().manual_seed(seed), batch_size=3, rank=r, world_size=2))
             for r in range(2)]
    assert ranks[0] == one[0:3] + one[6:9] and ranks[1] == one[3:6] + one[9:12]
    resumed = EpochSampler(size, torch.Generator().manual_seed(seed), batch_size=3, rank=1, world_size=2)
    resumed.start = 6
    assert list(resumed) == one[9:12] and len(resumed) == 6
    batches = [list(RankBatchSampler(7, 3, r, 2)) for r in range(2)]
    assert batches == [[[0, 1, 2], [6]], [[3, 4, 5]]]


def test_one_process_is_untouched_by_the_distributed_helpers() -> None:
    assert (dist.rank(), dist.world_size(), dist.is_main(), dist.any_rank(True)) == (0, 1, True, True)
    assert dist.gather_batches([1, 2]) == [1, 2] and dist.broadcast_object("x") == "x"
    model = torch.nn.BatchNorm2d(2)
    assert dist.data_parallel(model, torch.device("cpu")) is model
    assert dist.sync_batchnorm(model, torch.device("cpu")) is model


if __name__ == "__main__":  # the worker: torchrun ... test_distributed.py evaluate CHECKPOINT OUT.json
    _, command, checkpoint_path, out_path = sys.argv
    assert command == "evaluate"
    evaluated = evaluate_checkpoint(Path(checkpoint_path))
    local_batches = [None] * dist.world_size()
    torch.distributed.all_gather_object(local_batches, evaluated["local_batches"])
    if dist.is_main():
        Path(out_path).write_text(json.dumps({**evaluated, "local_batches": local_batches}))
    dist.teardown()
