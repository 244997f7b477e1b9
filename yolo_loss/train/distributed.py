"""Distributed data-parallel training with ``torch.distributed``, as ``torchrun`` launches it (docs/distributed.md).

``torchrun --nproc_per_node=N train.py ...`` starts N processes (on each of one or more nodes) and gives each
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads them, joins the
process group (NCCL on CUDA, gloo on CPU) and picks the process's device (``cuda:LOCAL_RANK``). Launched any other
way, or with ``WORLD_SIZE=1``, nothing here does anything: the process is rank 0 of 1, the model is not wrapped,
every collective is the identity, and training is exactly the single-process training.

What the engine relies on:

- Every process draws the same data order and augmentation seeds and trains its own slice of each global batch
  (:class:`~yolo_loss.data.dataset.EpochSampler`); :class:`DistributedDataParallel` averages the gradients, so N
  processes with ``train.batch_size`` b take the step one process takes with batch N * b.
- Evaluation: process r runs batches r, r + N, r + 2N, ... of the validation set
  (:class:`~yolo_loss.data.dataset.RankBatchSampler`); :func:`gather_batches` puts every process's results back in
  single-process order before the metrics, so that they are the single-process metrics.
- Decisions that end or skip a step (a signal, a non-finite loss) are taken by all processes together
  (:func:`any_rank`): a process that stopped alone would leave the others waiting in the gradient all-reduce.
- Only rank 0 writes (checkpoints, TensorBoard events, ``metrics.json``, console lines): :func:`on_main`.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from yolo_loss.config.load import ConfigError
from yolo_loss.train.runtime import select_device

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that ``torchrun`` started (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    """Whether a process group of more than one process is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank among all processes of all nodes, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that writes the run's files."""
    return rank() == 0


def setup(device_name: str) -> torch.device:
    """The device of this process for ``train.device``; under ``torchrun``, also join the process group (once).

    Under ``torchrun`` a CUDA device is ``cuda:LOCAL_RANK`` (one GPU per process) and the backend NCCL; a CPU run
    uses gloo. Otherwise this is :func:`yolo_loss.train.runtime.select_device`.
    """
    device = select_device(device_name)
    if not launched_by_torchrun():
        return device
    if device.type == "cuda":
        device = select_device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return device


def teardown() -> None:
    """Leave the process group, if one is up (at the end of ``train.py``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """Where the tensors of a collective live: the process's GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true in any process (one all-reduce; ``flag`` itself in one process)."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``values`` over all processes (one all-reduce; ``values`` itself in one process)."""
    if not is_distributed():
        return values
    total = values.detach().to(_collective_device(), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return (total / world_size()).to(values.device)


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` in every process (pickled); ``value`` itself in one process."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_batches(local: list[T]) -> list[T]:
    """One item per evaluation batch, from every process, in the order of the batches over the whole data set.

    Process r holds the items of batches r, r + N, r + 2N, ... (:class:`~yolo_loss.data.dataset.RankBatchSampler`),
    so batch k is item ``k // N`` of process ``k % N``. Every process gets the whole list (pickled, with
    ``all_gather_object``); in one process ``local`` itself.
    """
    if not is_distributed():
        return local
    per_rank: list[list[T]] = [[] for _ in range(world_size())]
    dist.all_gather_object(per_rank, local)
    count = sum(len(items) for items in per_rank)
    return [per_rank[k % len(per_rank)][k // len(per_rank)] for k in range(count)]


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``train.batchnorm=sync``: every BatchNorm normalises with the statistics of the global batch (all processes'
    images), as one process with the whole batch does. In one process the model is returned as it is: its batch
    is already the whole batch.

    Raises:
        ConfigError: on CPU, where ``SyncBatchNorm`` has no implementation.
    """
    if not is_distributed():
        return model
    if device.type != "cuda":
        raise ConfigError("train.batchnorm=sync: SyncBatchNorm runs on CUDA only; on CPU use train.batchnorm=batch "
                          "(statistics of each process's batch) or frozen (the running statistics, not updated)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in :class:`DistributedDataParallel` (its backward all-reduces the mean gradient over the
    processes; rank 0's weights are broadcast when it is built, and its BatchNorm statistics before every forward);
    ``model`` itself in one process. Train through the wrapper; save, average (EMA) and evaluate ``model``."""
    if not is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class Muted:
    """What ranks other than 0 hold instead of something that only writes (the TensorBoard logger, the console):
    every attribute is a Muted, and calling one does nothing and returns it."""

    def __getattr__(self, name: str) -> "Muted":
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> "Muted":
        return self


def on_main(value: T) -> T:
    """``value`` on rank 0, a :class:`Muted` on every other rank: ``on_main(RunLogger)(...)`` builds the logger
    on rank 0 only, ``on_main(tqdm.write)`` prints on rank 0 only."""
    return value if is_main() else Muted()  # type: ignore[return-value]
